"""The config schema: shipped configs load, errors name the key and the file, overrides are typed."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, apply_overrides, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "tune_configs").glob("*.yaml"))


def test_the_three_configs_ship():
    assert {p.name for p in SHIPPED} >= {"router.yaml", "autoencoder.yaml", "digits.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    cfg.model_config()  # the model family accepts it too
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and f"tunestack train --config tune_configs/{path.name}" in first
    # the resolved config round-trips through the JSON saved beside checkpoints
    assert config_from_dict(cfg.to_dict()) == cfg


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


BASE = """
data: {source: sequences, path: x.npz}
model: {arch: sequence_classifier, input_size: 8, num_classes: 10}
"""


@pytest.mark.parametrize(
    "extra,key",
    [
        ("colour: blue\n", "colour"),
        ("optim: {lr: 0.1, momentum: 0.9}\n", "optim.momentum"),
        ("train: {epoch: 3}\n", "train.epoch"),
        ("tunes: {num_samples: 4}\n", "tunes"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, extra, key):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key and str(path) in str(err.value) and key in str(err.value)


def test_unknown_model_key_names_key_and_file(tmp_path):
    path = _write(
        tmp_path,
        "data: {source: sequences, path: x.npz}\nmodel: {arch: sequence_classifier, hidden_sise: 8}\n",
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.hidden_sise: unknown key"):
        load_config(path)


@pytest.mark.parametrize(
    "extra,key",
    [
        ("train: {epochs: ten}\n", "train.epochs"),
        ("train: {epochs: 2.5}\n", "train.epochs"),
        ("optim: {lr: fast}\n", "optim.lr"),
        ("optim: {betas: [0.9, high]}\n", "optim.betas[1]"),
        ("data: {source: sequences, path: 3}\n", "data.path"),
        ("train: {amp: 1}\n", "train.amp"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, extra, key):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key and str(path) in str(err.value)


def test_wrong_model_type_and_range(tmp_path):
    path = _write(
        tmp_path,
        "data: {source: sequences, path: x.npz}\nmodel: {arch: sequence_classifier, hidden_size: 1.5}\n",
    )
    with pytest.raises(ConfigError, match=r"model\.hidden_size: expected int"):
        load_config(path)
    path = _write(
        tmp_path,
        "data: {source: sequences, path: x.npz}\nmodel: {arch: sequence_classifier, w_sparsity: 1.5}\n",
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.w_sparsity"):
        load_config(path)


def test_bad_values_and_mismatched_arch(tmp_path):
    with pytest.raises(ConfigError, match="schedule.name"):
        load_config(_write(tmp_path, BASE + "schedule: {name: linear}\n"))
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(_write(tmp_path, "data: {source: triplets}\nmodel: {arch: sequence_classifier}\n"))
    with pytest.raises(ConfigError, match="data: section is required"):
        load_config(_write(tmp_path, "model: {arch: autoencoder}\n"))


def test_overrides_are_typed():
    cfg = load_config(
        ROOT / "tune_configs" / "router.yaml",
        [
            "optim.lr=3e-3",
            "train.epochs=5",
            "model.hidden_size=8",
            "train.use_gpu=false",
            "optim.betas=[0.8, 0.99]",
            "data.path=/tmp/logs",
        ],
    )
    assert cfg.optim.lr == 0.003 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 5 and cfg.model.params["hidden_size"] == 8
    assert cfg.train.use_gpu is False and cfg.optim.betas == [0.8, 0.99] and cfg.data.path == "/tmp/logs"
    with pytest.raises(ConfigError, match=r"router\.yaml: train\.epochs: expected int"):
        load_config(ROOT / "tune_configs" / "router.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"router\.yaml: optim\.learning_rate: unknown key"):
        load_config(ROOT / "tune_configs" / "router.yaml", ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.lr"], "cli")


def test_distill_section_is_validated(tmp_path):
    cfg = load_config(_write(tmp_path, BASE + "distill: {teacher: runs/big, alpha: 0.7}\n"))
    assert cfg.distill.teacher == "runs/big" and cfg.distill.temperature == 2.0
    with pytest.raises(ConfigError, match="distill.alpha"):
        load_config(_write(tmp_path, BASE + "distill: {teacher: t, alpha: 2}\n"))


def test_train_reads_a_tune_file_with_its_defaults(tmp_path):
    """`tunestack train` on a tune file ignores the search; `tune` validates those sections."""
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "search:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\ntune: {num_samples: 4}\n")
    assert load_config(str(p)).optim.lr == 1e-3
