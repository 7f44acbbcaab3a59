"""Worked example for the README's "Add a third model family": a toy family that is one module
(tests/families/pooled_mlp.py) plus one config (tests/families/pooled.yaml), nothing else. Here it
is validated by the real config schema, trained through the shared training step
(pipeline.train.step.Stepper, the one the Ray loop runs), checkpointed, reloaded and evaluated
by the real loader and `evaluate_checkpoint`. tests/integration/test_third_family_ray.py trains it
through the real Ray Train loop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, config_from_dict, load_config
from pipeline.data.sequences import load_sequence_data, write_digits_npz
from pipeline.models import DATA_SOURCES, MODEL_CONFIGS, REGISTRY, family
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.loop import cfg_model, make_task
from pipeline.train.run import evaluate_checkpoint, fill_model_dims
from pipeline.train.step import Stepper
from pipeline.train.tasks import TASKS, ClassificationTask, accumulate
from tests.families.pooled_mlp import PooledMLP

ARCH = "tests.families.pooled_mlp"
CONFIG = Path(__file__).resolve().parents[1] / "families" / "pooled.yaml"


@pytest.fixture(autouse=True)
def _forget_the_family():
    """Naming the module registers the family for the process: unregister it after each test."""
    yield
    REGISTRY.pop(ARCH, None)


@pytest.fixture
def digits(tmp_path) -> str:
    return write_digits_npz(str(tmp_path / "digits.npz"), seed=0)


def config_dict(path: str, **model) -> dict:
    raw = load_config(CONFIG, [f"data.path={path}"]).to_dict()
    raw["model"] = {**raw["model"], **model}
    return raw


def test_every_table_derives_from_the_descriptor(digits):
    load_config(CONFIG, [f"data.path={digits}"])  # naming the module registers its family
    fam = family(ARCH)
    assert REGISTRY[ARCH] is fam and fam.model is PooledMLP
    assert MODEL_CONFIGS[ARCH] is fam.config and DATA_SOURCES[ARCH] == ("sequences",)
    assert TASKS[ARCH] is ClassificationTask
    from serve.models import PREDICTORS

    assert ARCH not in PREDICTORS  # it declares no Serve predictor
    # the shipped families are found by themselves in pipeline/models
    assert {"sequence_classifier", "autoencoder"} <= set(REGISTRY)
    assert TASKS["autoencoder"].__name__ == "AutoencoderTask"


def test_config_schema_validates_the_new_family(digits):
    cfg = config_from_dict(config_dict(digits), "pooled.yaml")
    assert cfg.model.arch == ARCH and cfg.model.params == {"hidden_size": 32}
    with pytest.raises(ConfigError, match=r"pooled.yaml: model.hidden: unknown key for arch"):
        config_from_dict(config_dict(digits, hidden=[8]), "pooled.yaml")
    with pytest.raises(ConfigError, match=r"model.dropout: dropout must be in \[0, 1\)"):
        config_from_dict(config_dict(digits, dropout=1.5), "pooled.yaml")
    bad_source = {**config_dict(digits), "data": {"source": "triplets"}}
    with pytest.raises(
        ConfigError, match=r"model.arch: arch '.*pooled_mlp' trains on data.source 'sequences'"
    ):
        config_from_dict(bad_source, "pooled.yaml")


def test_unknown_arch_is_refused_by_name(digits):
    raw = config_dict(digits)
    raw["model"]["arch"] = "pooled_mlp"  # not in pipeline/models, not a module path
    with pytest.raises(ConfigError, match=r"model.arch: unknown arch 'pooled_mlp'"):
        config_from_dict(raw, "pooled.yaml")
    raw["model"]["arch"] = "tests.families.no_such_module"
    with pytest.raises(ConfigError, match=r"model.arch: arch 'tests.families.no_such_module': cannot import"):
        config_from_dict(raw, "pooled.yaml")
    raw["model"]["arch"] = "tests.families"  # a module without FAMILY
    with pytest.raises(ConfigError, match=r"defines no FAMILY"):
        config_from_dict(raw, "pooled.yaml")


def test_train_one_epoch_checkpoint_reload_and_evaluate(digits, tmp_path):
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
    model = cfg_model(cfg)
    task = make_task(cfg, {}, torch.device("cpu"))
    stepper = Stepper.for_config(cfg, model, task)  # the step the Ray loop and the bench loop run
    assert stepper.scheduler is None and isinstance(stepper.optimizer, torch.optim.AdamW)

    def val_metrics():
        model.eval()
        x, y = torch.from_numpy(data.val.x), torch.from_numpy(data.val.y)
        return task.finalize(stepper.eval_sums([{"x": x, "y": y}]))

    before = val_metrics()
    model.train()
    order = np.random.default_rng(0).permutation(len(data.train))
    for i in range(0, len(order), cfg.train.batch_size):  # one epoch
        rows = order[i : i + cfg.train.batch_size]
        stepper.step({"x": torch.from_numpy(data.train.x[rows]), "y": torch.from_numpy(data.train.y[rows])})
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
    save_checkpoint(ckpt, model, meta, stepper.optimizer)
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
