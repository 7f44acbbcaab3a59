"""The end-of-experiment report: a table of trials and a plot of every learning curve.

Curves cut by ASHA end early and are marked with an ×, so the scheduler's decisions are visible
at the rungs where they happened.
"""

from __future__ import annotations

import csv
import json
import os


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(exp_path: str, trials: list[dict], metric: str, mode: str) -> dict:
    """Write trials.csv, report.md and curves.png under `exp_path`; return their paths."""
    os.makedirs(exp_path, exist_ok=True)
    keys = sorted({k for t in trials for k in t["overrides"]})
    ranked = sorted(
        trials,
        key=lambda t: (t["metric"] is None, -(t["metric"] or 0) if mode == "max" else (t["metric"] or 0)),
    )
    header = ["trial", *keys, f"best {metric}", f"final {metric}", "epochs", "stopped early", "error"]
    rows = [
        [
            t["trial"],
            *(t["overrides"].get(k) for k in keys),
            t["metric"],
            t["final_metric"],
            t["epochs"],
            "yes" if t["stopped_early"] else "no",
            (t["error"] or "")[:80],
        ]
        for t in ranked
    ]

    csv_path = os.path.join(exp_path, "trials.csv")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    md_path = os.path.join(exp_path, "report.md")
    with open(md_path, "w") as f:
        f.write(f"# Experiment {os.path.basename(exp_path)}\n\nBest first by `{metric}` ({mode}).\n\n")
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in rows:
            f.write("| " + " | ".join(_fmt(v) for v in r) + " |\n")
        f.write("\n![learning curves](curves.png)\n")
    png_path = os.path.join(exp_path, "curves.png")
    _plot(png_path, trials, metric)
    with open(os.path.join(exp_path, "trials.json"), "w") as f:
        json.dump(trials, f, indent=2, default=str)
    return {"table": md_path, "csv": csv_path, "plot": png_path, "rows": rows, "header": header}


def _plot(path: str, trials: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for t in trials:
        h = t["history"]
        if not h:
            continue
        epochs = list(range(1, len(h) + 1))
        (line,) = ax.plot(epochs, h, lw=1.4, alpha=0.85, label=t["trial"] if len(trials) <= 12 else None)
        if t["stopped_early"]:
            ax.plot(epochs[-1], h[-1], marker="x", ms=9, mew=2, color=line.get_color())
    ax.set_xlabel("epoch (training iteration)")
    ax.set_ylabel(metric)
    ax.set_title(f"{len(trials)} trials — × marks a trial stopped early by ASHA")
    ax.grid(alpha=0.3)
    if len(trials) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
