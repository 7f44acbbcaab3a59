"""Training throughput: the Ray Train path against a plain PyTorch loop on the same model and data.

    python -m bench.training [--quick] [--out-dir bench/results]

The model is the shipped router (tune_configs/router.yaml: FastGRNN, hidden 32, batch 256, Adam,
plateau schedule) on synthetic routing logs (pipeline.synth.synth_routing; 200k rows, --quick
100k). Both paths train the same config for the same epochs on the same train/val split:

  - ray_train: the real path (prepare_data → build_trainer → TorchTrainer.fit) with one Train
    worker of the config's CPUs, reading its Ray Data shard (routing logs are an in-memory source:
    the loop loads the shard into tensors once and reshuffles it every epoch), validating, writing
    a safetensors checkpoint and reporting every epoch;
  - plain: one process, the same arrays as torch tensors, the same model/optimizer/schedule/loss
    (bench._plain_loop), a validation pass and a checkpoint in the same format every epoch, with
    the thread count a Train worker gets (Ray sets OMP_NUM_THREADS from the worker's CPUs).

Steady state = every epoch after the first. Two throughputs per path: the train pass (rows /
the loop's `train_seconds`) and the whole epoch (rows / the time from one epoch's start to the
next one's for Ray — train, validation, checkpoint, persisting it, reporting — and rows /
`epoch_seconds` of the plain loop, which also validates and checkpoints). Goal: Ray ≥ 0.8 × plain.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import bench_cli, write_result

ROOT = Path(__file__).resolve().parents[1]
ROUTER_CONFIG = ROOT / "tune_configs" / "router.yaml"
GOAL_RATIO = 0.8


class _ReportLog:
    """A Ray Train UserCallback (built lazily: ray is imported only when needed) that appends
    every epoch's report, with the controller's wall-clock time, to a JSON-lines file."""

    @staticmethod
    def make(path: str):
        import ray.train

        class ReportLog(ray.train.UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                with open(path, "a") as f:
                    f.write(json.dumps({"time": time.time(), "metrics": metrics[0]}) + "\n")

        return ReportLog()


def _start_ray() -> None:
    """A fresh local cluster as `tunestack train` starts one (never someone's `ray start`);
    RAY_ADDRESS, when set, is used as ensure_ray uses it."""

    from pipeline.runtime import ensure_ray

    ensure_ray()


def worker_threads(cpus: float) -> int:
    """torch's intra-op thread count in a Ray task with `cpus` CPUs (as a Train worker gets)."""
    import ray

    @ray.remote(num_cpus=cpus)
    def threads():
        import torch

        return torch.get_num_threads()

    return int(ray.get(threads.remote()))


def ray_train_path(cfg, workdir: str) -> dict:
    """Train `cfg` through the real Ray Train path; per-epoch reports with their times."""
    from pipeline.runtime import releasing_placement_groups
    from pipeline.train.run import build_trainer, fill_model_dims, prepare_data

    data = prepare_data(cfg)
    cfg = fill_model_dims(cfg, data.dims)
    name = "bench-training"
    run_path = os.path.join(workdir, name)
    os.makedirs(run_path, exist_ok=True)
    loop_config = {
        "config": cfg.to_dict(),
        "meta": {**data.meta, "run": name},
        "tensorboard_dir": os.path.join(run_path, "tensorboard"),
        "init_from": None,
        "teacher": None,
    }
    log = os.path.join(workdir, "reports.jsonl")
    trainer = build_trainer(cfg, name, workdir, loop_config, data, callbacks=[_ReportLog.make(log)])
    t0 = time.time()
    with releasing_placement_groups():
        trainer.fit()
    fit_seconds = time.time() - t0
    with open(log) as f:
        reports = [json.loads(line) for line in f]
    return {"fit_seconds": fit_seconds, "fit_start": t0, "reports": reports}


def _steady(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def measure(rows: int = 50_000, epochs: int = 4, workdir: str | None = None, overrides=()) -> dict:
    """Both paths on `rows` synthetic routing rows for `epochs` epochs (>= 3: the first is warm-up,
    and a Ray epoch's whole period ends when the next one starts).

    Starts a local Ray unless one is running (then it is left running). Returns samples/s of both
    paths (train pass and whole epoch, steady-state medians), their ratios and the per-epoch data."""
    import torch

    from bench._plain_loop import train_plain
    from pipeline.config import load_config
    from pipeline.data.sequences import load_sequence_data
    from pipeline.synth import synth_routing

    if epochs < 3:
        raise ValueError(
            f"epochs must be >= 3 (the first is warm-up; the last has no next start), got {epochs}"
        )
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="tunestack-bench-training-")
    try:
        logs = os.path.join(workdir, "routing")
        synth_routing(logs, rows, seed=0)
        # CPU for both paths (the plain loop is a CPU loop), even where the cluster has a GPU
        cfg = load_config(
            ROUTER_CONFIG,
            [
                f"data.path={logs}",
                f"train.epochs={epochs}",
                "train.patience=0",
                "train.use_gpu=false",
                *overrides,
            ],
        )
        import ray

        started = not ray.is_initialized()
        _start_ray()
        try:
            threads = worker_threads(cfg.train.cpus_per_worker)
            ray_run = ray_train_path(cfg, os.path.join(workdir, "runs"))
        finally:
            if started:
                ray.shutdown()  # the plain loop runs without Ray's processes beside it

        d = cfg.data  # exactly the split and z-score prepare_data made for the Ray path
        data = load_sequence_data(
            logs,
            test_fraction=d.test_fraction,
            val_fraction=d.val_fraction,
            seed=cfg.train.seed,
            normalize=d.normalize,
            log1p=d.log1p,
        )
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            t0 = time.perf_counter()
            _, plain_history = train_plain(
                cfg, data.train.x, data.train.y, data.val.x, data.val.y, checkpoint_every_epoch=True
            )
            plain_seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(previous_threads)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)

    train_rows = len(data.train)
    reports = ray_run["reports"]
    if len(reports) != epochs:
        raise RuntimeError(f"the Ray run reported {len(reports)} epochs, expected {epochs}")
    ray_train = [r["metrics"]["train_samples_per_s"] for r in reports[1:]]
    starts = [r["metrics"]["epoch_started_at"] for r in reports]
    periods = [b - a for a, b in zip(starts, starts[1:])]  # epoch e: train, val, checkpoint, report
    ray_epoch = [train_rows / p for p in periods[1:]]
    plain_train = [h["samples"] / h["train_seconds"] for h in plain_history[1:]]
    plain_epoch = [h["samples"] / h["epoch_seconds"] for h in plain_history[1:]]
    out = {
        "ray_train_health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
        "rows": rows,
        "train_rows": train_rows,
        "val_rows": len(data.val),
        "epochs": epochs,
        "batch_size": cfg.train.batch_size,
        "torch_threads": threads,
        "cpus_per_worker": cfg.train.cpus_per_worker,
        "model": cfg.to_dict()["model"],
        "optim": cfg.optim.model_dump(),
        "ray": {
            "train_samples_per_s": _steady(ray_train),
            "epoch_samples_per_s": _steady(ray_epoch),
            "fit_seconds": ray_run["fit_seconds"],
            "first_report_after_s": reports[0]["time"] - ray_run["fit_start"],
            "per_epoch": [
                {
                    k: r["metrics"][k]
                    for k in (
                        "epoch",
                        "train_seconds",
                        "epoch_seconds",
                        "train_samples_per_s",
                        "train_loss",
                        "val_accuracy",
                    )
                }
                for r in reports
            ],
            "epoch_periods_s": periods,
            "controller_report_intervals_s": [b["time"] - a["time"] for a, b in zip(reports, reports[1:])],
        },
        "plain": {
            "train_samples_per_s": _steady(plain_train),
            "epoch_samples_per_s": _steady(plain_epoch),
            "seconds": plain_seconds,
            "per_epoch": [
                {k: h[k] for k in ("epoch", "train_seconds", "epoch_seconds", "train_loss", "val_accuracy")}
                for h in plain_history
            ],
        },
    }
    out["ratio_train"] = out["ray"]["train_samples_per_s"] / out["plain"]["train_samples_per_s"]
    out["ratio_epoch"] = out["ray"]["epoch_samples_per_s"] / out["plain"]["epoch_samples_per_s"]
    return out


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t0 = time.perf_counter()
    rows, epochs = (100_000, 4) if quick else (200_000, 8)
    m = measure(rows=rows, epochs=epochs)
    figures = []
    for key, what in (
        ("train", "train pass"),
        ("epoch", "whole epoch: train + validation + checkpoint + report"),
    ):
        ratio = m[f"ratio_{key}"]
        figures.append(
            {
                "figure": f"Ray Train samples/s, {what} (router FastGRNN, steady state)",
                "value": m["ray"][f"{key}_samples_per_s"],
                "unit": "samples/s",
                "baseline": f"plain PyTorch loop, same model/data/batch/optimizer, {m['torch_threads']} thread(s)",
                "baseline_value": m["plain"][f"{key}_samples_per_s"],
                "ratio": ratio,
                "goal": f">= {GOAL_RATIO}x",
                "pass": bool(ratio >= GOAL_RATIO),
            }
        )
    result = {
        "name": "training",
        "title": "Ray Train path vs a plain PyTorch loop: training samples/s",
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "figures": figures,
        "plots": [],
        "method": (
            f"The shipped router config (tune_configs/router.yaml: FastGRNN hidden 32 over 5 routing features, "
            f"batch {m['batch_size']}, Adam, plateau schedule, grad clip) on {rows:,} synthetic routing rows "
            f"({m['train_rows']:,} train, {m['val_rows']:,} val) for {epochs} epochs, early stopping off. "
            "Primary because the router is the model this project trains and serves most, its data fits in "
            "memory so both paths see byte-identical arrays, and its per-step time (about a millisecond) is "
            "large enough to be real work yet small enough that any per-batch overhead of the Ray path shows. "
            "Ray path: prepare_data → build_trainer → TorchTrainer.fit on a fresh local cluster, one worker "
            f"with {m['cpus_per_worker']} CPU ({m['torch_threads']} torch thread(s)); its Ray Data shard is "
            "loaded into tensors once (in-memory sources) and reshuffled every epoch; validation, a "
            "safetensors checkpoint and a report every epoch, the controller polling reports every "
            f"{m['ray_train_health_check_interval_s']} s (pipeline.train.run); train-pass samples/s from the loop's train_seconds metric, whole-epoch "
            "samples/s from the loop's epoch_started_at of consecutive epochs (all epochs' reports collected "
            "by a UserCallback on the controller). "
            "Plain: bench/_plain_loop.py, same config helpers (model, optimizer, scheduler, task loss), "
            "tensors in memory, randperm batches, validation and a checkpoint every epoch, same thread count, "
            "run after Ray is shut down. Steady state: median over epochs 2..N (the first is warm-up)."
        ),
        "details": m,
    }
    write_result(result, out_dir)
    return result


def render(result: dict) -> str:
    lines = [result["title"] + (" (quick)" if result["quick"] else ""), ""]
    for f in result["figures"]:
        verdict = "n/a" if f["pass"] is None else ("PASS" if f["pass"] else "FAIL")
        lines.append(
            f"{f['figure']}: {f['value']:,.0f} {f['unit']} vs {f['baseline_value']:,.0f} "
            f"({f['baseline']}) = {f['ratio']:.2f}x, goal {f['goal']}: {verdict}"
        )
    d = result["details"]
    lines += [
        "",
        f"{'epoch':>5} | {'ray train s':>11} | {'ray period s':>14} | {'plain train s':>13} | "
        f"{'plain epoch s':>13}",
    ]
    intervals = d["ray"]["epoch_periods_s"] + [None]
    for r, iv, p in zip(d["ray"]["per_epoch"], intervals, d["plain"]["per_epoch"]):
        lines.append(
            f"{r['epoch']:>5} | {r['train_seconds']:>11.2f} | "
            f"{'' if iv is None else f'{iv:.2f}':>14} | {p['train_seconds']:>13.2f} | "
            f"{p['epoch_seconds']:>13.2f}"
        )
    lines.append(
        f"ray fit {d['ray']['fit_seconds']:.1f}s (first report after {d['ray']['first_report_after_s']:.1f}s); "
        f"plain {d['plain']['seconds']:.1f}s; wall {result['seconds']:.1f}s"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_cli("training", __doc__, run, render, "100k rows x 4 epochs instead of 200k x 8", argv)


if __name__ == "__main__":
    sys.exit(main())
