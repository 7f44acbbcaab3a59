"""Batch-scoring benchmark: `tunestack score` on Ray Data against an in-process loop, and its memory
as the store grows tenfold.

    python -m bench.score [--quick] [--out-dir bench/results]

(a) Throughput, on synthetic stores of N and 10·N triplets (1M and 10M; --quick 200k and 2M), the
    same autoencoder (the shipped config's architecture, its own feature transform and error
    baseline) on both sides:
    - ray: `serve.score.score(...)` end to end — `map_batches` on the actor pool with the reads
      fused into the actors, the driver writing one Parquet file — exactly what `tunestack score` runs;
    - in_process: one Python loop over the same Parquet row groups in this process, the same
      per-block code (`compact_rows` with the model's scaler, `EncodeScorer`), writing one Parquet
      file — the baseline with no scheduling, no object store and no actors.
    Both include loading the model. REPEATS alternating runs (after a warm-up run at N); medians.
    Goal at 10·N: ray >= 0.8 x in_process. Ray's fixed start-up (each actor imports torch and loads
    the model; the in-process loop runs where torch is loaded) is measured alone on a store of
    FIXED_COST_ROWS; without a goal: the ratio at N, and the in-process loop on one torch thread.
(b) Memory: `score` on stores of N and 10·N triplets (--quick 200k and 2M), each in a fresh
    subprocess with its own Ray; the RSS (and PSS) of the whole process tree is sampled every 50 ms.
    Goal: peak(10·N) <= 1.2 x peak(N).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time

from bench.memory import start_child, watch_child
from bench.streaming import _fig

NAME = "score"
GOALS = {"ray_vs_in_process_min": 0.8, "rss_ratio_max": 1.2}
REPEATS = 2
FIXED_COST_ROWS = 2_000  # one row group: what remains is start-up
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the model ----------------------------------------------------------------------------------
def build_model(store: str, out: str, seed: int = 0) -> str:
    """An autoencoder of the shipped config's architecture over `store`, with the store's feature
    transform and an error baseline over its first rows, saved as a checkpoint at `out`.
    Throughput does not depend on the weights' values, so it is not trained."""
    import pyarrow.parquet as pq
    import torch

    from pipeline.config import load_config
    from pipeline.data.features import FeatureTransform
    from pipeline.models import build_model as build
    from pipeline.store.layout import TripletStore
    from pipeline.train.baseline import fit_error_baseline
    from pipeline.train.checkpoint import save_checkpoint

    s = TripletStore(store)
    features = FeatureTransform.from_store(s)
    cfg = load_config(
        os.path.join(REPO, "tune_configs", "autoencoder.yaml"),
        [f"data.path={store}", "model.init=random", f"model.input_dim={features.embed_dim + 1}"],
    ).to_dict()
    torch.manual_seed(seed)
    model = build("autoencoder", **{k: v for k, v in cfg["model"].items() if k != "arch"}).eval()
    first = pq.ParquetFile(s.triplet_files()[0]).read_row_group(0, columns=["pair_id", "scaled_value"])
    block = {"pair_id": first.column("pair_id").to_numpy(), "value": first.column("scaled_value").to_numpy()}
    features = features.with_baseline(fit_error_baseline(model, features, [block]))
    save_checkpoint(out, model, {"config": cfg, "epoch": 0, "metrics": {}}, features=features)
    return out


# ---- the two ways to score --------------------------------------------------------------------
def in_process(checkpoint: str, store: str, out: str, threads: int | None = None) -> dict:
    """Score every row of `store` in this process, block by block, into one Parquet file, with
    `threads` torch threads (default: every core)."""
    import pyarrow.parquet as pq

    from pipeline.data.triplets import compact_rows, read_columns
    from pipeline.store.layout import TripletStore
    from pipeline.train.checkpoint import load_checkpoint
    from serve.score import KEY_COLUMNS, EncodeScorer

    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    features = ckpt.features()
    s = TripletStore(store)
    view = features.view(s.read_pairs())
    mean, std, _ = features.baseline.arrays(view.rows)
    scale = view.value_scaler()
    scorer = EncodeScorer(
        checkpoint, view.embeddings, view.known, mean, std, num_cpus=threads or os.cpu_count() or 1
    )
    names = read_columns(scale, KEY_COLUMNS)
    rows, writer = 0, None
    for path in s.triplet_files():
        f = pq.ParquetFile(path)
        for rg in range(f.metadata.num_row_groups):
            block = scorer(compact_rows(f.read_row_group(rg, columns=names), (0, 100), scale, KEY_COLUMNS))
            writer = writer or pq.ParquetWriter(out, block.schema)
            writer.write_table(block)
            rows += block.num_rows
    writer.close()
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def ray_score(checkpoint: str, store: str, out: str) -> dict:
    from serve.score import score

    t0 = time.perf_counter()
    summary = score(checkpoint, out, store)
    seconds = time.perf_counter() - t0
    return {"rows": summary["rows"], "seconds": seconds, "rows_per_s": summary["rows"] / seconds}


def _ray_init() -> None:
    import logging

    import ray
    from ray.data import DataContext

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False


def throughput(
    checkpoint: str, store: str, workdir: str, kinds: dict, repeats: int = REPEATS, warm_up: bool = True
) -> dict:
    """`kinds` (name → scoring function) on `store`: an optional warm-up round, then `repeats`
    rounds, the order reversed every round; every run and the median run of each kind."""
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    order = list(kinds.items())
    for i in range(repeats + warm_up):
        for kind, fn in order if i % 2 == 0 else order[::-1]:  # who goes first swaps every round
            out = os.path.join(workdir, f"{kind}-{i}.parquet")
            r = fn(checkpoint, store, out)
            os.remove(out)
            if i or not warm_up:
                runs[kind].append(r)
    med = {k: sorted(v, key=lambda r: r["rows_per_s"])[len(v) // 2] for k, v in runs.items()}
    return {"runs": runs, "median": med}


# ---- memory of a whole `score` in a fresh process tree ------------------------------------------
def _child(checkpoint: str, store: str, out: str) -> None:
    _ray_init()
    time.sleep(2.0)  # let the Ray processes settle so the parent can take an idle baseline
    print("READY", flush=True)
    sys.stdin.readline()
    print("RESULT " + json.dumps(ray_score(checkpoint, store, out)), flush=True)
    import ray

    ray.shutdown()


def memory_pass(checkpoint: str, store: str, out: str) -> dict:
    """Peak tree RSS/PSS of a fresh process scoring `store` once."""
    return watch_child(start_child(["bench.score", "--_child", checkpoint, store, out], out + ".log"))


# ---- the run --------------------------------------------------------------------------------------
def figures(details: dict) -> list[dict]:
    small, large = (str(n) for n in details["sizes"])
    tp = details["throughput"]
    goal = GOALS["ray_vs_in_process_min"]

    def rate(n: str, kind: str) -> float:
        return tp[n]["median"][kind]["rows_per_s"]

    figs = [
        _fig(
            f"score rows/s, {int(large):,} triplets",
            rate(large, "ray"),
            "rows/s",
            "in-process loop",
            rate(large, "in_process"),
            f">= {goal}x",
            rate(large, "ray") >= goal * rate(large, "in_process"),
        ),
        _fig(
            f"score rows/s, {int(small):,} triplets (the fixed start-up below is most of the gap)",
            rate(small, "ray"),
            "rows/s",
            "in-process loop",
            rate(small, "in_process"),
        ),
        _fig(
            f"score rows/s, {int(small):,} triplets, vs the in-process loop on ONE torch thread",
            rate(small, "ray"),
            "rows/s",
            "in-process loop, 1 thread (what one model actor has here: 1 of 2 CPUs)",
            rate(small, "in_process_1_thread"),
        ),
    ]
    fixed = details["fixed_cost"]["median"]
    figs.append(
        _fig(
            f"score end to end, {details['fixed_cost_rows']:,} triplets: Ray Data's fixed start-up "
            "(one model actor: it imports torch and loads the model)",
            1000 * fixed["ray"]["seconds"],
            "ms",
            "in-process loop",
            1000 * fixed["in_process"]["seconds"],
        )
    )
    mem = details["memory"]
    for key, what in (("peak_tree_rss_mib", "peak RSS"), ("peak_tree_pss_mib", "peak PSS")):
        figs.append(
            _fig(
                f"score {what}, {int(large):,} triplets",
                mem[large][key],
                "MiB",
                f"{int(small):,} triplets",
                mem[small][key],
                f"<= {GOALS['rss_ratio_max']}x",
                mem[large][key] <= GOALS["rss_ratio_max"] * mem[small][key],
            )
        )
    return figs


def run(quick: bool = False, out_dir: str = "bench/results", workdir: str | None = None) -> dict:
    from pipeline.synth import synth_gaap

    t_start = time.perf_counter()
    small, large = (200_000, 2_000_000) if quick else (1_000_000, 10_000_000)
    workdir_made = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="tunestack-bench-score-")
    details: dict = {
        "sizes": [small, large],
        "fixed_cost_rows": FIXED_COST_ROWS,
        "load_average_at_start": os.getloadavg(),
        "stores": {},
    }
    try:
        stores = {}
        for n in (FIXED_COST_ROWS, small, large):
            stores[n] = os.path.join(workdir, f"synth-{n}")
            details["stores"][stores[n]] = synth_gaap(stores[n], n, seed=0)
        ckpt = build_model(stores[small], os.path.join(workdir, "model"))
        import ray

        both = {"in_process": in_process, "ray": ray_score}
        _ray_init()
        try:
            details["fixed_cost"] = throughput(ckpt, stores[FIXED_COST_ROWS], workdir, both)
            tp = details["throughput"] = {}
            one_thread = functools.partial(in_process, threads=1)
            tp[str(small)] = throughput(
                ckpt, stores[small], workdir, {**both, "in_process_1_thread": one_thread}
            )
            tp[str(large)] = throughput(ckpt, stores[large], workdir, both, warm_up=False)  # warm by now
        finally:
            ray.shutdown()
        for n in (small, large):
            med = details["throughput"][str(n)]["median"]
            print(
                f"throughput at {n:,}: ray {med['ray']['rows_per_s']:,.0f} rows/s, in-process "
                f"{med['in_process']['rows_per_s']:,.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )
        details["memory"] = {
            str(n): memory_pass(ckpt, stores[n], os.path.join(workdir, f"mem-{n}.parquet"))
            for n in (small, large)
        }
    finally:
        if workdir_made:
            shutil.rmtree(workdir, ignore_errors=True)
    details["load_average_at_end"] = os.getloadavg()
    result = {
        "name": NAME,
        "title": "Batch scoring (tunestack score) on Ray Data: throughput and memory",
        "seconds": 0.0,
        "quick": quick,
        "figures": figures(details),
        "details": details,
        "plots": [],
        "method": (
            f"Synthetic stores (tunestack synth gaap) of {FIXED_COST_ROWS:,}, {small:,} and {large:,} "
            "triplets; an autoencoder of tune_configs/autoencoder.yaml's architecture with its feature "
            "transform and error baseline; a fresh local Ray with 2 CPUs. Ray = serve.score.score (what "
            "`tunestack score` runs: map_batches on a pool of one actor per CPU with the store's reads "
            "fused into the actors, the driver writing one Parquet file); in-process = a loop over the "
            "same row groups in this process, which has torch loaded, with the same per-block code "
            "(compact_rows + EncodeScorer) writing one Parquet file, on every core (and, at "
            f"{small:,}, on one torch thread). All end to end, model load included. At {FIXED_COST_ROWS:,} "
            f"and {small:,} triplets a warm-up run each, then {REPEATS} alternating runs; at {large:,} "
            f"(after those) {REPEATS} alternating runs; medians. The goal is judged at {large:,}: Ray "
            "Data's start-up (each actor imports torch, about 1.5 s of CPU here, and loads the model; "
            f"measured alone, with one actor, at {FIXED_COST_ROWS:,} triplets) is a fixed cost that the in-process loop "
            f"does not pay, and it is most of the gap at {small:,}. Memory: a fresh subprocess with its "
            "own Ray per store scores it once while the RSS and PSS of its whole process tree are "
            "sampled every 50 ms."
        ),
    }
    result["seconds"] = time.perf_counter() - t_start
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{NAME}.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.score", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k vs 2M triplets instead of 1M vs 10M")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temporary folder)")
    ap.add_argument("--_child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(*args._child)
        return 0
    from bench.streaming import render

    print(render(run(args.quick, args.out_dir, args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
