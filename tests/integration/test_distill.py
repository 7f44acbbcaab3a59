"""Distillation everywhere: `tunestack tune` with a `distill:` section (tune_configs/digits-distill.yaml)
completes on a real Ray cluster with a teacher named by registry version (sha256-checked), and a
teacher that cannot teach the student is refused before any trial starts.

Lean on purpose: a 1-epoch GRU teacher, 2-epoch students, one sample per grid point.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.sequences import write_digits_npz
from pipeline.registry import Registry
from pipeline.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tune_configs"


def test_tune_with_distill_completes_and_bad_teachers_fail_first(ray_cluster, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.train.run import train
    from pipeline.train.teacher import TeacherError
    from pipeline.tune.run import run_tune

    home = tmp_path / "home"
    monkeypatch.setenv("TUNESTACK_HOME", str(home))
    write_digits_npz(str(home / "digits.npz"))
    teacher = train(
        load_config(CONFIGS / "digits-gru.yaml", ["train.epochs=1", "schedule.t0=1", "model.hidden_size=16"]),
        run_name="digits-gru-teacher",
    )
    ckpt = load_checkpoint(teacher.best_checkpoint)
    reg = Registry()
    reg.register("digits-gru", teacher.best_checkpoint, config=ckpt.config, metrics={})

    short = [
        "train.epochs=2",
        "schedule.t0=2",
        "tune.asha=null",
        "tune.num_samples=1",
        "distill.teacher=digits-gru:v0001",  # by registry version
    ]
    out = run_tune(str(CONFIGS / "digits-distill.yaml"), name="distill", overrides=short)
    assert len(out.trials) == 2 and all(t["error"] is None for t in out.trials), [
        t["error"] for t in out.trials
    ]
    assert {t["overrides"]["distill.alpha"] for t in out.trials} == {0.5, 0.9}
    best = load_checkpoint(out.registered["checkpoint"])
    assert best.config["distill"]["teacher"] == "digits-gru:v0001"
    assert best.config["model"]["cell"] == "fastgrnn" and out.best["metric"] > 0.2  # 10 classes: chance 0.1

    # a damaged teacher version is refused (sha256), before any trial runs
    weights = Path(reg.get("digits-gru", "v0001")["path"]) / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(TeacherError, match="fails its sha256"):
        run_tune(str(CONFIGS / "digits-distill.yaml"), name="distill-bad", overrides=short)
    # a teacher with other classes cannot teach this student
    from pipeline.train.teacher import check_teacher

    student = load_config(CONFIGS / "digits-distill.yaml").to_dict()
    student["model"]["num_classes"] = 3
    with pytest.raises(TeacherError, match="num_classes=10, the student 3"):
        check_teacher("digits-gru-teacher", student, {})
    assert not (Path(out.path).parent / "distill-bad" / "trials").exists()
