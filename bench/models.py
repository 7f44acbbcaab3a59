"""Sequence models on scikit-learn's digits: FastGRNN (float and INT8) against GRU and LSTM
baselines — test accuracy, model size, and CPU inference latency per sample.

    python -m bench.models [--quick] [--out-dir bench/results]

Digits are read as 8 steps x 8 pixels, split and z-scored exactly as `tunestack train` does for
tune_configs/digits.yaml (stratified 75/25 test split, 10% of train held out for validation).
All three models train with that config's recipe (Adam, cosine schedule over the run, grad clip,
batch 64, dropout 0.1) in one process (bench._plain_loop); FastGRNN keeps the config's low-rank U
and its dense → IHT → fixed-support phases; GRU/LSTM are dense. --quick trains 60 epochs instead
of the config's 120 (the cosine cycle and the sparsity phases shrink with it).

Sizes count non-zero entries as the FastGRNN paper does (pipeline.models.fastgrnn.model_size_bytes):
4 bytes each in float32; INT8 = 1 byte per non-zero weight-matrix entry + float32 scales, biases,
ζ, ν. Latency: µs per sample under torch.inference_mode, batch 1 (one sample per call, cycling
through the test set) and batch 1024, with 1 thread and with torch's default thread count;
median of several timed repeats after a warm-up. Goals: FastGRNN ≥ 96% test accuracy with an
INT8 model ≤ 2 KB; batched FastGRNN ≤ 10 µs/sample on CPU (tiny-dancer's design claims < 100 µs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import bench_cli, write_result
from bench.report import figure as _fig

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "tune_configs" / "digits.yaml"
# Dense baselines of comparable hidden size, trained by the same code (GRU: as tests/unit/test_models_digits).
BASELINES = {"gru": 40, "lstm": 32}
GOALS = {"accuracy_min": 0.96, "int8_bytes_max": 2048, "batched_us_max": 10.0, "single_us_claim": 100.0}
BATCH = 1024


def digits_config(cell: str = "fastgrnn", epochs: int | None = None, hidden_size: int | None = None):
    """tune_configs/digits.yaml, for `cell` (GRU/LSTM: dense, no low rank), optionally shorter."""
    from pipeline.config import load_config

    overrides = []
    if cell != "fastgrnn":
        overrides += [
            f"model.cell={cell}",
            "model.u_rank=null",
            "model.w_rank=null",
            "model.w_sparsity=1.0",
            "model.u_sparsity=1.0",
        ]
    if hidden_size is not None:
        overrides.append(f"model.hidden_size={hidden_size}")
    if epochs is not None:  # one cosine cycle over the (shorter) run, as the config does over 120
        overrides += [f"train.epochs={epochs}", f"schedule.t0={epochs}"]
    return load_config(DIGITS_CONFIG, overrides)


def digits_data(workdir: str, cfg):
    """The digits splits as prepare_data makes them for `cfg` (z-score fitted on train)."""
    from pipeline.data.sequences import load_sequence_data, write_digits_npz

    path = write_digits_npz(os.path.join(workdir, "digits.npz"), seed=0)
    d = cfg.data
    return load_sequence_data(
        path,
        test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
        seed=cfg.train.seed,
        normalize=d.normalize,
        log1p=d.log1p,
    )


def evaluate_model(name: str, cfg, data) -> dict:
    """Train `cfg` on the digits train split; accuracy and size, float and INT8; the models."""
    from bench._plain_loop import evaluate, train_plain
    from pipeline.models import build_model
    from pipeline.models.fastgrnn import load_int8, max_probability_diff, model_size_bytes, quantize_int8

    t0 = time.perf_counter()
    model, history = train_plain(cfg, data.train.x, data.train.y, data.val.x, data.val.y)
    train_seconds = time.perf_counter() - t0
    qdict = quantize_int8(model)
    params = cfg.to_dict()["model"]
    int8_model = load_int8(build_model(params.pop("arch"), **params), qdict)
    x_test = torch_tensor(data.test.x)
    return {
        "name": name,
        "config": cfg.to_dict()["model"],
        "epochs": cfg.train.epochs,
        "train_seconds": train_seconds,
        "final_val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": evaluate(model, data.test.x, data.test.y)["accuracy"],
        "int8_test_accuracy": evaluate(int8_model, data.test.x, data.test.y)["accuracy"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "float_bytes": model_size_bytes(model),
        "int8_bytes": model_size_bytes(qdict),
        "int8_max_probability_diff": max_probability_diff(model, x_test, qdict),
        "_model": model,
        "_int8_model": int8_model,
    }


def torch_tensor(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def latency_us(
    model, x: np.ndarray, batch: int, threads: int, repeats: int = 5, min_repeat_seconds: float = 0.1
) -> float:
    """Median µs per sample of model(x_batch) under inference_mode with `threads` torch threads.

    batch 1 cycles through the rows of `x` one sample per call; a larger batch tiles `x` to
    `batch` rows. Each repeat runs enough calls to last about `min_repeat_seconds`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xt = torch_tensor(x)
        if batch == 1:
            inputs = [xt[i : i + 1] for i in range(len(xt))]
        else:
            inputs = [xt.repeat((batch + len(xt) - 1) // len(xt), *([1] * (xt.dim() - 1)))[:batch]]
        model.eval()
        with torch.inference_mode():
            calls, elapsed = 0, 0.0
            start = time.perf_counter()
            while elapsed < min_repeat_seconds or calls < 10:  # warm-up, and how many calls a repeat makes
                model(inputs[calls % len(inputs)])
                calls += 1
                elapsed = time.perf_counter() - start
            per_call = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for i in range(calls):
                    model(inputs[i % len(inputs)])
                per_call.append((time.perf_counter() - t0) / calls)
    finally:
        torch.set_num_threads(previous)
    return float(np.median(per_call)) * 1e6 / batch


def measure(
    epochs: int | None = None,
    baselines: dict | None = None,
    batch: int = BATCH,
    repeats: int = 5,
    min_repeat_seconds: float = 0.1,
    workdir: str | None = None,
) -> dict:
    """Train FastGRNN (digits.yaml) and the GRU/LSTM `baselines` ({cell: hidden size}); their
    accuracy, sizes and latencies. `epochs` None = the config's. Returns JSON-able results."""
    import torch

    baselines = BASELINES if baselines is None else baselines
    with tempfile.TemporaryDirectory(prefix="tunestack-bench-models-") as tmp:
        cfg = digits_config(epochs=epochs)
        data = digits_data(workdir or tmp, cfg)
        runs = [evaluate_model("fastgrnn", cfg, data)]
        for cell, hidden in baselines.items():
            runs.append(evaluate_model(cell, digits_config(cell, epochs=epochs, hidden_size=hidden), data))
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads})
    for r in runs:
        r["latency_us_per_sample"] = {
            f"batch{b}_threads{t}": latency_us(r["_model"], data.test.x, b, t, repeats, min_repeat_seconds)
            for b in (1, batch)
            for t in thread_counts
        }
    fg = runs[0]
    fg["int8_latency_us_per_sample"] = {
        f"batch{b}_threads{t}": latency_us(fg["_int8_model"], data.test.x, b, t, repeats, min_repeat_seconds)
        for b in (1, batch)
        for t in thread_counts
    }
    return {
        "models": {r["name"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in runs},
        "data": {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "steps": int(data.test.x.shape[1]),
            "features": int(data.test.x.shape[2]),
        },
        "batch": batch,
        "default_threads": default_threads,
        "thread_counts": thread_counts,
        "torch": torch.__version__,
    }


def plot(models: dict, path: str) -> str:
    """Accuracy vs model size (bytes, log x): float and INT8 points per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"fastgrnn": "tab:red", "gru": "tab:blue", "lstm": "tab:green"}
    for name, m in models.items():
        label = {"fastgrnn": "FastGRNN", "gru": "GRU", "lstm": "LSTM"}.get(name, name)
        color = colors.get(name, "tab:gray")
        pts = [
            (m["float_bytes"], m["test_accuracy"], "o", f"{label} float32"),
            (m["int8_bytes"], m["int8_test_accuracy"], "^", f"{label} INT8"),
        ]
        for size, acc, marker, text in pts:
            ax.scatter(size, 100 * acc, marker=marker, color=color, s=60, label=text, zorder=3)
            ax.annotate(
                f"{size:,} B", (size, 100 * acc), textcoords="offset points", xytext=(6, -10), fontsize=7
            )
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=color, lw=0.8, alpha=0.5)
    ax.axvline(GOALS["int8_bytes_max"], color="gray", ls="--", lw=0.8)
    ax.axhline(100 * GOALS["accuracy_min"], color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("model size (bytes of non-zero parameters, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("scikit-learn digits (8 steps × 8 pixels): accuracy vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.text(GOALS["int8_bytes_max"], ax.get_ylim()[1], " 2 KB", fontsize=7, va="top", color="gray")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t0 = time.perf_counter()
    epochs = 60 if quick else None
    m = measure(epochs=epochs, repeats=3 if quick else 7, min_repeat_seconds=0.05 if quick else 0.2)
    models = m["models"]
    fg, gru = models["fastgrnn"], models["gru"]
    t_def, batch = m["default_threads"], m["batch"]
    lat, gru_lat = fg["latency_us_per_sample"], gru["latency_us_per_sample"]
    acc_goal = f">= {100 * GOALS['accuracy_min']:.0f}%"
    figures = [
        _fig(
            "FastGRNN INT8 test accuracy",
            100 * fg["int8_test_accuracy"],
            "%",
            "GRU float32 test accuracy",
            100 * gru["test_accuracy"],
            acc_goal,
            fg["int8_test_accuracy"] >= GOALS["accuracy_min"],
        ),
        _fig(
            "FastGRNN float32 test accuracy",
            100 * fg["test_accuracy"],
            "%",
            "GRU float32 test accuracy",
            100 * gru["test_accuracy"],
            acc_goal,
            fg["test_accuracy"] >= GOALS["accuracy_min"],
        ),
        _fig(
            "FastGRNN INT8 model size",
            fg["int8_bytes"],
            "bytes",
            "GRU float32 size",
            gru["float_bytes"],
            f"<= {GOALS['int8_bytes_max']} B",
            fg["int8_bytes"] <= GOALS["int8_bytes_max"],
        ),
        _fig(
            "FastGRNN float32 model size (non-zeros)",
            fg["float_bytes"],
            "bytes",
            "GRU float32 size",
            gru["float_bytes"],
        ),
        _fig(
            "FastGRNN INT8 vs float32: largest probability difference (test set)",
            fg["int8_max_probability_diff"],
            "probability",
        ),
    ]
    for name in models:
        if name != "fastgrnn":
            b = models[name]
            figures.append(
                _fig(
                    f"{name.upper()} (hidden {b['config']['hidden_size']}) float32 test accuracy",
                    100 * b["test_accuracy"],
                    "%",
                )
            )
    for threads in m["thread_counts"]:
        key = f"batch{batch}_threads{threads}"
        figures.append(
            _fig(
                f"FastGRNN latency, batch {batch}, {threads} thread(s)",
                lat[key],
                "µs/sample",
                f"GRU, batch {batch}, {threads} thread(s)",
                gru_lat[key],
                f"<= {GOALS['batched_us_max']:.0f} µs/sample",
                lat[key] <= GOALS["batched_us_max"],
            )
        )
    for threads in m["thread_counts"]:
        key = f"batch1_threads{threads}"
        figures.append(
            _fig(
                f"FastGRNN latency, single sample (batch 1), {threads} thread(s)",
                lat[key],
                "µs/sample",
                f"GRU, batch 1, {threads} thread(s)",
                gru_lat[key],
                f"< {GOALS['single_us_claim']:.0f} µs/sample (tiny-dancer's design claim; the issue's goal is batched)",
                lat[key] < GOALS["single_us_claim"],
            )
        )
    plot_path = plot(models, os.path.join(out_dir, "models_accuracy_size.png"))
    result = {
        "name": "models",
        "title": "FastGRNN vs GRU vs LSTM on digits: accuracy, size, CPU latency",
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "figures": figures,
        "plots": [plot_path],
        "method": (
            f"scikit-learn digits as 8 steps x 8 pixels ({m['data']['train']} train / {m['data']['val']} val / "
            f"{m['data']['test']} test rows), split and z-scored as `tunestack train` does for "
            "tune_configs/digits.yaml. FastGRNN uses that config (hidden 48, U rank 12, half of each W/U kept "
            "via dense → IHT → fixed-support phases); GRU (hidden 40) and LSTM (hidden 32) the same recipe, "
            "dense. All train in one process with the project's optimizer/scheduler/loss helpers "
            f"(bench/_plain_loop.py) for {fg['epochs']} epochs"
            + (" (--quick: 60 instead of the config's 120)" if quick else "")
            + "; the final model is "
            "evaluated on the test split. INT8 = quantize_int8 (symmetric per-tensor) then load_int8; sizes "
            "count non-zeros (4 B float32, 1 B per INT8 weight + float32 scales/biases/ζ/ν). Latency: median "
            "µs/sample over timed repeats after warm-up, torch.inference_mode, CPU, batch 1 (one test sample "
            f"per call) and batch {batch}, with 1 thread and the default {t_def}; under inference_mode FastGRNN "
            "runs its inference path (FastGRNN._forward_inference: biases folded into one input projection, "
            "σ(ζ)/σ(ν) taken once, full U for small batches, fewer ops a step). The INT8 model is dequantized "
            "once at load, so it runs the same float32 graph (its latency is in details)."
        ),
        "details": m,
    }
    return write_result(result, out_dir)


def render(result: dict) -> str:
    d = result["details"]
    lines = [result["title"] + (" (quick)" if result["quick"] else ""), ""]
    keys = list(next(iter(d["models"].values()))["latency_us_per_sample"])
    lines.append(
        f"{'model':>9} | {'params':>6} | {'acc':>6} | {'int8 acc':>8} | {'float B':>8} | {'int8 B':>7} | "
        + " | ".join(f"{k:>17}" for k in keys)
    )
    for name, m in d["models"].items():
        lines.append(
            f"{name:>9} | {m['parameters']:>6} | {100 * m['test_accuracy']:>5.1f}% | "
            f"{100 * m['int8_test_accuracy']:>7.1f}% | {m['float_bytes']:>8,} | {m['int8_bytes']:>7,} | "
            + " | ".join(f"{m['latency_us_per_sample'][k]:>12.2f} µs/s" for k in keys)
        )
    lines.append("")
    for f in result["figures"]:
        verdict = "" if f["pass"] is None else (" PASS" if f["pass"] else " FAIL")
        base = "" if f["baseline_value"] is None else f" (vs {f['baseline']}: {f['baseline_value']:,.4g})"
        goal = "" if f["goal"] is None else f" goal {f['goal']}"
        lines.append(f"{f['figure']}: {f['value']:,.4g} {f['unit']}{base}{goal}{verdict}")
    lines.append(f"plot: {', '.join(result['plots'])}; wall {result['seconds']:.1f}s")
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_cli(
        "models", __doc__, run, render, "60 training epochs instead of 120, shorter timings", argv
    )


if __name__ == "__main__":
    sys.exit(main())
