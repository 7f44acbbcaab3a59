"""Streaming benchmark: the Ray Data triplet pipeline against its practical limit and against
per-index lookups, and its memory as the store grows tenfold.

    python -m bench.streaming [--quick] [--out bench/results/streaming.json]

(a) Throughput, on synthetic stores of N and 10·N triplets (1M and 10M; --quick 200k and 2M):
    - ray_data: `triplet_dataset(store, split=None).iter_batches(batch_size=B)`, a full pass after
      a warm-up pass (also `iter_torch_batches`, as training consumes it);
    - raw_scan: pyarrow `ParquetFile.iter_batches` over the same columns building the same float32
      [embedding ‖ scaled] batches in this process — the practical limit;
    - per_index: a map-style dataset whose `__getitem__(i)` fetches one row from the store (as
      narrative_stack's did from its KV store), batched by a torch DataLoader; a sample of indices
      is timed and extrapolated per triplet. `random` order is how a shuffled map-style dataset is
      read; `sequential` is its best case (the row group just decoded is kept).
    Goals: ray_data ≥ 0.5 × raw_scan and ≥ 20 × per_index.
(b) Memory: one full Ray Data pass per store, each in a fresh subprocess with its own Ray instance;
    the RSS (and PSS, which counts shared object-store pages once) of the whole process tree —
    driver, raylet, GCS, workers — is sampled every 50 ms. Goal: peak(10·N) ≤ 1.2 × peak(N).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow.parquet as pq

from pipeline.data.triplets import READ_COLUMNS
from pipeline.store.layout import TripletStore
from pipeline.synth import synth_gaap

GOALS = {"ray_vs_raw_scan_min": 0.5, "ray_vs_per_index_min": 20.0, "rss_ratio_max": 1.2}
SAMPLE_EVERY_S = 0.05


# ---- the three ways to read a store ------------------------------------------------------------
def _ray_init(legacy_reader: bool = False) -> None:
    import ray
    from ray.data import DataContext

    # address="local": always a fresh instance, never someone's `ray start` cluster on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    if legacy_reader:  # Ray's V1 Parquet reader: one read task per file (see --legacy-parquet-reader)
        ctx.use_datasource_v2 = False


def ray_pass(store: str, batch_size: int, torch_batches: bool = False) -> dict:
    """One full pass of the Ray Data pipeline: rows, seconds, and when the first batch arrived."""
    from pipeline.data.triplets import triplet_dataset

    t0 = time.perf_counter()
    ds = triplet_dataset(store, split=None)
    batches = (ds.iter_torch_batches(batch_size=batch_size) if torch_batches
               else ds.iter_batches(batch_size=batch_size, batch_format="numpy"))
    rows, first = 0, None
    for batch in batches:
        rows += batch["x"].shape[0]
        first = first or time.perf_counter() - t0
    secs = time.perf_counter() - t0
    return {"rows": rows, "seconds": secs, "rows_per_s": rows / secs, "first_batch_s": first,
            "after_first_batch_rows_per_s": rows / max(secs - first, 1e-9)}


def raw_scan(store: str, batch_size: int) -> dict:
    """pyarrow + numpy, no Ray: the same columns into the same float32 [emb ‖ scaled] batches."""
    t0 = time.perf_counter()
    s = TripletStore(store)
    emb = s.embeddings()
    rows = 0
    for path in s.triplet_files():
        for b in pq.ParquetFile(path, filesystem=s.loc.fs).iter_batches(batch_size=batch_size, columns=READ_COLUMNS):
            pair_id = b.column("pair_id").to_numpy().astype(np.int32)
            x = np.empty((len(pair_id), emb.shape[1] + 1), dtype=np.float32)
            x[:, :-1] = emb[pair_id]
            x[:, -1] = b.column("scaled_value").to_numpy()
            rows += len(x)
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
    return {"sample": rows, "seconds": seconds, "us_per_triplet": 1e6 * seconds / rows,
            "rows_per_s": rows / seconds}


def throughput(store: str, batch_size: int, per_index_sample: int) -> dict:
    """(a) for one store. Ray must already be initialised."""
    out: dict = {}
    raw_scan(store, batch_size)  # warm the page cache
    out["raw_scan"] = raw_scan(store, batch_size)
    ray_pass(store, batch_size)  # warm-up: worker start, imports, page cache
    out["ray_data"] = ray_pass(store, batch_size)
    out["ray_data_torch"] = ray_pass(store, batch_size, torch_batches=True)
    out["per_index_random"] = per_index(store, per_index_sample, batch_size, "random")
    out["per_index_sequential"] = per_index(store, per_index_sample, batch_size, "sequential")
    ray = out["ray_data"]["rows_per_s"]
    out["ratios"] = {
        "ray_vs_raw_scan": ray / out["raw_scan"]["rows_per_s"],
        "ray_torch_vs_raw_scan": out["ray_data_torch"]["rows_per_s"] / out["raw_scan"]["rows_per_s"],
        "ray_vs_per_index_random": ray / out["per_index_random"]["rows_per_s"],
        "ray_vs_per_index_sequential": ray / out["per_index_sequential"]["rows_per_s"],
    }
    return out


# ---- (b) memory of a full pass in a fresh process tree -----------------------------------------
def _child(store: str, batch_size: int, legacy_reader: bool) -> None:
    """Run in the subprocess: start Ray, signal, stream one full pass, report."""
    _ray_init(legacy_reader)
    time.sleep(2.0)  # let the Ray processes settle so the parent can take an idle baseline
    print("READY", flush=True)
    sys.stdin.readline()  # the parent has its baseline
    print("RESULT " + json.dumps(ray_pass(store, batch_size)), flush=True)
    import ray

    ray.shutdown()


def _tree_memory(root: psutil.Process) -> dict:
    rss = pss = 0
    driver_rss = 0
    procs = 0
    for p in [root] + root.children(recursive=True):
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
        procs += 1
        if p.pid == root.pid:
            driver_rss = full.rss
    return {"rss": rss, "pss": pss, "driver_rss": driver_rss, "procs": procs}


def memory_pass(store: str, batch_size: int, legacy_reader: bool = False) -> dict:
    """(b) for one store: peak tree RSS/PSS of a fresh process streaming it once."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.streaming", "--_child", store, "--batch-size", str(batch_size)]
        + (["--legacy-parquet-reader"] if legacy_reader else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    root = psutil.Process(proc.pid)
    if proc.stdout.readline().strip() != "READY":
        proc.kill()
        raise RuntimeError("benchmark child did not start Ray")
    idle = _tree_memory(root)
    peak = dict(idle)
    samples = 0
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result: dict = {}

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result.update(json.loads(line[7:]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not result and proc.poll() is None:
        t = time.perf_counter()
        m = _tree_memory(root)
        samples += 1
        for k in ("rss", "pss", "driver_rss", "procs"):
            peak[k] = max(peak[k], m[k])
        time.sleep(max(0.0, SAMPLE_EVERY_S - (time.perf_counter() - t)))
    proc.wait(timeout=120)
    reader.join(timeout=5)
    if not result:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode})")
    mib = 1024**2
    return {
        "rows": result["rows"], "seconds": result["seconds"], "first_batch_s": result["first_batch_s"],
        "samples": samples,
        "idle_tree_rss_mib": idle["rss"] / mib, "idle_tree_pss_mib": idle["pss"] / mib,
        "peak_tree_rss_mib": peak["rss"] / mib, "peak_tree_pss_mib": peak["pss"] / mib,
        "peak_driver_rss_mib": peak["driver_rss"] / mib, "max_processes": peak["procs"],
        "pass_tree_rss_increase_mib": (peak["rss"] - idle["rss"]) / mib,
        "pass_tree_pss_increase_mib": (peak["pss"] - idle["pss"]) / mib,
    }


# ---- the run --------------------------------------------------------------------------------------
def machine() -> dict:
    import pyarrow
    import ray
    import torch

    import pipeline.data.triplets as triplets

    return {
        "cpus_logical": os.cpu_count(), "cpus_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1), "platform": platform.platform(),
        "python": platform.python_version(), "ray": ray.__version__, "pyarrow": pyarrow.__version__,
        "numpy": np.__version__, "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
        # The pipeline measured: other engineers edit it, so say exactly which one this was.
        "triplets_py_sha256": hashlib.sha256(open(triplets.__file__, "rb").read()).hexdigest()[:16],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k vs 2M triplets instead of 1M vs 10M")
    ap.add_argument("--out", default="bench/results/streaming.json", help="where to write the JSON results")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--per-index-sample", type=int, default=20_000)
    ap.add_argument("--row-group-size", type=int, default=None, help="store row-group size (default: the store's)")
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temporary folder)")
    ap.add_argument("--keep-stores", action="store_true")
    ap.add_argument("--legacy-parquet-reader", action="store_true",
                    help="set DataContext.use_datasource_v2 = False (Ray's per-file V1 reader) to compare")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(args._child, args.batch_size, args.legacy_parquet_reader)
        return 0

    small, large = (200_000, 2_000_000) if args.quick else (1_000_000, 10_000_000)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tunestack-bench-")
    results: dict = {"machine": machine(), "goals": GOALS, "batch_size": args.batch_size,
                     "per_index_sample": args.per_index_sample, "sizes": [small, large],
                     "legacy_parquet_reader": args.legacy_parquet_reader, "stores": {}}
    try:
        stores = {}
        for n in (small, large):
            uri = os.path.join(workdir, f"synth-{n}")
            kw = {"row_group_size": args.row_group_size} if args.row_group_size else {}
            existing = TripletStore(uri).manifest
            synth = (existing or {}).get("inputs", [{}])[0].get("synth", {})
            if synth.get("triplets") == n and synth.get("row_group_size") == kw.get("row_group_size", 65_536):
                results["stores"][str(n)] = {"reused": True, **existing["counts"]}  # --workdir from a prior run
            else:
                results["stores"][str(n)] = synth_gaap(uri, n, seed=0, **kw)
                print(f"built {n:,} triplets in {results['stores'][str(n)]['seconds']:.1f}s", flush=True)
            results["stores"][str(n)]["row_group_size"] = TripletStore(uri).manifest["row_group_size"]
            stores[n] = uri

        import ray

        _ray_init(args.legacy_parquet_reader)
        try:
            results["throughput"] = {}
            for n in (small, large):
                results["throughput"][str(n)] = throughput(stores[n], args.batch_size, args.per_index_sample)
                print(f"throughput measured on {n:,}", flush=True)
        finally:
            ray.shutdown()
        results["memory"] = {str(n): memory_pass(stores[n], args.batch_size, args.legacy_parquet_reader)
                             for n in (small, large)}
    finally:
        if not args.keep_stores and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()

    mem_s, mem_l = results["memory"][str(small)], results["memory"][str(large)]
    results["memory_ratio"] = {
        "peak_tree_rss": mem_l["peak_tree_rss_mib"] / mem_s["peak_tree_rss_mib"],
        "peak_tree_pss": mem_l["peak_tree_pss_mib"] / mem_s["peak_tree_pss_mib"],
        "peak_driver_rss": mem_l["peak_driver_rss_mib"] / mem_s["peak_driver_rss_mib"],
        "pass_tree_pss_increase": mem_l["pass_tree_pss_increase_mib"] / max(mem_s["pass_tree_pss_increase_mib"], 1e-9),
    }
    ratios = [results["throughput"][str(n)]["ratios"] for n in (small, large)]
    results["pass"] = {
        "ray_vs_raw_scan": all(r["ray_vs_raw_scan"] >= GOALS["ray_vs_raw_scan_min"] for r in ratios),
        "ray_vs_per_index_random": all(r["ray_vs_per_index_random"] >= GOALS["ray_vs_per_index_min"] for r in ratios),
        "ray_vs_per_index_sequential": all(
            r["ray_vs_per_index_sequential"] >= GOALS["ray_vs_per_index_min"] for r in ratios),
        "memory_flat_rss": results["memory_ratio"]["peak_tree_rss"] <= GOALS["rss_ratio_max"],
        "memory_flat_pss": results["memory_ratio"]["peak_tree_pss"] <= GOALS["rss_ratio_max"],
    }
    print(render(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")
    return 0


def render(r: dict) -> str:
    m = r["machine"]
    reader = "V1 per-file (--legacy-parquet-reader)" if r["legacy_parquet_reader"] else "Ray default"
    lines = [f"machine: {m['cpus_logical']} cpus, {m['memory_gib']} GiB, ray {m['ray']}, pyarrow {m['pyarrow']}, "
             f"numpy {m['numpy']}, torch {m['torch']}; load avg {m['load_average_at_start'][0]:.1f} → "
             f"{m['load_average_at_end'][0]:.1f}; batch {r['batch_size']}; parquet reader: {reader}; "
             f"triplets.py {m['triplets_py_sha256']}", ""]
    head = (f"{'triplets':>11} | {'raw scan/s':>11} | {'ray data/s':>11} | {'1st batch':>9} | {'ray torch/s':>11} | "
            f"{'per-idx rnd/s':>13} | {'per-idx seq/s':>13} | {'ray/raw':>7} | {'ray/idx rnd':>11} | {'ray/idx seq':>11}")
    lines.append(head)
    for n, t in r["throughput"].items():
        q = t["ratios"]
        lines.append(
            f"{int(n):>11,} | {t['raw_scan']['rows_per_s']:>11,.0f} | {t['ray_data']['rows_per_s']:>11,.0f} | "
            f"{t['ray_data']['first_batch_s']:>8.1f}s | "
            f"{t['ray_data_torch']['rows_per_s']:>11,.0f} | {t['per_index_random']['rows_per_s']:>13,.0f} | "
            f"{t['per_index_sequential']['rows_per_s']:>13,.0f} | {q['ray_vs_raw_scan']:>6.2f}x | "
            f"{q['ray_vs_per_index_random']:>10.0f}x | {q['ray_vs_per_index_sequential']:>10.1f}x")
    lines += ["", f"{'triplets':>11} | {'pass':>6} | {'1st batch':>9} | {'idle tree PSS':>13} | {'peak tree PSS':>13} | "
                  f"{'peak tree RSS':>13} | {'peak driver':>11} | procs"]
    for n, x in r["memory"].items():
        lines.append(f"{int(n):>11,} | {x['seconds']:>5.1f}s | {x['first_batch_s']:>8.1f}s | "
                     f"{x['idle_tree_pss_mib']:>9,.0f} MiB | {x['peak_tree_pss_mib']:>9,.0f} MiB | "
                     f"{x['peak_tree_rss_mib']:>9,.0f} MiB | {x['peak_driver_rss_mib']:>7,.0f} MiB | {x['max_processes']}")
    mr, g = r["memory_ratio"], r["goals"]
    lines += ["", f"peak ratio {r['sizes'][1]:,} / {r['sizes'][0]:,}: tree PSS {mr['peak_tree_pss']:.2f}x, "
                  f"tree RSS {mr['peak_tree_rss']:.2f}x, driver RSS {mr['peak_driver_rss']:.2f}x "
                  f"(goal ≤ {g['rss_ratio_max']}x); growth above idle PSS {mr['pass_tree_pss_increase']:.2f}x",
              "goals: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in r["pass"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
