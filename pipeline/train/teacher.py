"""Distillation teachers: found, checked before training starts, and fed their own inputs.

A config's `distill.teacher` names a run, a checkpoint (or export) folder, or a registry version
`FAMILY:vNNNN` (whose files are checked against their sha256 first). `check_teacher` runs on the
driver of `tunestack train` and of every `tunestack tune` trial, before any worker starts: the
teacher must be a classifier family with the student's number of classes and inputs per step
(and, when both have them, the same feature names). In the worker, `TeacherModel` wraps the
teacher so it sees the inputs it was trained on: the batch is normalized with the STUDENT's
normalization, so it is mapped back to raw values and through the TEACHER's own (log1p, z-score).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.train.checkpoint import CheckpointError, load_checkpoint


class TeacherError(ValueError):
    """A distillation teacher that cannot teach this student (named, with the reason)."""


def check_teacher(ref: str, student_config: dict, student_meta: dict) -> str:
    """The teacher's checkpoint folder, after checking it fits the student; TeacherError if not.

    `student_config`: the student's resolved config (model dims filled from the data);
    `student_meta`: its checkpoint metadata (normalization)."""
    from pipeline.models import family

    try:
        teacher = load_checkpoint(ref)
    except CheckpointError as e:
        raise TeacherError(f"distill.teacher: {e}") from e
    t_model, s_model = teacher.config["model"], student_config["model"]
    where = f"distill.teacher {ref!r} ({teacher.path})"
    try:
        distillable = family(t_model["arch"]).distillable
    except ValueError as e:
        raise TeacherError(f"{where}: {e}") from e
    if not distillable:
        raise TeacherError(f"{where}: arch {t_model['arch']!r} has no class logits to distill")
    for key in ("num_classes", "input_size"):
        if t_model.get(key) != s_model.get(key):
            raise TeacherError(
                f"{where}: the teacher has {key}={t_model.get(key)}, the student {s_model.get(key)}"
            )
    t_names = (teacher.meta.get("normalization") or {}).get("features")
    s_names = (student_meta.get("normalization") or {}).get("features")
    if t_names and s_names and list(t_names) != list(s_names):
        raise TeacherError(f"{where}: the teacher's features {t_names} are not the student's {s_names}")
    return teacher.path


def _affine(norm: dict | None, size: int) -> tuple[np.ndarray, np.ndarray, set]:
    if not norm:
        return np.zeros(size), np.ones(size), set()
    return (
        np.asarray(norm["mean"], np.float64),
        np.asarray(norm["std"], np.float64),
        set(norm.get("log1p") or []),
    )


class TeacherModel(torch.nn.Module):
    """The teacher behind the student's inputs: x (student-normalized) → raw → teacher-normalized
    → teacher logits. When both were trained with the same normalization this is the identity."""

    def __init__(self, teacher: torch.nn.Module, student_norm: dict | None, teacher_norm: dict | None):
        super().__init__()
        self.teacher = teacher
        size = teacher.config.input_size
        s_mean, s_std, s_log = _affine(student_norm, size)
        t_mean, t_std, t_log = _affine(teacher_norm, size)
        self.identity = (
            s_log == t_log and np.allclose(s_mean, t_mean, atol=0) and np.allclose(s_std, t_std, atol=0)
        )
        to_log = sorted(t_log - s_log)  # raw in the student's space, log1p'd for the teacher
        from_log = sorted(s_log - t_log)  # log1p'd by the student, raw for the teacher
        for name, value in (
            ("s_mean", s_mean),
            ("s_std", s_std),
            ("t_mean", t_mean),
            ("t_std", t_std),
        ):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)
        self.to_log, self.from_log = to_log, from_log

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        v = x * self.s_std + self.s_mean  # the student's pre-z-score values
        if self.to_log or self.from_log:
            v = v.clone()
            if self.to_log:
                v[..., self.to_log] = torch.log1p(v[..., self.to_log].clamp_min(0.0))
            if self.from_log:
                v[..., self.from_log] = torch.expm1(v[..., self.from_log])
        return (v - self.t_mean) / self.t_std

    def forward(self, x):
        return self.teacher(self.teacher_input(x))


def load_teacher(path: str, student_meta: dict, device) -> TeacherModel:
    """The teacher of `path` on `device` in eval mode, fed through its own normalization."""
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    wrapped = TeacherModel(model, student_meta.get("normalization"), ckpt.meta.get("normalization"))
    return wrapped.to(device).eval()
