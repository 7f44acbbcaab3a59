"""Peak memory of a benchmark child and the Ray processes it starts, sampled from outside.

A memory benchmark runs its pass in a fresh child process that prints READY once its Ray is up,
waits for a line on stdin (the parent has taken the idle baseline), runs, and prints
`RESULT {json}`. `watch_child` does the parent's half: the idle tree, the peaks while the pass
runs, and the child's result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import psutil

SAMPLE_EVERY_S = 0.05
MIB = 1024**2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_child(args: list[str], log_path: str, attempts: int = 3) -> subprocess.Popen:
    """`python -m ARGS` in a fresh process (never joining $RAY_ADDRESS), once it has printed READY;
    its stderr goes to `log_path`. A loaded machine can time out Ray's start-up (its raylet waits
    a fixed time for its agents): tried `attempts` times."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for _ in range(attempts):
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=REPO,
            )
        if proc.stdout.readline().strip() == "READY":
            return proc
        proc.kill()
        proc.wait()
    with open(log_path) as f:
        tail = f.read()[-2000:]
    raise RuntimeError(f"benchmark child did not start Ray ({attempts} attempts):\n{tail}")


def tree_memory(root: psutil.Process, pss: bool = True) -> dict:
    """RSS and PSS summed over `root` and its descendants, the root's own RSS, the process count.
    PSS reads each process's smaps (about 3 ms a Ray process: 27 ms for a local Ray's tree);
    without `pss` only RSS is read (statm, about 0.2 ms a process) and "pss" is 0."""
    rss = pss_sum = driver_rss = procs = 0
    for p in [root] + root.children(recursive=True):
        try:
            info = p.memory_full_info() if pss else p.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss_sum += getattr(info, "pss", info.rss) if pss else 0
        procs += 1
        if p.pid == root.pid:
            driver_rss = info.rss
    return {"rss": rss, "pss": pss_sum, "driver_rss": driver_rss, "procs": procs}


def sample_until(root: psutil.Process, done, pss_every_s: float = SAMPLE_EVERY_S) -> tuple[dict, int]:
    """Sample the tree under `root` every SAMPLE_EVERY_S until `done()`: (peaks, samples). PSS is
    read every `pss_every_s` only: a benchmark that times the run it samples keeps the sampler's
    own CPU (half a core for a Ray tree sampled fully every 50 ms) out of the machine it measures."""
    peak = {"rss": 0, "pss": 0, "driver_rss": 0, "procs": 0}
    samples, last_pss = 0, -math.inf
    while not done():
        t = time.perf_counter()
        with_pss = t - last_pss >= pss_every_s
        m = tree_memory(root, pss=with_pss)
        last_pss = t if with_pss else last_pss
        samples += 1
        for k in peak:
            peak[k] = max(peak[k], m[k])
        time.sleep(max(0.0, SAMPLE_EVERY_S - (time.perf_counter() - t)))
    return peak, samples


def watch_child(proc: subprocess.Popen) -> dict:
    """For a child that has printed READY: take the idle tree, start the pass, sample the tree
    until the child's RESULT; the result with the idle and peak figures (MiB)."""
    root = psutil.Process(proc.pid)
    idle = tree_memory(root)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result: dict = {}

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result.update(json.loads(line[7:]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak, samples = sample_until(root, lambda: bool(result) or proc.poll() is not None)
    peak = {k: max(v, idle[k]) for k, v in peak.items()}
    proc.wait(timeout=120)
    reader.join(timeout=5)
    if not result:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode})")
    return {
        **result,
        "samples": samples,
        "idle_tree_rss_mib": idle["rss"] / MIB,
        "idle_tree_pss_mib": idle["pss"] / MIB,
        "peak_tree_rss_mib": peak["rss"] / MIB,
        "peak_tree_pss_mib": peak["pss"] / MIB,
        "peak_driver_rss_mib": peak["driver_rss"] / MIB,
        "max_processes": peak["procs"],
    }
