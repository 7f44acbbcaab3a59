"""Processes of Ray clusters a test starts itself (`ray start --head`, a `tunestack` driver), and
how to end exactly those: every process in the session the test started them in. Never `ray stop`,
which ends every Ray cluster on the machine, the session's shared one included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import REPO  # noqa: F401 (re-exported: where a test's subprocess runs)

VENV_BIN = Path(os.path.abspath(sys.executable)).parent  # the venv running pytest (no realpath: a venv's
# python is a symlink to the system one)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def end_session(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the session leader `proc` (started with start_new_session=True), wait up to `grace`
    seconds, then SIGKILL whatever is left in its session (Ray's actors set their own process
    groups, so killpg alone would miss them)."""
    sid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and session_pids(sid):
        time.sleep(0.5)
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def venv_env(**extra) -> dict:
    """This environment with the venv's bin first on PATH (so a cluster's jobs find `tunestack`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_worker_pids() -> list[int]:
    """Ray Train worker processes of this session's cluster (descendants of this process)."""
    import psutil

    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids
