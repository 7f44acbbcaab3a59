"""The benchmark contract, and the table / SUMMARY.md / BENCHMARKS.md every run is reported in.

Each benchmark is a module `bench/<name>.py` with

    def run(quick: bool = False, out_dir: str = "bench/results") -> dict
    def main(argv=None) -> int      # `python -m bench.<name> [--quick] [--out-dir D]`

`run` writes `<out_dir>/<name>.json` and returns the same JSON-serialisable dict:

    {"name", "title", "seconds", "quick",
     "figures": [{"figure", "value", "unit", "baseline", "baseline_value", "ratio", "goal", "pass"}, …],
     "plots": ["bench/results/<file>.png", …], "method": "how the figures were measured", "details": {…}}

`baseline`, `baseline_value`, `ratio`, `goal` and `pass` may be null (a figure with nothing to
compare against). `check_result` says what a returned dict gets wrong.

    python -m bench.report [--summary bench/results/summary.json] [--repo .]

renders BENCHMARKS.md (and copies the plots into docs/bench/) from an earlier run's summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata

REQUIRED = {
    "name": str,
    "title": str,
    "seconds": (int, float),
    "quick": bool,
    "figures": list,
    "plots": list,
    "method": str,
}
FIGURE_KEYS = ("figure", "value", "unit", "baseline", "baseline_value", "ratio", "goal", "pass")
HEADER = ("benchmark", "figure", "value", "baseline", "ratio", "goal", "result")


def figure(figure, value, unit, baseline=None, baseline_value=None, goal=None, ok=None, ratio=None) -> dict:
    """One entry of a result's `figures`; ratio = value / baseline_value unless given (None without
    a baseline)."""
    if ratio is None and value is not None and baseline_value:
        ratio = value / baseline_value
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "goal": goal,
        "pass": ok,
    }


def write_result(result: dict, out_dir: str) -> dict:
    """Check `result` against the contract and write it as <out_dir>/<name>.json; returns it."""
    problems = check_result(result)
    if problems:
        raise ValueError(f"benchmark result {result.get('name')!r}: {'; '.join(problems)}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{result['name']}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def check_result(result) -> list[str]:
    """What `result` gets wrong against the contract above (empty: nothing)."""
    if not isinstance(result, dict):
        return [f"run() returned {type(result).__name__}, not a dict"]
    problems = [
        f"{key!r} missing or not {t.__name__ if isinstance(t, type) else 'a number'}"
        for key, t in REQUIRED.items()
        if not isinstance(result.get(key), t)
    ]
    for i, fig in enumerate(result.get("figures") or []):
        if not isinstance(fig, dict):
            problems.append(f"figures[{i}] is not a mapping")
            continue
        missing = [k for k in FIGURE_KEYS if k not in fig]
        if missing:
            problems.append(f"figures[{i}] lacks {missing}")
        if not isinstance(fig.get("value"), (int, float)) or isinstance(fig.get("value"), bool):
            problems.append(f"figures[{i}].value is not a number")
        if fig.get("pass") not in (True, False, None):
            problems.append(f"figures[{i}].pass is not true/false/null")
    return problems


def bench_cli(name: str, doc: str, run, render, quick_help: str, argv=None) -> int:
    """`python -m bench.<name> [--quick] [--out-dir D]`: run, print `render(result)`, say where it went."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    print(render(run(quick=args.quick, out_dir=args.out_dir)))
    print(f"wrote {os.path.join(args.out_dir, name + '.json')}")
    return 0


# ---------------------------------------------------------------------------------------------
# The machine


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(repo: str, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", repo, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(repo: str | None = None) -> dict:
    """Cores, memory, GPU (or "none"), versions and the git commit this run measured."""
    import psutil
    import torch

    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return {
        "cpus_logical": os.cpu_count(),
        "cpus_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": ", ".join(gpus) if gpus else "none",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": _version("ray"),
        "torch": _version("torch"),
        "pyarrow": _version("pyarrow"),
        "numpy": _version("numpy"),
        "git_commit": (commit[:12] + ("+uncommitted changes" if dirty else "")) if commit else "unknown",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['cpus_logical']} logical CPUs ({m['cpus_physical']} physical, {m['cpu_model']}), "
        f"{m['memory_gib']} GiB RAM, GPU: {m['gpu']}; Python {m['python']}, Ray {m['ray']}, "
        f"PyTorch {m['torch']}, PyArrow {m['pyarrow']}, NumPy {m['numpy']}; commit {m['git_commit']}"
    )


# ---------------------------------------------------------------------------------------------
# Rows and the table


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100 or (a > 0 and float(v).is_integer()):
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
    return f"{v:.3g}"


def _ratio(ratio, goal: str) -> str:
    """A ratio to 2 decimals, or to 3 where 2 would print the goal's own bound for a value that is not
    it (0.9488 against ">= 0.95x" reads 0.949x, not a failing 0.95x)."""
    if not isinstance(ratio, (int, float)):
        return "-"
    text = f"{ratio:.2f}"
    bounds = {float(b) for b in re.findall(r"(\d+(?:\.\d+)?)x", goal)}  # ">= 1.0x" bounds at 1.00 too
    if float(text) in bounds and float(text) != ratio:
        text = f"{ratio:.3f}"
    return f"{text}x"


def figure_row(name: str, fig: dict) -> tuple[str, ...]:
    unit = f" {fig['unit']}" if fig.get("unit") else ""
    baseline = fig.get("baseline") or "-"
    if fig.get("baseline_value") is not None:
        baseline = f"{_num(fig['baseline_value'])}{unit}: {baseline}"  # the number first: long names get cut
    ratio = _ratio(fig.get("ratio"), str(fig.get("goal") or ""))
    verdict = {True: "PASS", False: "FAIL"}.get(fig.get("pass"), "-")
    return (
        name,
        str(fig["figure"]),
        f"{_num(fig['value'])}{unit}",
        baseline,
        ratio,
        fig.get("goal") or "-",
        verdict,
    )


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    """One row per figure; an errored or skipped benchmark gets one row saying so."""
    rows = []
    for b in summary["benchmarks"]:
        if b["status"] == "ok":
            rows += [figure_row(b["name"], f) for f in b["result"]["figures"]]
            if not b["result"]["figures"]:
                rows.append((b["name"], "(no figures)", "-", "-", "-", "-", "-"))
        elif b["status"] == "error":
            first = b["error"].splitlines()[0] if b["error"] else "error"
            rows.append((b["name"], first, "-", "-", "-", "-", "ERROR"))
        else:
            rows.append((b["name"], b["reason"], "-", "-", "-", "-", "skipped"))
    return rows


def text_table(rows: list[tuple[str, ...]], max_width: int = 70) -> str:
    rows = [tuple(c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r) for r in rows]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    esc = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def counts(summary: dict) -> str:
    figs = [f for b in summary["benchmarks"] if b["status"] == "ok" for f in b["result"]["figures"]]
    status = [b["status"] for b in summary["benchmarks"]]
    return (
        f"{sum(f.get('pass') is True for f in figs)} PASS, {sum(f.get('pass') is False for f in figs)} FAIL, "
        f"{sum(f.get('pass') is None for f in figs)} without a goal; benchmarks: {status.count('ok')} ran, "
        f"{status.count('error')} errored, {status.count('skipped')} skipped"
    )


def print_table(summary: dict, file=None) -> None:
    print(f"machine: {machine_line(summary['machine'])}", file=file)
    print(f"{'quick' if summary['quick'] else 'full'} run, {summary['seconds']:.0f}s\n", file=file)
    print(text_table(table_rows(summary)), file=file)
    print(f"\n{counts(summary)}", file=file)


# ---------------------------------------------------------------------------------------------
# Files


def _plot_path(plot: str, out_dir: str) -> str | None:
    """The plot file on disk: as given (relative to the working directory), else in out_dir."""
    for cand in (plot, os.path.join(out_dir, os.path.basename(plot))):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    return None


def _markdown(summary: dict, plot_link, title: str, preface: list[str]) -> str:
    m = summary["machine"]
    lines = [
        f"# {title}",
        "",
        *preface,
        f"- **Run**: {'quick (`--quick`)' if summary['quick'] else 'full'}, started {summary['started']}, "
        f"{summary['seconds']:.0f} s in all",
        f"- **Machine**: {m['cpus_logical']} logical CPUs ({m['cpus_physical']} physical, {m['cpu_model']}), "
        f"{m['memory_gib']} GiB RAM, GPU: {m['gpu']}, {m['platform']}",
        f"- **Versions**: Python {m['python']}, Ray {m['ray']}, PyTorch {m['torch']}, PyArrow {m['pyarrow']}, "
        f"NumPy {m['numpy']}",
        f"- **Commit**: {m['git_commit']}; load average at the end {m['load_average']}",
        f"- **Result**: {counts(summary)}",
        "",
        markdown_table(table_rows(summary)),
        "",
    ]
    for b in summary["benchmarks"]:
        if b["status"] == "skipped":
            continue
        r = b.get("result") or {}
        lines += [f"## {r.get('title') or b['name']}", "", f"`{b['module']}`, {b['seconds']:.0f} s.", ""]
        if b["status"] == "error":
            lines += [
                "**Error**:",
                "",
                "```",
                b["error"].strip(),
                *([b["log_tail"].rstrip()] if b.get("log_tail") else []),
                "```",
                "",
            ]
        if r.get("method"):
            lines += [f"**Method.** {r['method']}", ""]
        for plot in r.get("plots") or []:
            link = plot_link(plot)
            lines += [
                f"![{os.path.basename(plot)}]({link})" if link else f"(plot {plot} was not written)",
                "",
            ]
    return "\n".join(lines)


def write_summary(summary: dict, out_dir: str) -> None:
    """summary.json and SUMMARY.md (plots linked relative to out_dir) in out_dir."""
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)

    def link(plot):
        path = _plot_path(plot, out_dir)
        return os.path.relpath(path, os.path.abspath(out_dir)) if path else None

    with open(os.path.join(out_dir, "SUMMARY.md"), "w") as f:
        f.write(_markdown(summary, link, "tunestack benchmarks", []))


def write_benchmarks_md(summary: dict, repo: str) -> str:
    """Render `repo`/BENCHMARKS.md from a summary; plots are copied into `repo`/docs/bench/."""
    plot_dir = os.path.join(repo, "docs", "bench")
    os.makedirs(plot_dir, exist_ok=True)

    def link(plot):
        path = _plot_path(plot, summary["out_dir"])
        if path is None:
            return None
        shutil.copyfile(path, os.path.join(plot_dir, os.path.basename(path)))
        return f"docs/bench/{os.path.basename(path)}"

    preface = [
        "Every figure below comes from one run of `tunestack bench --write-benchmarks-md`: each benchmark "
        "measures tunestack and its baseline in the same run, on the machine described here, and reports the "
        "ratio beside the goal. A missed goal says FAIL; nothing here is edited by hand.",
        "",
    ]
    if summary["quick"]:
        preface += [
            "> **This is a quick run** (`--quick`: small sizes). Run `tunestack bench "
            "--write-benchmarks-md` (the full suite) before quoting these figures.",
            "",
        ]
    path = os.path.join(repo, "BENCHMARKS.md")
    with open(path, "w") as f:
        f.write(_markdown(summary, link, "Benchmarks", preface))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.report", description="Render BENCHMARKS.md from summary.json."
    )
    p.add_argument("--summary", default="bench/results/summary.json")
    p.add_argument(
        "--repo", default=".", help="where BENCHMARKS.md and docs/bench/ go (default: %(default)s)"
    )
    args = p.parse_args(argv)
    try:
        with open(args.summary) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        print(f"bench.report: {args.summary}: {e} (run `tunestack bench` first)", file=sys.stderr)
        return 2
    print(f"wrote {write_benchmarks_md(summary, args.repo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
