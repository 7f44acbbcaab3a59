"""The config schema: shipped configs load, errors name the key and the file, overrides are typed."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    json_schema,
    load_config,
    load_tune_config,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "tune_configs").glob("*.yaml"))
SERVE_CONFIG = ROOT / "serve" / "config.yaml"


def test_the_three_configs_ship():
    assert {p.name for p in SHIPPED} >= {"router.yaml", "autoencoder.yaml", "digits.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    cfg.family_config()  # the model family accepts it too
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


def test_train_reads_a_tune_file_with_its_defaults_and_validates_all_of_it(tmp_path):
    """`tunestack train` on a tune file trains the defaults once, yet the search is checked too."""
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "search:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\ntune: {num_samples: 4}\n")
    cfg = load_config(str(p))
    assert cfg.optim.lr == 1e-3 and "search" not in cfg.to_dict()
    p.write_text(BASE + "search:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\ntune: {num_sample: 4}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: tune\.num_sample: unknown key"):
        load_config(str(p))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_tune_file_validates_in_full(path):
    """Training and tune sections, the search's keys against the schema, the JSON Schema too."""
    tc = load_tune_config(path)
    assert tc.search_space and tc.plan_entries and tc.tune.asha is not None
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema("tune"))


def test_the_shipped_serve_config_validates_in_full():
    from serve.config import load_serve_config, serve_json_schema

    raw = load_serve_config(SERVE_CONFIG)
    assert raw["applications"][0]["import_path"].startswith("serve.app:")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(raw, serve_json_schema())


def test_a_serve_config_names_every_bad_key_ray_and_app_alike(tmp_path):
    from serve.config import load_serve_config

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    raw["applications"][0]["deployments"][0]["num_replica"] = 2  # Ray itself ignores this typo
    raw["applications"][0]["args"]["max_batch_sise"] = 8
    raw["applications"][0]["args"]["poll_interval_s"] = 0
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_serve_config(path)
    problems = dict(err.value.problems)
    assert err.value.source == str(path) and set(problems) == {
        "applications[0].deployments[0].num_replica",
        "applications[0].args.max_batch_sise",
        "applications[0].args.poll_interval_s",
    }, problems
    assert "did you mean 'num_replicas'" in problems["applications[0].deployments[0].num_replica"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = _write(
        tmp_path,
        BASE + "optim: {lr: fast, momentum: 0.9}\ntrain: {epochs: 0}\ntune: {asha: {grace: 2}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = [k for k, _ in err.value.problems]
    assert keys == ["optim.lr", "optim.momentum", "train.epochs", "tune.asha.grace"], keys
    assert str(err.value).startswith(f"{path}: 4 problems:")


# The "must show": each of these fails at load, naming the file and the key, before Ray starts.
MUST_FAIL_AT_LOAD = [
    ("tune:\n  asha: {grace_period: 2, max_time: 9}\n", "tune.asha.max_time"),
    ("search:\n  optim.learning_rate: {loguniform: [1.0e-3, 1.0e-1]}\n", "search.optim.learning_rate"),
    ("search:\n  model: {hidden: {choice: [8, 16]}}\n", "search.model.hidden"),
    ("train: {monitor: val_acc, mode: max}\n", "train.monitor"),
    ("train: {monitor: loss}\n", "train.monitor"),
]


@pytest.mark.parametrize("extra,key", MUST_FAIL_AT_LOAD, ids=[k for _, k in MUST_FAIL_AT_LOAD])
@pytest.mark.parametrize("command", ["train", "tune"])
def test_bad_keys_fail_at_load_before_ray_starts(tmp_path, capsys, monkeypatch, extra, key, command):
    import pipeline.runtime
    import pipeline.train.run
    from pipeline.cli import main

    # Whether this process is connected to Ray says nothing (an earlier test may have started the
    # session's cluster); what matters is that the command never asked for it.
    asked = []
    for module in (pipeline.runtime, pipeline.train.run):
        monkeypatch.setattr(module, "ensure_ray", lambda *a, **k: asked.append(a))
    path = _write(tmp_path, BASE + extra)
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err, err
    assert "Traceback" not in err and asked == []


def test_monitor_is_checked_against_the_familys_metrics(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE + "train: {monitor: val_r2}\n"))
    assert err.value.key == "train.monitor" and "val_accuracy" in err.value.message
    ae = "data: {source: triplets}\nmodel: {arch: autoencoder}\ntrain: {monitor: val_r2, mode: max}\n"
    assert load_config(_write(tmp_path, ae)).train.monitor == "val_r2"


def test_config_command_checks_files_and_prints_schemas(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["config", "check", *map(str, SHIPPED), str(SERVE_CONFIG)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(SHIPPED) + 1
    bad = _write(tmp_path, BASE + "train: {epoch: 3}\n")
    assert main(["config", "check", str(SHIPPED[0]), str(bad)]) == 2
    assert f"{bad}: train.epoch: unknown key" in capsys.readouterr().err
    assert main(["config", "schema", "--out", str(tmp_path / "schema")]) == 0
    for kind in ("train", "tune", "serve"):
        schema = json.loads((tmp_path / "schema" / f"{kind}.schema.json").read_text())
        assert schema["$schema"].startswith("https://json-schema.org/")
    tune = json.loads((tmp_path / "schema" / "tune.schema.json").read_text())
    assert {"data", "model", "search", "plan", "exclude", "tune"} <= set(tune["properties"])
    families = tune["$defs"]["ModelSection"]["anyOf"]
    archs = [s["properties"]["arch"]["const"] for s in families]
    assert {"sequence_classifier", "autoencoder"} <= set(archs)
