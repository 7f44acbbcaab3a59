"""Worked example for the README's "Add a third model family": a tiny family added through the
real hooks, validated by the real config schema, trained one epoch with the training loop's own
pieces, checkpointed, reloaded and evaluated by the real loader and `evaluate_checkpoint`.

The family: PooledMLP — project each step, ReLU, average over time, linear head. To ship a family
for real, put its module in pipeline/models/ and its lines in FAMILIES / DATA_SOURCES (and a Task
in pipeline/train/tasks.py's TASKS when no existing Task fits): Ray Train workers import
pipeline.models afresh, so a family registered at run time, as here, exists only in this process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn

import pipeline.models as models
from pipeline.config import ConfigError, config_from_dict
from pipeline.data.sequences import load_sequence_data, write_digits_npz
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.loop import cfg_model, make_optimizer, make_scheduler, make_task
from pipeline.train.run import evaluate_checkpoint, fill_model_dims
from pipeline.train.tasks import TASKS, ClassificationTask, accumulate

ARCH = "pooled_mlp"


# ---- step 1: a config dataclass that validates itself, and an nn.Module built from it ----------
@dataclass
class PooledMLPConfig:
    input_size: int = 8  # features per step (filled from the data)
    hidden_size: int = 32
    num_classes: int = 2  # filled from the data
    dropout: float = 0.0

    def __post_init__(self):
        for name, low in (("input_size", 1), ("hidden_size", 1), ("num_classes", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class PooledMLP(nn.Module):
    """[B, T, input_size] (or [B, input_size]) -> logits [B, num_classes]."""

    def __init__(self, config: PooledMLPConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.input_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.dropout(torch.relu(self.proj(x)).mean(dim=1)))


# ---- step 2: register it (model registry + the data sources it trains on + its Task) ------------
@pytest.fixture
def family(monkeypatch):
    """Register the family for one test; the shipped registries are restored afterwards."""
    for name in ("FAMILIES", "MODEL_CONFIGS", "DATA_SOURCES"):
        monkeypatch.setattr(models, name, dict(getattr(models, name)))
    models.register_family(ARCH, PooledMLPConfig, PooledMLP, sources=("sequences",))
    monkeypatch.setitem(TASKS, ARCH, ClassificationTask)  # classification: the existing Task fits


@pytest.fixture
def digits(tmp_path) -> str:
    return write_digits_npz(str(tmp_path / "digits.npz"), seed=0)


def config_dict(path: str, **model) -> dict:
    """What tune_configs/pooled.yaml would hold."""
    return {
        "name": "pooled",
        "data": {"source": "sequences", "path": path, "val_fraction": 0.1},
        "model": {"arch": ARCH, "hidden_size": 32, **model},
        "optim": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "none"},
        "train": {"epochs": 1, "batch_size": 32, "monitor": "val_accuracy", "mode": "max"},
    }


# ---- step 3: the config schema knows it -------------------------------------------------------
def test_config_schema_validates_the_new_family(family, digits):
    cfg = config_from_dict(config_dict(digits), "pooled.yaml")
    assert cfg.model.arch == ARCH and cfg.model.params == {"hidden_size": 32}
    with pytest.raises(ConfigError, match=r"pooled.yaml: model.hidden: unknown key for arch 'pooled_mlp'"):
        config_from_dict(config_dict(digits, hidden=[8]), "pooled.yaml")
    with pytest.raises(ConfigError, match=r"model.dropout: dropout must be in \[0, 1\)"):
        config_from_dict(config_dict(digits, dropout=1.5), "pooled.yaml")
    bad_source = {**config_dict(digits), "data": {"source": "triplets"}}
    with pytest.raises(ConfigError, match=r"model.arch: arch 'pooled_mlp' trains on data.source 'sequences'"):
        config_from_dict(bad_source, "pooled.yaml")


def test_unregistered_arch_is_refused_by_name(digits):
    with pytest.raises(ConfigError, match=r"model.arch: unknown arch 'pooled_mlp'"):
        config_from_dict(config_dict(digits), "pooled.yaml")


# ---- step 4: train one epoch with the loop's pieces, checkpoint, reload, evaluate ---------------
def test_train_one_epoch_checkpoint_reload_and_evaluate(family, digits, tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict(config_dict(digits), "pooled.yaml")
    data = load_sequence_data(
        digits,
        test_fraction=cfg.data.test_fraction,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.train.seed,
        normalize=cfg.data.normalize,
    )
    cfg = fill_model_dims(cfg, {"input_size": data.input_size, "num_classes": data.num_classes})
    assert dataclasses.asdict(cfg.family_config()) == {
        "input_size": 8,
        "hidden_size": 32,
        "num_classes": 10,
        "dropout": 0.0,
    }
    device = torch.device("cpu")
    model = cfg_model(cfg)
    task = make_task(cfg, {}, device)
    optimizer = make_optimizer(cfg, model.parameters())
    assert make_scheduler(cfg, optimizer) is None and isinstance(optimizer, torch.optim.AdamW)

    def val_metrics():
        model.eval()
        x, y = torch.from_numpy(data.val.x), torch.from_numpy(data.val.y)
        return task.finalize(accumulate(task, model, [{"x": x, "y": y}]))

    before = val_metrics()
    model.train()
    order = np.random.default_rng(0).permutation(len(data.train))
    for i in range(0, len(order), cfg.train.batch_size):  # one epoch, as the worker loop steps it
        rows = order[i : i + cfg.train.batch_size]
        batch = {"x": torch.from_numpy(data.train.x[rows]), "y": torch.from_numpy(data.train.y[rows])}
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
    after = val_metrics()
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.35 > before["accuracy"]  # 10 classes: chance is 0.1; one epoch gives ~0.5

    ckpt = str(tmp_path / "checkpoint_epoch0000")
    meta = {
        "config": cfg.to_dict(),
        "epoch": 0,
        "metrics": {f"val_{k}": v for k, v in after.items()},
        "normalization": data.normalization.to_dict(),
        "store": None,
        "fingerprint": {"kind": "sequences", **data.fingerprint},
    }
    save_checkpoint(ckpt, model, meta, optimizer)
    loaded = load_checkpoint(ckpt)
    assert loaded.config["model"]["arch"] == ARCH
    reloaded = loaded.build_model()
    assert isinstance(reloaded, PooledMLP)
    model.eval()
    x = torch.from_numpy(data.test.x[:64])
    torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    assert loaded.optimizer_state()["state"]  # Adam moments came back too

    test = evaluate_checkpoint(ckpt, digits, split="test")  # re-reads, re-splits and re-normalizes
    expected = task.finalize(
        accumulate(task, model, [{"x": torch.from_numpy(data.test.x), "y": torch.from_numpy(data.test.y)}])
    )
    assert test["rows"] == len(data.test)
    assert test["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
