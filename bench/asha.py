"""ASHA against a full grid on the same configurations, and tuned FastGRNN against its default.

    python -m bench.asha [--quick] [--out-dir bench/results]

(a) ASHA efficiency. The router (tune_configs/router.yaml: FastGRNN over 5 routing features) on
    synthetic routing logs, with a fixed plan of configurations (3 hidden sizes x 8 learning rates
    = 24; --quick 2 x 2 = 4, a smoke run) and early stopping off, is tuned twice by
    `pipeline.tune.run_tune` on one local Ray: as a grid (no scheduler: every configuration trains
    all 27 epochs, --quick 9) and under ASHA (grace_period 1, reduction_factor 3, max_t 27: rungs
    at 1, 3, 9, 27). Each experiment's
    best is the best validation accuracy any of its checkpoints reached; trial-epochs are the epochs
    each trial's own Train run trained (its latest checkpoint), summed. Goals: ASHA's best within 2%
    (relative) of the grid's, using <= 35% of the grid's trial-epochs. Wall times of both are
    reported.
(b) Tuned vs default FastGRNN on digits. The default is tune_configs/digits.yaml's training config
    as `tunestack train --config tune_configs/digits.yaml` trains it (lr 0.02, hidden 48, low-rank,
    half-sparse, the dense -> IHT -> fixed schedule); the tuned model is the best trial of the
    file's own search under its ASHA, seeded with the default's lr (tune.points_to_evaluate), then
    3 draws (--quick 1) of lr, each with hidden 32 and 48, with the same epoch budget (120 epochs,
    --quick 2); it is chosen by validation accuracy. Both are scored on the held-out test
    split; goal: tuned >= default.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import bench_cli, write_result

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tune_configs"
GOALS = {"best_ratio_min": 0.98, "epoch_share_max": 0.35}

# (a): the plan both experiments run, and ASHA's settings (max_t is 9 in a quick run: its rungs at 1
# and 3 cut some of the 4 trials, so the smoke run exercises ASHA's stops; at max_t 3 none was cut).
# Asynchronous ASHA judges a trial at a rung against the trials that reached it before: the first
# trials always pass, so its savings grow with the number of configurations — 24, not 8 (a quick
# run's 4 are a smoke test of the benchmark, not a measurement of ASHA).
# Trials start in plan order, and a plan sorted from weak to strong (lr ascending) is its worst
# case (every trial beats all before it, none is cut): the values are put in a seeded random order
# (PLAN_SEED, fixed before any run), as a search's draws would come.
HIDDEN = [4, 8, 16]
LRS = [0.001, 0.0017, 0.0029, 0.005, 0.0085, 0.0145, 0.025, 0.042]  # log-spaced
HIDDEN_QUICK = [8, 16]
LRS_QUICK = [0.0029, 0.025]  # --quick: 4 configurations, a smoke run for CI (ASHA saves little on 4)
PLAN_SEED = 0
EPOCHS = {False: 27, True: 9}  # max_t (full, quick): grid trials train all of them


def asha_settings(quick: bool) -> dict:
    return {
        "time_attr": "training_iteration",
        "grace_period": 1,
        "reduction_factor": 3,
        "brackets": 1,
        "max_t": EPOCHS[quick],
    }


def plan_of(quick: bool) -> dict:
    """{key: values} in the seeded order both experiments run."""
    rng = random.Random(PLAN_SEED)
    hidden, lrs = list(HIDDEN_QUICK if quick else HIDDEN), list(LRS_QUICK if quick else LRS)
    rng.shuffle(hidden)
    rng.shuffle(lrs)
    return {"model.hidden_size": hidden, "optim.lr": lrs}


def _router_file(folder: str, plan: dict, epochs: int, asha: dict | None) -> str:
    raw = yaml.safe_load((CONFIGS / "router.yaml").read_text())
    raw["train"].update({"epochs": epochs, "patience": 0})
    raw["search"], raw["plan"] = {}, plan
    raw["tune"].update({"num_samples": 1, "asha": asha})
    path = os.path.join(folder, f"router-{'asha' if asha else 'grid'}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


def _experiment(outcome, seconds: float) -> dict:
    return {
        "experiment": outcome.experiment,
        "seconds": seconds,
        "best": outcome.best["metric"],
        "best_trial": outcome.best["overrides"],
        "trial_epochs": sum(t["epochs"] for t in outcome.trials),
        # what Tune saw: a trial ASHA stops has usually trained one or two epochs more by then
        "reported_epochs": sum(len(t["history"]) for t in outcome.trials),
        "errors": [t["error"] for t in outcome.trials if t["error"]],
        "trials": [
            {k: t[k] for k in ("trial", "overrides", "metric", "epochs", "stopped_early", "history")}
            for t in outcome.trials
        ],
    }


def asha_vs_grid(folder: str, quick: bool) -> dict:
    from pipeline.synth import synth_routing
    from pipeline.tune.run import run_tune

    rows, epochs, plan = (8_000 if quick else 20_000), EPOCHS[quick], plan_of(quick)
    synth_routing(os.path.join(folder, "home", "routing"), rows=rows, seed=0, noise=0.1)
    settings = asha_settings(quick)
    out = {"rows": rows, "epochs": epochs, "plan": plan, "asha_settings": settings}  # "asha": its result
    for kind, asha in (("grid", None), ("asha", settings)):
        t0 = time.perf_counter()
        outcome = run_tune(_router_file(folder, plan, epochs, asha), name=f"router-{kind}")
        out[kind] = _experiment(outcome, time.perf_counter() - t0)
        print(
            f"{kind}: best {out[kind]['best']:.4f}, {out[kind]['trial_epochs']} trial-epochs, "
            f"{out[kind]['seconds']:.0f}s",
            flush=True,
        )
    return out


def replay_orders(a: dict, orders: int = 200, seed: int = 1) -> dict:
    """How much the measured saving owes to the plan's order: asynchronous ASHA's rule (a trial
    reaching a rung is stopped below the (1 - 1/rf) quantile of the values recorded there before
    it; Ray's ASHAScheduler) replayed on the grid's own learning curves in `orders` random orders,
    one trial after another, each stopped trial charged the over-run measured in the ASHA run."""
    import numpy as np

    s, curves = a["asha_settings"], [t["history"] for t in a["grid"]["trials"]]
    if not curves or any(len(c) != a["epochs"] for c in curves):
        return {"error": "grid curves incomplete"}
    rungs, m = [], s["grace_period"]
    while m < s["max_t"]:
        rungs.append(m)
        m *= s["reduction_factor"]
    cut = [t for t in a["asha"]["trials"] if t["stopped_early"]]
    over = sum(t["epochs"] - len(t["history"]) for t in cut) / len(cut) if cut else 0.0
    rng, grid_best = random.Random(seed), max(max(c) for c in curves)
    shares, bests = [], []
    for _ in range(orders):
        recorded, epochs, best = {r: [] for r in rungs}, 0.0, 0.0
        for i in rng.sample(range(len(curves)), len(curves)):
            h, stop = curves[i], len(curves[i])
            for r in rungs:
                before = recorded[r]
                recorded[r] = before + [h[r - 1]]
                if before and h[r - 1] < np.percentile(before, (1 - 1 / s["reduction_factor"]) * 100):
                    stop = r
                    break
            epochs += stop if stop == len(h) else min(len(h), stop + over)
            best = max(best, max(h[:stop]))
        shares.append(epochs / (len(curves) * a["epochs"]))
        bests.append(best / grid_best)
    q = lambda xs, p: float(np.percentile(xs, p))  # noqa: E731
    return {
        "orders": orders,
        "overrun_epochs_per_stopped_trial": over,
        "share_median": q(shares, 50),
        "share_p90": q(shares, 90),
        "share_pass_fraction": float(np.mean([x <= GOALS["epoch_share_max"] for x in shares])),
        "best_ratio_median": q(bests, 50),
        "best_ratio_p10": q(bests, 10),
        "best_pass_fraction": float(np.mean([x >= GOALS["best_ratio_min"] for x in bests])),
    }


def tuned_vs_default(folder: str, quick: bool) -> dict:
    from pipeline.config import load_config
    from pipeline.data.sequences import write_digits_npz
    from pipeline.train.run import evaluate_checkpoint, train
    from pipeline.tune.run import run_tune

    epochs, samples = (2, 1) if quick else (120, 3)
    write_digits_npz(os.path.join(folder, "home", "digits.npz"))
    budget = [f"train.epochs={epochs}", f"schedule.t0={epochs}"]
    t0 = time.perf_counter()
    default = train(load_config(CONFIGS / "digits.yaml", budget), run_name="digits-default")
    default_s = time.perf_counter() - t0
    print(f"default: test accuracy {default.test_metrics['accuracy']:.4f} ({default_s:.0f}s)", flush=True)
    t0 = time.perf_counter()
    asha = [
        f"tune.asha.grace_period={max(1, epochs // 3)}",
        f"tune.asha.max_t={epochs}",
        f"tune.num_samples={samples}",
    ]
    tuned = run_tune(str(CONFIGS / "digits.yaml"), name="digits-tuned", overrides=budget + asha)
    tuned_s = time.perf_counter() - t0
    tuned_test = evaluate_checkpoint(tuned.best["checkpoint"])
    print(f"tuned: test accuracy {tuned_test['accuracy']:.4f} ({tuned_s:.0f}s)", flush=True)
    return {
        "epochs": epochs,
        "num_samples": samples,
        "default": {
            "config": {"optim.lr": 0.02, "model.hidden_size": 48},
            "seconds": default_s,
            "val_accuracy": default.best_metrics.get("val_accuracy"),
            "test_accuracy": default.test_metrics["accuracy"],
        },
        "tuned": {
            **_experiment(tuned, tuned_s),
            "val_accuracy": tuned.best["metric"],
            "test_accuracy": tuned_test["accuracy"],
        },
    }


def _plot(a: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("grid", "asha")):
        for t in a[kind]["trials"]:
            h = t["history"]
            ax.plot(range(1, len(h) + 1), h, lw=1)
            if t["stopped_early"]:
                ax.plot(len(h), h[-1], "x", color="k")
        ax.set_title(
            f"{kind}: {a[kind]['trial_epochs']} trial-epochs, best {a[kind]['best']:.4f}, "
            f"{a[kind]['seconds']:.0f}s",
            fontsize=9,
        )
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val_accuracy")
    fig.suptitle(
        "router: the same configurations as a grid and under ASHA (x = stopped by ASHA)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    import ray

    from pipeline.runtime import ensure_ray

    t0 = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="tunestack-bench-asha-")
    old_home = os.environ.get("TUNESTACK_HOME")
    os.environ["TUNESTACK_HOME"] = os.path.join(folder, "home")  # runs and registry stay out of the user's
    try:
        ensure_ray()
        a = asha_vs_grid(folder, quick)
        d = tuned_vs_default(folder, quick)
    finally:
        ray.shutdown()
        if old_home is None:
            os.environ.pop("TUNESTACK_HOME", None)
        else:
            os.environ["TUNESTACK_HOME"] = old_home
        shutil.rmtree(folder, ignore_errors=True)

    os.makedirs(out_dir, exist_ok=True)
    plot = _plot(a, os.path.join(out_dir, "asha_curves.png"))
    best_ratio = a["asha"]["best"] / a["grid"]["best"]
    share = a["asha"]["trial_epochs"] / a["grid"]["trial_epochs"]
    tuned_ratio = d["tuned"]["test_accuracy"] / d["default"]["test_accuracy"]
    a["order_replay"] = replay = replay_orders(a)
    n = len(a["grid"]["trials"])
    figures = [
        {
            "figure": f"ASHA best val_accuracy (router, {n} configs)",
            "value": a["asha"]["best"],
            "unit": "accuracy",
            "baseline": "grid: every config to completion",
            "baseline_value": a["grid"]["best"],
            "ratio": best_ratio,
            "goal": f">= {GOALS['best_ratio_min']}x",
            "pass": bool(best_ratio >= GOALS["best_ratio_min"]),
        },
        {
            "figure": "ASHA trial-epochs",
            "value": a["asha"]["trial_epochs"],
            "unit": "trial-epochs",
            "baseline": "grid trial-epochs",
            "baseline_value": a["grid"]["trial_epochs"],
            "ratio": share,
            "goal": f"<= {GOALS['epoch_share_max']}x",
            "pass": bool(share <= GOALS["epoch_share_max"]),
        },
        {
            "figure": "ASHA wall time",
            "value": a["asha"]["seconds"],
            "unit": "s",
            "baseline": "grid wall time",
            "baseline_value": a["grid"]["seconds"],
            "ratio": a["asha"]["seconds"] / a["grid"]["seconds"],
            "goal": None,
            "pass": None,
        },
        {
            "figure": f"ASHA trial-epochs share, replayed on the grid's curves in {replay.get('orders', 0)} random "
            "plan orders (median)",
            "value": replay.get("share_median", float("nan")),
            "unit": "x",
            "baseline": None,
            "baseline_value": None,
            "ratio": None,
            "goal": None,
            "pass": None,
        },
        {
            "figure": f"tuned FastGRNN digits test accuracy ({d['epochs']} epochs)",
            "value": d["tuned"]["test_accuracy"],
            "unit": "accuracy",
            "baseline": "default config (digits.yaml), same epochs",
            "baseline_value": d["default"]["test_accuracy"],
            "ratio": tuned_ratio,
            "goal": ">= 1.0x",
            "pass": bool(tuned_ratio >= 1.0),
        },
    ]
    result = {
        "name": "asha",
        "title": "ASHA vs a full grid (router), tuned vs default FastGRNN (digits)",
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "figures": figures,
        "plots": [plot],
        "method": _method(a, d, n),
        "details": {"asha_vs_grid": a, "tuned_vs_default": d, "goals": GOALS},
    }
    return write_result(result, out_dir)


def _method(a: dict, d: dict, n: int) -> str:
    asha = ", ".join(f"{k} {v}" for k, v in a["asha_settings"].items())
    per_trial = a["asha"]["seconds"] / n
    return (
        f"(a) {a['rows']:,} synthetic routing rows (noise 0.1); router.yaml with a plan of {n} configurations "
        f"(model.hidden_size {a['plan']['model.hidden_size']} x optim.lr {a['plan']['optim.lr']}, values in a "
        f"seeded random order: trials start in plan order, and weak-to-strong order is asynchronous ASHA's worst "
        f"case), {a['epochs']} epochs, early stopping off, one local Ray (2 trials at a time on 2 CPUs). The same "
        f"plan ran twice through pipeline.tune.run_tune: with no scheduler (every trial to {a['epochs']} epochs) "
        f"and under ASHA ({asha}). Best = the best val_accuracy of any kept checkpoint. Trial-epochs = the "
        "epochs each trial's own Train run trained (1 + the epoch of its latest checkpoint), summed: a trial "
        "ASHA stops has trained on while Tune decided, and those epochs count (Tune itself saw "
        f"{a['asha']['reported_epochs']} of ASHA's {a['asha']['trial_epochs']}). Wall time = run_tune's. It is "
        f"dominated by each trial's Ray Train start-up (trial actor, Train controller and its helper actors, "
        f"worker group: each a process that imports its code), not by epochs (about 0.2 s each): ASHA "
        f"took {per_trial:.1f} s per configuration, so its wall-time saving is far below its epoch saving. "
        f"{_replay_text(a.get('order_replay') or {})}"
        f"(b) digits (scikit-learn's 8x8, stratified 75/25): the default digits.yaml config trained once for "
        f"{d['epochs']} epochs (tunestack train), and digits.yaml's search with the same epoch budget: the file's "
        f"tune.points_to_evaluate (the default lr 0.02) first, then {d['num_samples']} draw(s) of lr "
        "(loguniform), each with hidden 32 and 48, under its ASHA (grace = a third of the epochs, the dense "
        "phase). The tuned model is the best trial by val_accuracy; both models are scored on the held-out test "
        "split (evaluate_checkpoint)."
    )


def _replay_text(r: dict) -> str:
    if "share_median" not in r:
        return ""
    return (
        f"Order matters to asynchronous ASHA (early trials pass rungs unopposed): its rule replayed on the "
        f"grid's own curves in {r['orders']} random plan orders, one trial after another, each stopped trial "
        f"charged the measured over-run ({r['overrun_epochs_per_stopped_trial']:.1f} epochs), uses a median "
        f"{r['share_median']:.2f}x of the grid's trial-epochs (90th percentile {r['share_p90']:.2f}x; "
        f"{r['share_pass_fraction']:.0%} of orders meet the goal), best within 2% in "
        f"{r['best_pass_fraction']:.0%}. "
    )


def render(result: dict) -> str:
    lines = [result["title"] + (" (quick)" if result["quick"] else ""), ""]
    for f in result["figures"]:
        verdict = "n/a" if f["pass"] is None else ("PASS" if f["pass"] else "FAIL")
        versus = (
            ""
            if f["baseline_value"] is None
            else f" vs {f['baseline_value']:.4g} ({f['baseline']}) = {f['ratio']:.3f}x"
        )
        lines.append(
            f"{f['figure']}: {f['value']:.4g} {f['unit']}{versus}, goal {f['goal'] or '-'}: {verdict}"
        )
    a = result["details"]["asha_vs_grid"]
    lines += ["", f"{'trial':<22} {'overrides':<44} {'grid best':>9} {'asha best':>9} {'asha epochs':>11}"]
    asha = {json.dumps(t["overrides"], sort_keys=True): t for t in a["asha"]["trials"]}
    for g in a["grid"]["trials"]:
        key = json.dumps(g["overrides"], sort_keys=True)
        t = asha.get(key, {})
        lines.append(
            f"{g['trial']:<22} {key:<44} {g['metric'] or 0:>9.4f} {t.get('metric') or 0:>9.4f} "
            f"{t.get('epochs', 0):>11}"
        )
    lines.append(f"wall {result['seconds']:.0f}s")
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_cli(
        "asha",
        __doc__,
        run,
        render,
        "9 configs (not 24), 8k rows; digits 12 epochs (not 120), 1 draw (not 3)",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
