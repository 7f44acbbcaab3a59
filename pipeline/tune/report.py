"""The end-of-experiment report: a table of trials and a plot of every learning curve.

Curves cut by ASHA end early and are marked with an ×, so the scheduler's decisions are visible
at the rungs where they happened.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath

from pipeline.storage import resolve


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(exp_path: str, trials: list[dict], metric: str, mode: str) -> dict:
    """Write trials.csv, report.md, curves.png and trials.json under `exp_path` (a folder or a
    storage URI); return their paths."""
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

    out = resolve(exp_path)  # a local folder or a storage URI
    table = io.StringIO(newline="")
    csv.writer(table).writerows([header, *rows])
    out.write_bytes_atomic("trials.csv", table.getvalue().encode())
    md = [f"# Experiment {posixpath.basename(out.path)}\n\nBest first by `{metric}` ({mode}).\n\n"]
    md.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    md += ["| " + " | ".join(_fmt(v) for v in r) + " |\n" for r in rows]
    md.append("\n![learning curves](curves.png)\n")
    out.write_bytes_atomic("report.md", "".join(md).encode())
    out.write_bytes_atomic("curves.png", _plot(trials, metric))
    out.write_bytes_atomic("trials.json", json.dumps(trials, indent=2, default=str).encode())
    return {
        "table": out.uri_of("report.md"),
        "csv": out.uri_of("trials.csv"),
        "plot": out.uri_of("curves.png"),
        "rows": rows,
        "header": header,
    }


def _plot(trials: list[dict], metric: str) -> bytes:
    """The learning curves as PNG bytes."""
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
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()
