"""Tuning under faults (issue 6's drills for issue 4's experiments):

- the driver of `tunestack tune` killed with SIGKILL -> `tunestack tune --resume` finishes every
  trial; finished trials are not run again, an interrupted one continues from its checkpoint;
- a Ray Train worker killed during a trial -> the trial continues from its last checkpoint.

`--resume` relies on Ray Tune's own bookkeeping in the experiment folder (experiment_state-*.json,
and tuner.pkl / params.pkl, which Ray writes with cloudpickle); that is Ray's restore state, not a
model artifact: every checkpoint stays safetensors + JSON."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.registry import Registry
from pipeline.synth import synth_routing
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.router_eval import CALIBRATION_KEY
from tests.support.procs import REPO, end_session, train_worker_pids, venv_env

pytestmark = [pytest.mark.ray, pytest.mark.chaos]


def _tune_file(tmp_path: Path, home: Path, plan: dict, **train) -> Path:
    """router.yaml with a fixed learning rate, the given plan, no ASHA (every trial runs out)."""
    raw = yaml.safe_load((REPO / "tune_configs" / "router.yaml").read_text())
    raw["data"]["path"] = str(home / "routing")
    raw["train"].update({"patience": 0, **train})
    raw["search"] = {}
    raw["plan"] = plan
    raw["tune"].update({"num_samples": 1, "asha": None})
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _trial_states(exp: Path) -> dict[str, str]:
    """{trial name: status} from Tune's latest saved experiment state ({} before the first save)."""
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        with open(files[-1]) as f:
            data = json.load(f)
    except (OSError, ValueError):  # being rewritten
        return {}
    states = {}
    for trial_json, _ in data["trial_data"]:
        t = json.loads(trial_json)
        states[f"trial_{t['trial_id']}"] = t["status"]
    return states


def _committed_epochs(run_dir: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has committed for a trial's Train run."""
    try:
        text = (run_dir / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return []
    return sorted({int(e) for e in re.findall(r"checkpoint_epoch(\d{4})", text)})


def _planned_epochs(exp: Path, trial: str) -> int | None:
    try:
        return int(json.loads((exp / trial / "params.json").read_text())["plan"]["train.epochs"])
    except (OSError, ValueError, KeyError):  # not written yet
        return None


def _files(*roots: Path) -> dict[str, tuple]:
    """(mtime_ns, size) of every file under `roots` (results, curves, checkpoints): unchanged means
    nothing was re-run there. Tune rewrites a restored trial's params.json/params.pkl (its
    bookkeeping) with the same content: those are compared by content. So is checkpoint.json,
    less the router calibration the experiment's end adds to its best checkpoint."""
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.name.startswith("params."):
                out[str(p)] = (p.read_bytes(),)
            elif p.name == "checkpoint.json":
                meta = json.loads(p.read_text())
                meta.pop(CALIBRATION_KEY, None)
                out[str(p)] = (json.dumps(meta, sort_keys=True),)
            elif p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


def _tunestack(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=venv_env(TUNESTACK_HOME=home, OMP_NUM_THREADS=1),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_killed_tune_driver_resumes_without_rerunning_finished_trials(tmp_path):
    home = Path(os.environ["TUNESTACK_HOME"])
    synth_routing(str(home / "routing"), rows=4000, seed=1, noise=0.1)
    # 2 trials at once: the short (2-epoch) one finishes while the long (60-epoch) one is mid-run (Tune
    # records a finished trial in its saved state some seconds later: the long one must outlast that)
    config = _tune_file(tmp_path, home, {"train.epochs": [2, 60]})
    exp = home / "runs" / "tune" / "interrupted"
    args = ["tune", "--config", str(config), "--name", "interrupted"]

    driver = _tunestack(args, home, tmp_path / "first.log")
    try:
        deadline = time.time() + 360
        while True:
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.time() < deadline, (
                f"no finished + checkpointed unfinished trial: {_trial_states(exp)}"
            )
            states = _trial_states(exp)
            finished = sorted(t for t, s in states.items() if s == "TERMINATED")
            running = {
                t: (_committed_epochs(exp / "trials" / t), _planned_epochs(exp, t))
                for t, s in states.items()
                if s == "RUNNING"
            }
            # mid-run: a checkpoint past the first epoch, epochs still to go; "trained": its Train
            # run is complete but Tune has not recorded the trial as done yet
            midway = {t: e for t, (e, n) in running.items() if e and n and 1 <= max(e) < n - 1}
            trained = [t for t, (e, n) in running.items() if e and n and max(e) == n - 1]
            if finished and midway:
                before = {t: _files(exp / t, exp / "trials" / t) for t in finished}
                os.kill(driver.pid, signal.SIGKILL)  # the driver, mid-experiment: no cleanup of any kind
                break
            time.sleep(0.5)
    finally:
        # the local Ray it started goes with it at once: given a grace period, its Train workers
        # went on training (and committing checkpoints) for seconds after the driver died, and a
        # trial seen midway could finish before the resume
        end_session(driver, grace=0)
    assert driver.returncode == -signal.SIGKILL

    resumed = _tunestack([*args, "--resume"], home, tmp_path / "resume.log")
    try:
        resumed.wait(timeout=420)
    finally:
        end_session(resumed)
    log = (tmp_path / "resume.log").read_text()
    assert resumed.returncode == 0, log[-4000:]

    states = _trial_states(exp)
    assert len(states) == 2 and set(states.values()) == {"TERMINATED"}, states  # every trial accounted for
    for t in finished:  # not re-run: not one of their files was touched
        assert _files(exp / t, exp / "trials" / t) == before[t], t
    for t in states:  # every trial trained all its epochs
        overrides = json.loads((exp / t / "params.json").read_text())["plan"]
        assert _committed_epochs(exp / "trials" / t)[-1] == overrides["train.epochs"] - 1, t
    for t in trained:  # complete before the kill: resumed without training again
        last = exp / "trials" / t / f"checkpoint_epoch{_committed_epochs(exp / 'trials' / t)[-1]:04d}"
        assert len(load_checkpoint(str(last)).meta["attempts"]) == 1, t
    for t, epochs in midway.items():  # the interrupted ones continued from their checkpoint
        last = exp / "trials" / t / f"checkpoint_epoch{_committed_epochs(exp / 'trials' / t)[-1]:04d}"
        attempts = load_checkpoint(str(last)).meta["attempts"]
        assert len(attempts) == 2 and attempts[0]["start_epoch"] == 0, attempts
        assert attempts[1]["start_epoch"] >= max(epochs) + 1, (attempts, epochs)

    assert Registry().versions("router") == ["v0001"]
    rec = Registry().get("router", "v0001")
    assert rec["version"] == "v0001" and Registry().verify() == []
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    assert len(rows) == 2 and all(not r["error"] for r in rows), rows
    assert all(int(r["epochs"]) == int(r["train.epochs"]) for r in rows), (
        rows
    )  # whole learning curves reported
    best = max(float(r["best val_accuracy"]) for r in rows)
    assert rec["metrics"]["val_accuracy"] == pytest.approx(best)


def test_killed_train_worker_continues_the_trial_from_its_checkpoint(ray_cluster, tmp_path):
    from pipeline.tune.run import run_tune

    home = Path(os.environ["TUNESTACK_HOME"])
    synth_routing(str(home / "routing"), rows=4000, seed=1, noise=0.1)
    config = _tune_file(tmp_path, home, {"model.hidden_size": [16]}, epochs=6, max_failures=1)
    exp = home / "runs" / "tune" / "worker-killed"
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=run_tune(str(config), name="worker-killed")))
    thread.start()
    try:
        deadline = time.time() + 240
        killed = []
        while not killed and time.time() < deadline:
            runs = list((exp / "trials").glob("trial_*"))
            if runs and 1 in _committed_epochs(runs[0]):
                killed = train_worker_pids()
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        thread.join(timeout=360)
    assert killed, "no checkpoint_epoch0001 in time"
    assert "result" in out, "the experiment did not finish after its Train worker was killed"
    (trial,) = out["result"].trials
    assert trial["error"] is None and trial["checkpoint"], trial
    last = sorted((exp / "trials" / trial["trial"]).glob("checkpoint_epoch*"))[-1]
    assert last.name == "checkpoint_epoch0005"
    attempts = load_checkpoint(str(last)).meta["attempts"]
    assert [a["start_epoch"] > 0 for a in attempts] == [False, True], attempts
    assert attempts[1]["start_epoch"] >= 2  # continued after checkpoint_epoch0001, not from scratch
    assert out["result"].registered["version"] == "v0001"
