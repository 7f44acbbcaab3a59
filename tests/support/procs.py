"""Processes of Ray clusters a test starts itself (`ray start --head`, a `tunestack` driver), and
how to end exactly those: every process in the session the test started them in. Never `ray stop`,
which ends every Ray cluster on the machine, the session's shared one included."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


def end_session(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the session leader `proc` (started with start_new_session=True), wait up to `grace`
    seconds, then SIGKILL whatever is left in its session (Ray's actors set their own process
    groups, so killpg alone would miss them). A test ends its own processes here, nothing that
    must shut down cleanly: a Ray node that has not stopped after 5 s (some of its workers outlive
    a SIGTERM by far longer) is killed rather than waited for."""
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


class RayHead:
    """`ray start --head --block` on free ports, dashboard on 127.0.0.1, its own Ray temp dir, in
    its own process session: `stop()` ends exactly its processes. Ray gives a new node 30 s to
    register with its GCS; on a loaded machine that can pass, and the node is started again.

    `env` is the node's environment (HOME holds its ~/.ray/auth_token: with RAY_AUTH_MODE=token
    in it, clients need the same HOME and RAY_AUTH_MODE); `address` and `dashboard` say where it is."""

    def __init__(self, log: Path, env: dict, num_cpus: int = 2, attempts: int = 3):
        from tests.support import free_ports

        gcs, dash, client, agent, agent_grpc = free_ports(5)
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths
        self.address, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        self.log, self.proc = log, None
        args = ["--head", "--block", "--port", gcs, "--num-cpus", num_cpus, "--disable-usage-stats"]
        args += [
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            dash,
            "--ray-client-server-port",
            client,
        ]
        args += ["--dashboard-agent-listen-port", agent, "--dashboard-agent-grpc-port", agent_grpc]
        args += ["--temp-dir", self.temp_dir]
        for _ in range(attempts):
            start = log.stat().st_size if log.exists() else 0
            with open(log, "a") as out:
                proc = subprocess.Popen(
                    [str(VENV_BIN / "ray"), "start", *map(str, args)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if "Ray runtime started" in log.read_text()[start:]:  # registered with its GCS
                    self.proc = proc
                    return
                time.sleep(0.5)
            end_session(proc)
        raise RuntimeError(f"ray start --head did not come up ({attempts} tries):\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            end_session(self.proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
