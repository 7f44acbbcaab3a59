"""Tiny models on scikit-learn's digits: FastGRNN (float, INT8 export, distilled) against GRU and
LSTM baselines — accuracy, exported size, and single-sample / batched CPU latency of the lean
NumPy engine against torch.

    python -m bench.models [--quick] [--out-dir bench/results]

Digits are read as 8 steps x 8 pixels, split and z-scored exactly as `tunestack train` does for
tune_configs/digits.yaml (stratified 75/25 test split, 10% of train held out for validation).
Every model trains with that config's recipe (Adam, cosine schedule over the run, grad clip,
batch 64, dropout 0.1) in one process through the project's training step (bench._plain_loop);
FastGRNN keeps the config's low-rank U and its dense → IHT → fixed-support phases; GRU/LSTM are
dense. --quick trains 40 epochs instead of the config's 120 (the schedule and phases shrink with it).

Models, all in one run:
  - fastgrnn: tune_configs/digits.yaml;
  - gru / lstm: today's baselines of comparable hidden size (40 / 32);
  - gru_equal / lstm_equal: the GRU and LSTM shrunk to FastGRNN's INT8 byte budget (the hidden size
    whose INT8 export is closest to FastGRNN's, within 10%), same recipe and epochs;
  - fastgrnn_distilled: tune_configs/digits-distill.yaml's student (the digits recipe) distilled
    from the `gru` model trained above, same seed and epochs as `fastgrnn`.
Sizes are the bytes of `tunestack export` files (pipeline.lean.artifact: values, sparse bitmaps,
scales and safetensors' header); INT8 accuracies are those of the exported artifact, reloaded.
Latency: µs per call, median of timed repeats after a warm-up, 1 thread (torch and NumPy), batch 1
(one test sample per call, cycling through the test set) and batch 1024; the lean engine's
`logits` (input checks included) against torch's `model(x)` under inference_mode; the router is
a tune_configs/router.yaml-shaped model (5 features, one step: no recurrent matrix).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import bench_cli, write_result
from bench.report import figure as _figure
from pipeline.lean.artifact import INT8_PROBABILITY_TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "tune_configs" / "digits.yaml"
DISTILL_CONFIG = ROOT / "tune_configs" / "digits-distill.yaml"
ROUTER_CONFIG = ROOT / "tune_configs" / "router.yaml"
# Dense baselines of comparable hidden size, trained by the same code (GRU: as tests/unit/test_models_digits).
BASELINES = {"gru": 40, "lstm": 32}
EQUAL_SIZE_TOLERANCE = 0.10
GOALS = {
    "accuracy_min": 0.965,
    "int8_bytes_max": 2048,
    "digits_single_us_max": 60.0,
    "router_single_us_max": 25.0,
    "int8_probability_diff_max": INT8_PROBABILITY_TOLERANCE,
}
BATCH = 1024


def digits_config(
    cell: str = "fastgrnn", epochs: int | None = None, hidden_size: int | None = None, path=None
):
    """tune_configs/digits.yaml (or `path`), for `cell` (GRU/LSTM: dense, no low rank), optionally shorter."""
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
    return load_config(path or DIGITS_CONFIG, overrides)


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


def _checkpoint(workdir: str, name: str, model, cfg, data, sequence_lengths) -> str:
    from pipeline.train.checkpoint import save_checkpoint

    meta = {
        "config": cfg.to_dict(),
        "normalization": data.normalization.to_dict() if data.normalization else None,
        "sequence_lengths": sequence_lengths,
    }
    return save_checkpoint(os.path.join(workdir, name), model, meta)


def export_sizes(model, cfg, workdir: str, name: str, data, sequence_lengths=(8,)) -> dict:
    """Export `model` as float32 and INT8 (`tunestack export`'s code); file sizes and paths."""
    from pipeline.export import export_model

    ckpt = _checkpoint(workdir, name, model, cfg, data, list(sequence_lengths))
    out = {}
    for precision in ("float32", "int8"):
        s = export_model(ckpt, precision, os.path.join(workdir, f"{name}-{precision}"))
        out[precision] = {"path": s["path"], "file_bytes": s["file_bytes"], "breakdown": s["breakdown"]}
    return out


def int8_bytes_of(cell: str, hidden: int, input_size: int = 8, num_classes: int = 10) -> int:
    """INT8 export size of an (untrained, dense) classifier: dense matrices, so it does not depend
    on the values — what a GRU/LSTM of this hidden size costs on disk."""
    from safetensors.numpy import save

    from pipeline.lean.artifact import encode
    from pipeline.models import build_model

    model = build_model(
        "sequence_classifier", cell=cell, input_size=input_size, hidden_size=hidden, num_classes=num_classes
    )
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tensors, _, _ = encode(state, "int8")
    return len(save(tensors))


def equal_size_hidden(cell: str, budget: int) -> tuple[int, int]:
    """(hidden size, its INT8 bytes) of `cell` closest to `budget` bytes (must be within 10%)."""
    best = min(((h, int8_bytes_of(cell, h)) for h in range(2, 65)), key=lambda hb: abs(hb[1] - budget))
    if abs(best[1] - budget) > EQUAL_SIZE_TOLERANCE * budget:
        raise ValueError(f"no {cell} hidden size within 10% of {budget} bytes (closest: {best})")
    return best


def evaluate_model(name: str, cfg, data, workdir: str, teacher=None) -> dict:
    """Train `cfg` on the digits train split (distilled from `teacher` when given); accuracy of the
    float model and of its INT8 export (reloaded from the files); export sizes; the models."""
    import torch

    from bench._plain_loop import evaluate, train_plain
    from pipeline.train.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    model, history = train_plain(cfg, data.train.x, data.train.y, data.val.x, data.val.y, teacher=teacher)
    train_seconds = time.perf_counter() - t0
    sizes = export_sizes(model, cfg, workdir, name, data)
    int8_model = load_checkpoint(sizes["int8"]["path"]).build_model()
    x_test = torch.from_numpy(data.test.x)
    with torch.inference_mode():
        diff = (torch.softmax(model(x_test), -1) - torch.softmax(int8_model(x_test), -1)).abs().max()
    return {
        "name": name,
        "config": cfg.to_dict()["model"],
        "distill": cfg.to_dict()["distill"],
        "epochs": cfg.train.epochs,
        "train_seconds": train_seconds,
        "final_val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": evaluate(model, data.test.x, data.test.y)["accuracy"],
        "int8_test_accuracy": evaluate(int8_model, data.test.x, data.test.y)["accuracy"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "float_bytes": sizes["float32"]["file_bytes"],
        "int8_bytes": sizes["int8"]["file_bytes"],
        "int8_breakdown": sizes["int8"]["breakdown"],
        "int8_max_probability_diff": float(diff),
        "_model": model,
        "_int8_path": sizes["int8"]["path"],
    }


# ---------------------------------------------------------------------------------------------
# Latency


def time_per_call(fn, inputs: list, repeats: int = 5, min_repeat_seconds: float = 0.1) -> float:
    """Median µs per call of fn(inputs[i]) (cycling), each repeat lasting about `min_repeat_seconds`."""
    calls, elapsed, start = 0, 0.0, time.perf_counter()
    while elapsed < min_repeat_seconds or calls < 10:  # warm-up, and how many calls a repeat makes
        fn(inputs[calls % len(inputs)])
        calls += 1
        elapsed = time.perf_counter() - start
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(inputs[i % len(inputs)])
        per_call.append((time.perf_counter() - t0) / calls)
    return float(np.median(per_call)) * 1e6


def _inputs(x: np.ndarray, batch: int) -> list[np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if batch == 1:
        return [x[i : i + 1] for i in range(len(x))]
    return [np.resize(x, (batch, *x.shape[1:]))]


def latency(models: dict, x: np.ndarray, batch: int, repeats: int, min_repeat_seconds: float) -> dict:
    """µs per SAMPLE of each {name: torch model or lean engine} at `batch`, 1 thread, interleaved
    round by round so a change in machine load hits every model alike."""
    import torch

    torch.set_num_threads(1)
    inputs = _inputs(x, batch)
    calls = {}
    for name, m in models.items():
        if isinstance(m, torch.nn.Module):
            m.eval()
            tensors = [torch.from_numpy(a) for a in inputs]
            calls[name] = (lambda i, m=m, tensors=tensors: m(tensors[i]), list(range(len(tensors))))
        else:
            calls[name] = (lambda i, m=m: m.logits(inputs[i]), list(range(len(inputs))))
    rounds = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, (fn, idx) in calls.items():
                rounds[name].append(time_per_call(fn, idx, 1, min_repeat_seconds))
    return {name: float(np.median(v)) / batch for name, v in rounds.items()}


def lean_engine(path: str):
    from pipeline.lean import load

    return load(path).engine


def router_models(workdir: str) -> dict:
    """A router.yaml-shaped FastGRNN (torch, and lean from its INT8 export) and a GRU of the same
    hidden size; random weights (latency does not depend on their values)."""
    import torch

    from pipeline.config import load_config
    from pipeline.export import export_model
    from pipeline.models import build_model
    from pipeline.train.checkpoint import save_checkpoint

    cfg = load_config(ROUTER_CONFIG)
    params = {k: v for k, v in cfg.to_dict()["model"].items() if k != "arch"}
    torch.manual_seed(0)
    fg = build_model("sequence_classifier", **params).eval()
    gru_params = {k: params[k] for k in ("input_size", "hidden_size", "num_classes")}
    gru = build_model("sequence_classifier", cell="gru", **gru_params).eval()
    ckpt = save_checkpoint(
        os.path.join(workdir, "router"), fg, {"config": cfg.to_dict(), "fingerprint": {"kind": "routing"}}
    )
    out = export_model(ckpt, "int8", os.path.join(workdir, "router-int8"))
    return {
        "lean": lean_engine(out["path"]),
        "torch_fastgrnn": fg,
        "torch_gru": gru,
        "_int8_bytes": out["file_bytes"],
        "_hidden": params["hidden_size"],
    }


# ---------------------------------------------------------------------------------------------
# The run


def measure(
    epochs: int | None = None,
    baselines: dict | None = None,
    batch: int = BATCH,
    repeats: int = 5,
    min_repeat_seconds: float = 0.1,
    workdir: str | None = None,
    equal_size: bool = True,
    distill: bool = True,
) -> dict:
    """Train the models (see the module docstring), export them, time them. JSON-able results."""
    import torch

    torch.set_num_threads(1)
    baselines = BASELINES if baselines is None else baselines
    with tempfile.TemporaryDirectory(prefix="tunestack-bench-models-") as tmp:
        work = workdir or tmp
        cfg = digits_config(epochs=epochs)
        data = digits_data(work, cfg)
        runs = {"fastgrnn": evaluate_model("fastgrnn", cfg, data, work)}
        for cell, hidden in baselines.items():
            runs[cell] = evaluate_model(
                cell, digits_config(cell, epochs=epochs, hidden_size=hidden), data, work
            )
        budget = runs["fastgrnn"]["int8_bytes"]
        equal = {}
        if equal_size:
            for cell in ("gru", "lstm"):
                hidden, size = equal_size_hidden(cell, budget)
                equal[cell] = {"hidden_size": hidden, "int8_bytes": size}
                c = digits_config(cell, epochs=epochs, hidden_size=hidden)
                runs[f"{cell}_equal"] = evaluate_model(f"{cell}_equal", c, data, work)
        if distill and "gru" in runs:
            c = digits_config(epochs=epochs, path=DISTILL_CONFIG)
            teacher = runs["gru"]["_model"]
            runs["fastgrnn_distilled"] = evaluate_model("fastgrnn_distilled", c, data, work, teacher=teacher)

        # latency: digits (8 steps) and the router (1 step)
        lean = lean_engine(runs["fastgrnn"]["_int8_path"])
        digits_models = {"lean": lean, "torch_fastgrnn": runs["fastgrnn"]["_model"]}
        for name in ("gru", "gru_equal", "lstm_equal"):
            if name in runs:
                digits_models[f"torch_{name}"] = runs[name]["_model"]
        lat = {
            "digits_batch1": latency(digits_models, data.test.x, 1, repeats, min_repeat_seconds),
            f"digits_batch{batch}": latency(
                {k: digits_models[k] for k in ("lean", "torch_fastgrnn")},
                data.test.x,
                batch,
                repeats,
                min_repeat_seconds,
            ),
        }
        router = router_models(work)
        rx = np.random.default_rng(0).standard_normal((256, 5)).astype(np.float32)
        rmodels = {k: v for k, v in router.items() if not k.startswith("_")}
        lat["router_batch1"] = latency(rmodels, rx, 1, repeats, min_repeat_seconds)
        lat[f"router_batch{batch}"] = latency(
            {k: rmodels[k] for k in ("lean", "torch_fastgrnn")}, rx, batch, repeats, min_repeat_seconds
        )
    return {
        "models": {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in runs.items()},
        "equal_size": {"budget_bytes": budget, **equal},
        "latency_us_per_sample": lat,
        "router": {"hidden_size": router["_hidden"], "int8_bytes": router["_int8_bytes"]},
        "data": {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "steps": int(data.test.x.shape[1]),
            "features": int(data.test.x.shape[2]),
        },
        "batch": batch,
        "threads": 1,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def plot(models: dict, path: str) -> str:
    """Accuracy vs exported size (bytes, log x): float32 and INT8 points per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    colors = {
        "fastgrnn": "tab:red",
        "fastgrnn_distilled": "tab:orange",
        "gru": "tab:blue",
        "lstm": "tab:green",
        "gru_equal": "tab:cyan",
        "lstm_equal": "tab:olive",
    }
    labels = {
        "fastgrnn": "FastGRNN",
        "fastgrnn_distilled": "FastGRNN distilled",
        "gru": "GRU",
        "lstm": "LSTM",
        "gru_equal": "GRU (FastGRNN's size)",
        "lstm_equal": "LSTM (FastGRNN's size)",
    }
    for name, m in models.items():
        color, label = colors.get(name, "tab:gray"), labels.get(name, name)
        pts = [
            (m["float_bytes"], m["test_accuracy"], "o", f"{label} float32"),
            (m["int8_bytes"], m["int8_test_accuracy"], "^", f"{label} INT8"),
        ]
        for size, acc, marker, text in pts:
            ax.scatter(size, 100 * acc, marker=marker, color=color, s=50, label=text, zorder=3)
        ax.annotate(
            f"{m['int8_bytes']:,} B",
            (m["int8_bytes"], 100 * m["int8_test_accuracy"]),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize=7,
        )
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=color, lw=0.8, alpha=0.5)
    ax.axvline(GOALS["int8_bytes_max"], color="gray", ls="--", lw=0.8)
    ax.axhline(100 * GOALS["accuracy_min"], color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("exported model size (bytes of weights.safetensors, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("scikit-learn digits (8 steps × 8 pixels): accuracy vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.text(GOALS["int8_bytes_max"], ax.get_ylim()[0], " 2 KB", fontsize=7, va="bottom", color="gray")
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figures(m: dict) -> list[dict]:
    models, lat, batch = m["models"], m["latency_us_per_sample"], m["batch"]
    fg, gru = models["fastgrnn"], models["gru"]
    acc_goal = f">= {100 * GOALS['accuracy_min']:.1f}%"
    out = [
        _figure(
            "FastGRNN INT8 export: test accuracy (artifact reloaded)",
            100 * fg["int8_test_accuracy"],
            "%",
            "GRU float32 test accuracy",
            100 * gru["test_accuracy"],
            acc_goal,
            fg["int8_test_accuracy"] >= GOALS["accuracy_min"],
        ),
        _figure(
            "FastGRNN INT8 export: file size (values + bitmaps + scales + header)",
            fg["int8_bytes"],
            "bytes",
            f"GRU (hidden {gru['config']['hidden_size']}) INT8 export",
            gru["int8_bytes"],
            f"<= {GOALS['int8_bytes_max']} B",
            fg["int8_bytes"] <= GOALS["int8_bytes_max"],
        ),
        _figure(
            "FastGRNN float32 test accuracy",
            100 * fg["test_accuracy"],
            "%",
            "GRU float32 test accuracy",
            100 * gru["test_accuracy"],
        ),
        _figure(
            "FastGRNN INT8 vs float32: largest probability difference (test set)",
            fg["int8_max_probability_diff"],
            "probability",
            goal=f"<= {GOALS['int8_probability_diff_max']} (documented INT8 tolerance)",
            ok=fg["int8_max_probability_diff"] <= GOALS["int8_probability_diff_max"],
        ),
    ]
    for cell in ("gru", "lstm"):
        name = f"{cell}_equal"
        if name in models:
            e = models[name]
            out.append(
                _figure(
                    f"{cell.upper()} at FastGRNN's INT8 size (hidden {e['config']['hidden_size']}, "
                    f"{e['int8_bytes']:,} B vs {fg['int8_bytes']:,} B): INT8 test accuracy",
                    100 * e["int8_test_accuracy"],
                    "%",
                    "FastGRNN INT8 test accuracy",
                    100 * fg["int8_test_accuracy"],
                )
            )
    if "fastgrnn_distilled" in models:
        d = models["fastgrnn_distilled"]
        out.append(
            _figure(
                f"FastGRNN distilled from the GRU (alpha {d['distill']['alpha']}, T {d['distill']['temperature']}): "
                "test accuracy",
                100 * d["test_accuracy"],
                "%",
                "the same FastGRNN without a teacher",
                100 * fg["test_accuracy"],
            )
        )
        out.append(
            _figure(
                "FastGRNN distilled, INT8 export: test accuracy",
                100 * d["int8_test_accuracy"],
                "%",
                "FastGRNN INT8 without a teacher",
                100 * fg["int8_test_accuracy"],
            )
        )
    d1, r1 = lat["digits_batch1"], lat["router_batch1"]
    out += [
        _figure(
            "digits (8 steps), single sample, 1 thread: lean engine",
            d1["lean"],
            "µs",
            "torch FastGRNN",
            d1["torch_fastgrnn"],
            f"<= {GOALS['digits_single_us_max']:.0f} µs",
            d1["lean"] <= GOALS["digits_single_us_max"],
        ),
        _figure(
            "digits, single sample, 1 thread: lean engine vs GRU (same run)",
            d1["lean"],
            "µs",
            f"torch GRU (hidden {gru['config']['hidden_size']})",
            d1["torch_gru"],
            "faster than the GRU",
            d1["lean"] < d1["torch_gru"],
        ),
        _figure(
            "router (1 step), single sample, 1 thread: lean engine",
            r1["lean"],
            "µs",
            "torch FastGRNN",
            r1["torch_fastgrnn"],
            f"<= {GOALS['router_single_us_max']:.0f} µs",
            r1["lean"] <= GOALS["router_single_us_max"],
        ),
        _figure(
            "router, single sample, 1 thread: lean engine vs GRU (same run)",
            r1["lean"],
            "µs",
            "torch GRU (same hidden size)",
            r1["torch_gru"],
            "faster than the GRU",
            r1["lean"] < r1["torch_gru"],
        ),
    ]
    for task in ("digits", "router"):
        b = lat[f"{task}_batch{batch}"]
        out.append(
            _figure(
                f"{task}, batch {batch}, 1 thread: lean engine throughput cost",
                b["lean"],
                "µs/sample",
                "torch FastGRNN (today's path)",
                b["torch_fastgrnn"],
                "not worse than torch (ratio <= 1.1: timing noise)",
                b["lean"] <= 1.1 * b["torch_fastgrnn"],
            )
        )
    return out


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t0 = time.perf_counter()
    m = measure(
        epochs=40 if quick else None, repeats=3 if quick else 7, min_repeat_seconds=0.05 if quick else 0.2
    )
    plot_path = plot(m["models"], os.path.join(out_dir, "models_accuracy_size.png"))
    fg = m["models"]["fastgrnn"]
    result = {
        "name": "models",
        "title": "Tiny models on digits: FastGRNN (INT8 export, distilled) vs GRU/LSTM, lean engine vs torch",
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "figures": figures(m),
        "plots": [plot_path],
        "method": (
            f"scikit-learn digits as 8 steps x 8 pixels ({m['data']['train']} train / {m['data']['val']} val / "
            f"{m['data']['test']} test rows), split and z-scored as `tunestack train` does for "
            "tune_configs/digits.yaml. FastGRNN uses that config (hidden 48, U rank 12, half of each W/U kept "
            "via dense → IHT → fixed-support phases); GRU (hidden 40) and LSTM (hidden 32) the same recipe, "
            "dense; GRU/LSTM 'at FastGRNN's size' use the hidden size whose INT8 export is closest to "
            f"FastGRNN's ({m['equal_size']['budget_bytes']:,} B, within 10%); the distilled FastGRNN is "
            "tune_configs/digits-distill.yaml's student taught by the GRU trained in the same run. All train "
            f"in one process through the project's training step (bench/_plain_loop.py) for {fg['epochs']} "
            "epochs"
            + (" (--quick: 40 instead of the config's 120)" if quick else "")
            + "; the final model is "
            "evaluated on the test split. Sizes: bytes of the `tunestack export` weights file (INT8 matrices "
            "with one float32 scale each, float16 biases, sparse matrices as a bitmap + values, safetensors "
            "header); INT8 accuracies come from the exported files, reloaded. Latency: µs per sample, 1 "
            "thread, median over interleaved timed rounds after warm-up; the lean engine "
            "(pipeline.lean, NumPy) runs the INT8 export's weights, torch runs model(x) under inference_mode; "
            "batch 1 cycles through the test set. The router is a tune_configs/router.yaml-shaped model "
            f"(hidden {m['router']['hidden_size']}, one step, INT8 export {m['router']['int8_bytes']:,} B)."
        ),
        "details": m,
    }
    return write_result(result, out_dir)


def render(result: dict) -> str:
    d = result["details"]
    lines = [result["title"] + (" (quick)" if result["quick"] else ""), ""]
    lines.append(
        f"{'model':>18} | {'params':>6} | {'acc':>6} | {'int8 acc':>8} | {'float B':>8} | {'int8 B':>7}"
    )
    for name, m in d["models"].items():
        lines.append(
            f"{name:>18} | {m['parameters']:>6} | {100 * m['test_accuracy']:>5.1f}% | "
            f"{100 * m['int8_test_accuracy']:>7.1f}% | {m['float_bytes']:>8,} | {m['int8_bytes']:>7,}"
        )
    lines.append("")
    for key, row in d["latency_us_per_sample"].items():
        lines.append(f"{key:>16}: " + ", ".join(f"{k} {v:.2f} µs" for k, v in row.items()))
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
        "models", __doc__, run, render, "40 training epochs instead of 120, shorter timings", argv
    )


if __name__ == "__main__":
    sys.exit(main())
