"""Distillation teachers (pipeline.train.teacher): the teacher sees its own normalization, and a
teacher that cannot teach the student is refused with a reason before training starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.sequences import fit_zscore
from pipeline.models import build_model
from pipeline.train.checkpoint import save_checkpoint
from pipeline.train.teacher import TeacherError, TeacherModel, check_teacher, load_teacher

FEATURES = ["a", "count", "c"]


def _raw(n=256):
    rng = np.random.default_rng(0)
    return np.stack([rng.normal(3, 2, n), rng.lognormal(1, 1, n), rng.uniform(-1, 1, n)], axis=1).astype(
        np.float32
    )


def test_teacher_sees_its_own_normalization():
    raw = _raw()
    student = fit_zscore(raw, FEATURES, log1p=[1])  # the student log1p's the count …
    teacher_norm = fit_zscore(raw[:100] * 1.0, FEATURES)  # … the teacher did not, on other rows
    torch.manual_seed(0)
    model = build_model("sequence_classifier", input_size=3, hidden_size=4, num_classes=2).eval()
    wrapped = TeacherModel(model, student.to_dict(), teacher_norm.to_dict())
    x = torch.from_numpy(student.apply(raw))
    # float32 through z-score, expm1 and z-score again: 1e-4 relative covers the rounding
    np.testing.assert_allclose(
        wrapped.teacher_input(x).numpy(), teacher_norm.apply(raw), rtol=1e-4, atol=1e-4
    )
    with torch.inference_mode():
        want = model(torch.from_numpy(teacher_norm.apply(raw)))
        torch.testing.assert_close(wrapped(x), want, rtol=1e-4, atol=1e-4)
    same = TeacherModel(model, student.to_dict(), student.to_dict())
    assert same.identity and same.teacher_input(x) is x
    none = TeacherModel(model, None, teacher_norm.to_dict())  # student not normalized: x is raw
    np.testing.assert_allclose(
        none.teacher_input(torch.from_numpy(raw)).numpy(), teacher_norm.apply(raw), rtol=1e-5, atol=1e-5
    )


def _teacher_ckpt(tmp_path, name="t", **model):
    params = dict(cell="gru", input_size=3, hidden_size=4, num_classes=2) | model
    m = build_model("sequence_classifier", **params)
    norm = fit_zscore(_raw(), FEATURES).to_dict()
    cfg = {"model": {"arch": "sequence_classifier", **params}}
    return save_checkpoint(str(tmp_path / name), m, {"config": cfg, "normalization": norm})


def test_check_teacher_refuses_what_cannot_teach(tmp_path):
    ok = _teacher_ckpt(tmp_path)
    student = {"model": {"arch": "sequence_classifier", "input_size": 3, "num_classes": 2}}
    meta = {"normalization": fit_zscore(_raw(), FEATURES).to_dict()}
    assert check_teacher(ok, student, meta) == ok
    with pytest.raises(TeacherError, match="input_size=3, the student 5"):
        check_teacher(ok, {"model": {**student["model"], "input_size": 5}}, meta)
    with pytest.raises(TeacherError, match="num_classes=2, the student 4"):
        check_teacher(ok, {"model": {**student["model"], "num_classes": 4}}, meta)
    other = {"normalization": fit_zscore(_raw(), ["x", "y", "z"]).to_dict()}
    with pytest.raises(TeacherError, match=r"features \['a', 'count', 'c'\] are not the student's"):
        check_teacher(ok, student, other)
    with pytest.raises(TeacherError, match="distill.teacher: nope: not a checkpoint folder"):
        check_teacher("nope", student, meta)
    ae = build_model("autoencoder", input_dim=4, hidden=[4], latent_dim=2)
    bad = save_checkpoint(
        str(tmp_path / "ae"),
        ae,
        {"config": {"model": {"arch": "autoencoder", "input_dim": 4, "hidden": [4], "latent_dim": 2}}},
    )
    with pytest.raises(TeacherError, match="arch 'autoencoder' has no class logits"):
        check_teacher(bad, student, meta)
    loaded = load_teacher(ok, meta, torch.device("cpu"))
    assert isinstance(loaded, TeacherModel) and not loaded.training and loaded.identity
