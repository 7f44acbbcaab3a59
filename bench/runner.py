"""`tunestack bench`: run every benchmark, each in a fresh subprocess, and write one summary.

    tunestack bench [--quick] [--only NAME[,NAME]] [--out-dir bench/results] [--write-benchmarks-md]
    python -m bench.runner …                     (the same, without the installed entry point)

A benchmark is a module `bench/<name>.py` with `run(quick, out_dir) -> dict` (the contract in
bench/report.py's docstring). Each runs in its own Python process: Ray state, thread pools and
peak-memory readings of one benchmark never leak into the next. A module that does not exist or
has no `run` is skipped with a message; one that raises, times out or returns something that does
not follow the contract is an error row, and the others still run. Exit status: 1 when any
benchmark errored, else 0 — a missed goal is a FAIL in the table, not an exit status.

Writes `<out-dir>/summary.json`, `<out-dir>/SUMMARY.md` and one `<name>.log` per benchmark (its
stdout and stderr); the benchmarks write their own `<name>.json` and plots there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.report import check_result, machine, print_table, write_benchmarks_md, write_summary

# The suite, in the order it runs: (name, module).
BENCHMARKS = [
    ("ingest", "bench.ingest"),
    ("streaming", "bench.streaming"),
    ("training", "bench.training"),
    ("models", "bench.models"),
    ("asha", "bench.asha"),
    ("serve", "bench.serve"),
    ("score", "bench.score"),
    ("storage", "bench.storage"),
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_RUN = 3  # the child's exit status when the module has no run()
DEFAULT_TIMEOUT_S = {True: 900, False: 3600}  # per benchmark, quick / full: a stop for a hung run, not a goal


def _child(module: str, quick: bool, out_dir: str, result_file: str) -> int:
    """In the subprocess: import the module, call run(), write its dict as JSON."""
    import importlib

    mod = importlib.import_module(module)
    if not callable(getattr(mod, "run", None)):
        print(f"{module} has no run(quick, out_dir) function", file=sys.stderr)
        return NO_RUN
    result = mod.run(quick=quick, out_dir=out_dir)
    with open(result_file, "w") as f:
        json.dump(result, f, indent=2, allow_nan=True)
    return 0


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and int(entry) != os.getpid():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _end_session(sid: int, grace_s: float = 10.0) -> None:
    """End every process left in the benchmark's session (Ray's daemons and actors set their own
    process groups, so killing the group alone would miss them): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_one(name: str, module: str, quick: bool, out_dir: str, timeout_s: float) -> dict:
    """Run one benchmark in a subprocess; a row for summary.json: status ok | error | skipped."""
    row = {"name": name, "module": module, "status": "skipped", "seconds": 0.0}
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        row["reason"] = f"module {module} does not exist (yet)"
        return row
    log = os.path.join(out_dir, f"{name}.log")
    row["log"] = log
    fd, result_file = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
    os.close(fd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    cmd = [
        sys.executable,
        "-m",
        "bench.runner",
        "--_child",
        module,
        "--_result",
        result_file,
        "--out-dir",
        out_dir,
    ]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    try:
        with open(log, "w") as out:
            # A session of its own, so a timeout can end the benchmark and everything it started.
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            _end_session(proc.pid)  # a timed-out benchmark, or what a finished one left running
            proc.wait()
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if code == NO_RUN:
            row["reason"] = (
                f"{module} has no run(quick, out_dir) (not converted to the benchmark contract yet)"
            )
            return row
        if code is None:
            row.update(status="error", error=f"timed out after {timeout_s:.0f}s (log: {log})")
            return row
        if code != 0:
            tail = _tail(log)
            last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "no output")
            row.update(
                status="error", error=f"{last.strip()} (exit status {code}; log: {log})", log_tail=tail
            )
            return row
        with open(result_file) as f:
            result = json.load(f)
        problems = check_result(result)
        if problems:
            row.update(
                status="error",
                error="result does not follow the contract: " + "; ".join(problems),
                result=result,
            )
            return row
        row.update(status="ok", result=result)
        return row
    finally:
        os.unlink(result_file)


def run_suite(
    benchmarks=None,
    *,
    quick: bool = False,
    only: list[str] | None = None,
    out_dir: str = "bench/results",
    timeout_s: float | None = None,
    echo=print,
) -> dict:
    """Run the suite (or `only` its named members); write summary.json and SUMMARY.md; return the summary."""
    benchmarks = list(benchmarks or BENCHMARKS)
    if only:
        known = [n for n, _ in benchmarks]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; known: {known}")
        benchmarks = [(n, m) for n, m in benchmarks if n in only]
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S[quick]
    os.makedirs(out_dir, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    rows = []
    for name, module in benchmarks:
        echo(f"== {name} ({module}, {'quick' if quick else 'full'}) …", flush=True)
        row = run_one(name, module, quick, out_dir, timeout_s)
        rows.append(row)
        if row["status"] == "skipped":
            echo(f"   skipped: {row['reason']}", flush=True)
        elif row["status"] == "error":
            echo(f"   ERROR after {row['seconds']}s: {row['error']}\n{row.get('log_tail', '')}", flush=True)
        else:
            echo(f"   done in {row['seconds']}s", flush=True)
    summary = {
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "out_dir": out_dir,
        "benchmarks": rows,
    }
    write_summary(summary, out_dir)
    return summary


def add_bench_parser(subparsers) -> None:
    """Add `bench` to the main CLI's subparsers."""
    s = subparsers.add_parser(
        "bench",
        help="run the benchmarks in bench/ against their baselines; one table, JSON and Markdown",
        description="Run each benchmark (" + ", ".join(n for n, _ in BENCHMARKS) + ") in its own process, "
        "print one table of figures, baselines, ratios and goals, and write summary.json and SUMMARY.md "
        "(with the machine's description) to --out-dir. Exit status 1 when a benchmark fails to run; "
        "a missed goal is reported as FAIL.",
    )
    _add_options(s)
    s.set_defaults(func=cmd_bench)


def _add_options(p) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke run of the whole suite, about 10 minutes on 2 cores",
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks")
    p.add_argument("--out-dir", default="bench/results", help="where results go (default: %(default)s)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per benchmark before it is stopped (default 900 quick, 3600 full)",
    )
    p.add_argument(
        "--write-benchmarks-md",
        action="store_true",
        help="also render BENCHMARKS.md (plots copied to docs/bench/) from this run",
    )


def cmd_bench(args) -> int:
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        summary = run_suite(quick=args.quick, only=only, out_dir=args.out_dir, timeout_s=args.timeout)
    except ValueError as e:
        print(f"tunestack bench: {e}", file=sys.stderr)
        return 2
    print()
    print_table(summary)
    print(
        f"\nwrote {os.path.join(args.out_dir, 'summary.json')} and {os.path.join(args.out_dir, 'SUMMARY.md')} "
        f"({summary['seconds']:.0f}s in all)"
    )
    if args.write_benchmarks_md:
        path = write_benchmarks_md(summary, REPO)
        print(f"wrote {path}")
    errors = [r["name"] for r in summary["benchmarks"] if r["status"] == "error"]
    if errors:
        print(
            f"tunestack bench: {len(errors)} benchmark(s) failed to run: {', '.join(errors)}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.split("\n\n")[0])
    _add_options(p)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        return _child(args._child, args.quick, args.out_dir, args._result)
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
