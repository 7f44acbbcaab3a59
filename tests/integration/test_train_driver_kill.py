"""Drill: the driver of `tunestack train` is SIGKILLed; `tunestack train --resume` finishes the run
from its last checkpoint.

The run goes in a subprocess with its own local Ray (its own RAY_TMPDIR, so it never joins another
cluster on this machine). The driver alone is SIGKILLed once Ray Train has committed a checkpoint:
its Ray processes are orphaned and left running while the resume starts a fresh cluster (they must
not block it), and are ended by pid when the test is done. (Killing the whole process group is the
easier case: nothing survives to get in the resume's way.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TUNESTACK = [sys.executable, "-m", "pipeline.cli"]
EPOCHS = 60  # epochs of digits take a fraction of a second: enough of them that the kill lands mid-run


def _committed(run_dir: Path, epoch: int) -> bool:
    try:
        return f"checkpoint_epoch{epoch:04d}" in (run_dir / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return False


def _ray_processes(marker: str) -> list:
    """Live processes whose command line names this test's Ray temp dir (so: started by this test)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.ray
@pytest.mark.chaos
def test_sigkilled_driver_resumes_from_last_checkpoint(tmp_path):
    from pipeline.data.sequences import write_digits_npz

    home = tmp_path / "home"
    npz = write_digits_npz(str(home / "digits.npz"))
    ray_tmp = tempfile.mkdtemp(prefix="tsk-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "TUNESTACK_HOME": str(home), "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    overrides = [
        f"data.path={npz}",
        "model.w_sparsity=1.0",
        "model.u_sparsity=1.0",
        "model.hidden_size=16",
        f"train.epochs={EPOCHS}",
        f"schedule.t0={EPOCHS}",
        "train.max_failures=0",
    ]
    cmd = TUNESTACK + ["train", "--config", str(ROOT / "tune_configs" / "digits.yaml"), "--name", "victim"]
    for o in overrides:
        cmd += ["--set", o]
    run_dir = home / "runs" / "victim"
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while not _committed(run_dir, 1):
            assert proc.poll() is None, (
                f"train exited early ({proc.returncode}): {(tmp_path / 'first.log').read_text()[-3000:]}"
            )
            assert time.time() < deadline, "no committed checkpoint within 240 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its Ray processes are orphaned
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not (run_dir / "run.json").exists()  # the run did not finish (only the driver writes it)
        killed_at = max(int(p.name[-4:]) for p in run_dir.glob("checkpoint_epoch*"))
        assert killed_at < EPOCHS - 1, "the run finished before the kill: nothing was left to resume"
        survivors = [(p.pid, " ".join(p.cmdline())[:80]) for p in _ray_processes(ray_tmp)]

        resumed = subprocess.run(
            TUNESTACK + ["train", "--resume", "victim"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        printed = json.loads(resumed.stdout)
        last = load_checkpoint(str(run_dir / f"checkpoint_epoch{EPOCHS - 1:04d}"))
        attempts = last.meta["attempts"]
        print(
            f"killed after checkpoint_epoch{killed_at:04d}; {len(survivors)} Ray process(es) survived the kill {survivors}; "
            f"attempts {attempts}"
        )
        assert [a["start_epoch"] for a in attempts][0] == 0 and len(attempts) == 2, attempts
        assert attempts[1]["start_epoch"] >= 2  # continued after a committed checkpoint, not from epoch 0
        assert last.meta["epoch"] == EPOCHS - 1
        assert json.loads((run_dir / "run.json").read_text())["best_checkpoint"]
        for folder in run_dir.glob(
            "checkpoint_epoch*"
        ):  # the run folder is readable: no half-uploaded checkpoint
            load_checkpoint(str(folder))
        assert printed["test_metrics"]["accuracy"] > 0.5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        for p in _ray_processes(ray_tmp):  # only processes this test started (they name ray_tmp)
            try:
                p.kill()
            except Exception:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
