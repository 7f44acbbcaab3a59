"""Streaming benchmark: the Ray Data triplet pipeline against its practical limit and against
per-index lookups, its memory as the store grows tenfold, and its throughput vs block size.

    python -m bench.streaming [--quick] [--out-dir bench/results]

(a) Throughput, on synthetic stores of N and 10·N triplets (1M and 10M; --quick 100k and 1M). Every
    way builds the same batches of 4,096 rows in this process — {"x": float32 tensor
    [embedding ‖ scaled value], "pair_id": int64 tensor}, by the same `triplet_batch`:
    - ray_data: `iter_triplet_batches(triplet_dataset(store, split=None), ...)`, exactly as the
      training loop reads the store (whole row-group blocks from Ray Data, the batches cut and the
      embeddings joined in this process); also with the training loop's local shuffle, and the
      previous path — Ray Data's `iter_batches(batch_size=4096)`, Ray's iterator per batch;
    - raw_scan: pyarrow `ParquetFile.iter_batches` over the same columns in this process — the
      practical limit (no scheduling, no object store, no parallelism needed);
    - per_index: a map-style dataset whose `__getitem__(i)` fetches one row from the store (as
      narrative_stack's did from its KV store), batched by a torch DataLoader; a sample of indices
      is timed and extrapolated per triplet. `random` order is how a shuffled map-style dataset is
      read; `sequential` is its best case (the row group just decoded is kept).
    Each timed pass follows a warm-up pass of its kind; raw_scan and ray_data alternate, REPEATS
    passes each, and the medians are compared (other load drifts over seconds).
    Goals: ray_data >= 0.5 x raw_scan and >= 20 x per_index (random).
(b) Memory: one full Ray Data pass per store, each in a fresh subprocess with its own Ray instance;
    the RSS (and PSS, which counts shared object-store pages once) of the whole process tree —
    driver, raylet, GCS, workers — is sampled every 50 ms. Goal: peak(10·N) <= 1.2 x peak(N).
(c) Block size: the larger store (10·N triplets; --quick the smaller) also written with row groups
    (= Ray Data blocks) of 16k and 256k rows; ray_data and raw_scan on each, measured as in (a) (plot:
    streaming_block_size.png).
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from bench.memory import start_child, watch_child
from bench.report import figure as _fig
from bench.report import write_result
from pipeline.data.triplets import READ_COLUMNS, iter_triplet_batches, triplet_batch
from pipeline.store.layout import TripletStore
from pipeline.synth import synth_gaap

NAME = "streaming"
GOALS = {"ray_vs_raw_scan_min": 0.5, "ray_vs_per_index_min": 20.0, "rss_ratio_max": 1.2}
BATCH = 4096
BLOCK_SIZES = (16_384, 65_536, 262_144)
REPEATS = 3  # timed passes of each reader, alternating
SHUFFLE_ROWS = 20_000  # the training loop's local shuffle window (pipeline.train.tasks.SHUFFLE_ROWS)
MODES = ("blocks", "shuffled", "per_batch")


# ---- the three ways to read a store ------------------------------------------------------------
def _ray_init() -> None:
    from ray.data import DataContext

    from pipeline.runtime import start_local

    # a fresh instance, never someone's `ray start` cluster on this machine; 2 CPUs as CI has
    start_local(num_cpus=2, include_dashboard=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False


def _ray_batches(ds, emb, batch_size: int, mode: str):
    if mode == "blocks":  # how the training loop reads the store (validation; train without its shuffle)
        return iter_triplet_batches(ds, emb, batch_size)
    if mode == "shuffled":  # the training loop's train pass
        return iter_triplet_batches(ds, emb, batch_size, shuffle_rows=SHUFFLE_ROWS, seed=0)
    if mode == "per_batch":  # the previous path: Ray Data's iterator cuts every batch
        return (
            triplet_batch(emb, b["pair_id"], b["value"])
            for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy")
        )
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def ray_pass(store: str, batch_size: int = BATCH, mode: str = "blocks") -> dict:
    """One full pass of the Ray Data pipeline: rows, seconds, and when the first batch arrived."""
    from pipeline.data.triplets import triplet_dataset

    t0 = time.perf_counter()
    emb = TripletStore(store).embeddings()
    ds = triplet_dataset(store, split=None)
    rows, first = 0, None
    for batch in _ray_batches(ds, emb, batch_size, mode):
        rows += batch["x"].shape[0]
        first = first or time.perf_counter() - t0
    secs = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": secs,
        "rows_per_s": rows / secs,
        "first_batch_s": first,
        "after_first_batch_rows_per_s": rows / max(secs - first, 1e-9),
    }


def raw_scan(store: str, batch_size: int = BATCH) -> dict:
    """pyarrow + numpy, no Ray: the same columns into the same batches (`triplet_batch`)."""
    t0 = time.perf_counter()
    s = TripletStore(store)
    emb = s.embeddings()
    rows = 0
    for path in s.triplet_files():
        for b in pq.ParquetFile(path, filesystem=s.loc.fs).iter_batches(
            batch_size=batch_size, columns=READ_COLUMNS
        ):
            pair_id = b.column("pair_id").to_numpy().astype(np.int32)
            rows += triplet_batch(emb, pair_id, b.column("scaled_value").to_numpy())["x"].shape[0]
    secs = time.perf_counter() - t0
    return {"rows": rows, "seconds": secs, "rows_per_s": rows / secs}


class PerIndexTriplets:
    """Map-style dataset: `__getitem__(i)` fetches triplet i from the store, one row at a time.

    Finding a row means locating its row group and decoding it (Parquet's smallest readable
    unit for these columns); the last decoded row group is kept, which only helps in-order reads.
    """

    def __init__(self, store: str):
        s = TripletStore(store)
        self.emb = s.embeddings()
        self.files = [pq.ParquetFile(p, filesystem=s.loc.fs) for p in s.triplet_files()]
        self.starts, self.where = [], []
        n = 0
        for f_idx, f in enumerate(self.files):
            for rg in range(f.num_row_groups):
                self.starts.append(n)
                self.where.append((f_idx, rg))
                n += f.metadata.row_group(rg).num_rows
        self.n = n
        self._cached_key, self._cached = None, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        g = bisect.bisect_right(self.starts, i) - 1
        if g != self._cached_key:
            f_idx, rg = self.where[g]
            t = self.files[f_idx].read_row_group(rg, columns=READ_COLUMNS)
            self._cached = (t.column("pair_id").to_numpy(), t.column("scaled_value").to_numpy())
            self._cached_key = g
        off = i - self.starts[g]
        pair_id, scaled = self._cached
        x = np.empty(self.emb.shape[1] + 1, dtype=np.float32)
        x[:-1] = self.emb[pair_id[off]]
        x[-1] = scaled[off]
        return x


def per_index(store: str, sample: int, batch_size: int, order: str, seed: int = 0) -> dict:
    """Time `sample` lookups through a torch DataLoader; extrapolate to triplets per second."""
    import torch
    from torch.utils.data import DataLoader

    ds = PerIndexTriplets(store)
    rng = np.random.default_rng(seed)
    if order == "random":
        idx = rng.choice(len(ds), size=min(sample, len(ds)), replace=False)
    else:
        start = int(rng.integers(0, max(1, len(ds) - sample)))
        idx = np.arange(start, min(start + sample, len(ds)))
    loader = DataLoader(ds, batch_size=batch_size, sampler=idx.tolist(), num_workers=0)
    t0 = time.perf_counter()
    rows = 0
    for batch in loader:
        assert isinstance(batch, torch.Tensor)
        rows += batch.shape[0]
    seconds = time.perf_counter() - t0
    return {
        "sample": rows,
        "seconds": seconds,
        "us_per_triplet": 1e6 * seconds / rows,
        "rows_per_s": rows / seconds,
    }


def _median_pass(passes: list[dict]) -> dict:
    """The pass of median throughput, with every pass's rows/s beside it."""
    ranked = sorted(passes, key=lambda p: p["rows_per_s"])
    return {**ranked[len(ranked) // 2], "passes_rows_per_s": [p["rows_per_s"] for p in passes]}


def compare(store: str, modes=MODES, batch_size: int = BATCH, repeats: int = REPEATS) -> dict:
    """raw_scan and ray_pass in each of `modes`, a warm-up pass each, then `repeats` rounds of
    one pass each, alternating; the median pass of each. Ray must already be initialised."""
    raw_scan(store, batch_size)  # warm the page cache
    for mode in modes:
        ray_pass(store, batch_size, mode)  # warm-up: worker start, imports
    passes: dict = {"raw_scan": [], **{f"ray_{m}": [] for m in modes}}
    for _ in range(repeats):
        passes["raw_scan"].append(raw_scan(store, batch_size))
        for mode in modes:
            passes[f"ray_{mode}"].append(ray_pass(store, batch_size, mode))
    out = {k: _median_pass(v) for k, v in passes.items()}
    if any(p["rows"] != out["raw_scan"]["rows"] for v in passes.values() for p in v):
        raise RuntimeError(
            f"readers disagree on the rows in {store}: "
            f"{ {k: [p['rows'] for p in v] for k, v in passes.items()} }"
        )
    return out


def throughput(store: str, per_index_sample: int, batch_size: int = BATCH) -> dict:
    """(a) for one store. Ray must already be initialised."""
    out = compare(store, MODES, batch_size)
    out["ray_data"] = out.pop("ray_blocks")
    out["per_index_random"] = per_index(store, per_index_sample, batch_size, "random")
    out["per_index_sequential"] = per_index(store, per_index_sample, batch_size, "sequential")
    ray, raw = out["ray_data"]["rows_per_s"], out["raw_scan"]["rows_per_s"]
    out["ratios"] = {
        "ray_vs_raw_scan": ray / raw,
        "ray_shuffled_vs_raw_scan": out["ray_shuffled"]["rows_per_s"] / raw,
        "ray_per_batch_vs_raw_scan": out["ray_per_batch"]["rows_per_s"] / raw,
        "ray_vs_per_index_random": ray / out["per_index_random"]["rows_per_s"],
        "ray_vs_per_index_sequential": ray / out["per_index_sequential"]["rows_per_s"],
    }
    return out


def block_sizes(stores: dict[int, str]) -> dict:
    """(c): ray_data (the training path) and raw_scan per row-group size, measured as in (a)."""
    out = {}
    for rows_per_block, store in stores.items():
        c = compare(store, ("blocks",))
        ray, raw = c["ray_blocks"]["rows_per_s"], c["raw_scan"]["rows_per_s"]
        out[str(rows_per_block)] = {
            "ray_data_rows_per_s": ray,
            "raw_scan_rows_per_s": raw,
            "ratio": ray / raw,
            "rows": c["raw_scan"]["rows"],
        }
    return out


# ---- (b) memory of a full pass in a fresh process tree -----------------------------------------
def _child(store: str) -> None:
    """Run in the subprocess: start Ray, signal, stream one full pass, report."""
    _ray_init()
    time.sleep(2.0)  # let the Ray processes settle so the parent can take an idle baseline
    print("READY", flush=True)
    sys.stdin.readline()  # the parent has its baseline
    print("RESULT " + json.dumps(ray_pass(store)), flush=True)
    import ray

    ray.shutdown()


def memory_pass(store: str) -> dict:
    """(b) for one store: peak tree RSS/PSS of a fresh process streaming it once."""
    proc = start_child(["bench.streaming", "--_child", store], store.rstrip("/") + ".child.log")
    return watch_child(proc)


# ---- the run --------------------------------------------------------------------------------------
def figures(r: dict) -> list[dict]:
    small, large = (str(n) for n in r["details"]["sizes"])
    out = []
    for n in (small, large):
        t = r["details"]["throughput"][n]
        ray, raw = t["ray_data"]["rows_per_s"], t["raw_scan"]["rows_per_s"]
        rnd = t["per_index_random"]["rows_per_s"]
        label = f"{int(n):,} triplets"
        out.append(
            _fig(
                f"Ray Data triplets/s, {label}",
                ray,
                "rows/s",
                "raw pyarrow scan",
                raw,
                f">= {GOALS['ray_vs_raw_scan_min']}x",
                ray / raw >= GOALS["ray_vs_raw_scan_min"],
            )
        )
        out.append(
            _fig(
                f"Ray Data triplets/s vs per-index lookups, {label}",
                ray,
                "rows/s",
                "per-index lookups (random order)",
                rnd,
                f">= {GOALS['ray_vs_per_index_min']:g}x",
                ray / rnd >= GOALS["ray_vs_per_index_min"],
            )
        )
        out.append(
            _fig(
                f"Ray Data triplets/s with the training loop's local shuffle, {label}",
                t["ray_shuffled"]["rows_per_s"],
                "rows/s",
                "raw pyarrow scan",
                raw,
            )
        )
        out.append(
            _fig(
                f"Ray Data triplets/s, Ray's iterator per 4,096-row batch (previous path), {label}",
                t["ray_per_batch"]["rows_per_s"],
                "rows/s",
                "raw pyarrow scan",
                raw,
            )
        )
    mem = r["details"]["memory"]
    for key, what in (("peak_tree_rss_mib", "peak RSS"), ("peak_tree_pss_mib", "peak PSS")):
        ok = mem[large][key] <= GOALS["rss_ratio_max"] * mem[small][key]
        out.append(
            _fig(
                f"{what} of a pass (driver + Ray processes), {int(large):,} triplets",
                mem[large][key],
                "MiB",
                f"the same at {int(small):,} triplets",
                mem[small][key],
                f"<= {GOALS['rss_ratio_max']}x",
                ok,
            )
        )
    for size, b in r["details"]["block_sizes"].items():
        out.append(
            _fig(
                f"Ray Data triplets/s, {int(size):,}-row blocks, {r['details']['block_sweep_rows']:,} triplets",
                b["ray_data_rows_per_s"],
                "rows/s",
                "raw pyarrow scan",
                b["raw_scan_rows_per_s"],
            )
        )
    return out


def plot(block: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(k) for k in block)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("ray_data_rows_per_s", "Ray Data pipeline"),
        ("raw_scan_rows_per_s", "raw pyarrow scan"),
    ):
        ax.plot(sizes, [block[str(s)][key] / 1e6 for s in sizes], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rows per block (Parquet row group)")
    ax.set_ylabel("million triplets / s")
    ax.set_title("Streaming throughput vs block size")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    quick: bool = False,
    out_dir: str = "bench/results",
    per_index_sample: int = 20_000,
    workdir: str | None = None,
) -> dict:
    t_start = time.perf_counter()
    small, large = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    workdir_made = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="tunestack-bench-streaming-")
    details: dict = {
        "sizes": [small, large],
        "batch_size": BATCH,
        "per_index_sample": per_index_sample,
        "block_sweep_rows": small if quick else large,  # quick: a smoke run of the sweep
        "load_average_at_start": os.getloadavg(),
        "stores": {},
    }
    try:
        stores, by_block = {}, {}
        sweep = details["block_sweep_rows"]
        for n, rg in [(small, 65_536), (large, 65_536)] + [(sweep, b) for b in BLOCK_SIZES if b != 65_536]:
            uri = os.path.join(workdir, f"synth-{n}-rg{rg}")
            details["stores"][uri] = synth_gaap(uri, n, seed=0, row_group_size=rg)
            if rg == 65_536:
                stores[n] = uri
            if n == sweep:
                by_block[rg] = uri
        import ray

        _ray_init()
        try:
            details["throughput"] = {str(n): throughput(stores[n], per_index_sample) for n in (small, large)}
            details["block_sizes"] = block_sizes(dict(sorted(by_block.items())))
        finally:
            ray.shutdown()
        details["memory"] = {str(n): memory_pass(stores[n]) for n in (small, large)}
    finally:
        if workdir_made:
            shutil.rmtree(workdir, ignore_errors=True)
    details["load_average_at_end"] = os.getloadavg()
    os.makedirs(out_dir, exist_ok=True)
    result = {
        "name": NAME,
        "title": "Ray Data streaming of the triplet store: throughput and memory",
        "seconds": 0.0,
        "quick": quick,
        "figures": [],
        "details": details,
        "plots": [plot(details["block_sizes"], os.path.join(out_dir, "streaming_block_size.png"))],
        "method": (
            f"Synthetic stores (tunestack synth gaap) of {small:,} and {large:,} triplets, 16 hash "
            "buckets, 65,536-row row groups; a fresh local Ray with 2 CPUs. Every reader builds the same "
            f"batches of {BATCH:,} rows in the benchmark process with the same function (triplet_batch: "
            "float32 tensor [64-d embedding ‖ scaled value] and int64 pair ids); Ray Data = "
            "iter_triplet_batches(triplet_dataset(...)), the training loop's path (whole row-group "
            "blocks from Ray Data, batches cut in the consumer), also with the loop's local shuffle "
            "and, for reference, Ray's iterator cutting every 4,096-row batch (the previous path); raw "
            "scan = pyarrow ParquetFile.iter_batches in-process (the practical limit). A warm-up pass "
            f"of each, then {REPEATS} rounds alternating the readers, one full pass each; the median "
            "pass of each reader is reported. Per-index = a torch DataLoader over a map-style dataset, "
            f"{per_index_sample:,} random indices timed and extrapolated. Memory: a fresh subprocess "
            "with its own Ray per store streams it once (training's path) while the RSS and PSS of its "
            "whole process tree are sampled every 50 ms. Block sizes: the "
            f"{details['block_sweep_rows']:,}-triplet store also written with 16k- and 256k-row row groups, "
            "measured as the main figures."
        ),
    }
    result["figures"] = figures(result)
    result["seconds"] = time.perf_counter() - t_start
    return write_result(result, out_dir)


def render(r: dict) -> str:
    lines = [r["title"], ""]
    for f in r["figures"]:
        ratio = (
            f" = {f['ratio']:.2f}x {f['baseline']} ({f['baseline_value']:,.0f})"
            if f["ratio"] is not None
            else ""
        )
        verdict = "" if f["pass"] is None else (" PASS" if f["pass"] else " FAIL")
        lines.append(f"{f['figure']}: {f['value']:,.0f} {f['unit']}{ratio} {f['goal'] or ''}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k vs 1M triplets instead of 1M vs 10M")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--per-index-sample", type=int, default=20_000)
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temporary folder)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(args._child)
        return 0
    r = run(args.quick, args.out_dir, args.per_index_sample, args.workdir)
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
