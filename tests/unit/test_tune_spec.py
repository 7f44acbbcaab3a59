"""Search spaces, plans and tune sections from YAML (no Ray needed for validation)."""

import textwrap

import pytest

from pipeline.config import ConfigError
from pipeline.tune.space import expand_plan, flatten_search, overrides_of
from pipeline.tune.spec import load_tune_spec

BASE = """
name: digits
data: {source: sequences, path: digits.npz}
model: {arch: sequence_classifier, cell: fastgrnn, hidden_size: 16, input_size: 8, num_classes: 10}
train: {epochs: 6, monitor: val_accuracy, mode: max}
"""


def write(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(textwrap.dedent(BASE) + textwrap.dedent(text))
    return str(p)


def test_search_plan_exclude_expand(tmp_path):
    spec = load_tune_spec(
        write(
            tmp_path,
            """
        search:
          optim:
            lr: {loguniform: [1.0e-4, 1.0e-1]}
          model.hidden_size: {grid: [16, 32]}
          train.batch_size: {choice: [32, 64]}
        plan:
          model.cell: [fastgrnn, gru, lstm]
        exclude:
          - {model.cell: lstm, model.hidden_size: 32}
        tune:
          num_samples: 2
          asha: {grace_period: 1, reduction_factor: 2, max_t: 6}
        """,
        )
    )
    assert set(spec.search) == {"optim.lr", "model.hidden_size", "train.batch_size"}
    assert len(spec.plan) == 5 and {"model.cell": "lstm", "model.hidden_size": 32} not in spec.plan
    assert spec.metric == "val_accuracy" and spec.mode == "max"
    assert spec.tune.asha.reduction_factor == 2.0 and spec.tune.num_samples == 2
    cfg = spec.trial_config({"optim.lr": 0.01, **spec.plan[-1]})
    assert cfg.optim.lr == 0.01 and cfg.model.params["cell"] == spec.plan[-1]["model.cell"]


def test_no_search_is_one_plain_trial(tmp_path):
    spec = load_tune_spec(write(tmp_path, ""))
    assert spec.plan == [{}] and spec.search == {} and spec.tune.asha is not None


@pytest.mark.parametrize(
    "text, key",
    [
        ("search:\n  optim.lr: {loguniform: [0, 1]}\n", "search.optim.lr"),
        ("search:\n  optim.lr: {normal: [0, 1]}\n", "search.optim"),
        ("search:\n  optim.nope: {choice: [1, 2]}\n", "search.optim.nope"),
        ("search:\n  model.hidden_size: {choice: [a, b]}\n", "search.model.hidden_size"),
        ("plan:\n  model.cell: fastgrnn\n", "plan.model.cell"),
        ("plan:\n  model.cell: [gru]\nexclude:\n  - {model.cell: gru}\n", "exclude"),
        ("exclude:\n  - {train.epochs: 3}\n", "exclude[0].train.epochs"),
        ("tune:\n  num_samples: two\n", "tune.num_samples"),
        ("tune:\n  bogus: 1\n", "tune.bogus"),
        ("tune:\n  asha: {reduction_factor: 1}\n", "tune.asha.reduction_factor"),
        ("tune:\n  search_alg: grid\n", "tune.search_alg"),
        # each key valid alone, one plan entry not: a GRU with a FastGRNN-only option
        ("plan: {model.cell: [fastgrnn, gru]}\nsearch: {model.w_rank: {choice: [2, 4]}}\n", "plan"),
        # points_to_evaluate: values of sampled search keys, each valid for its config key
        (
            "search: {optim.lr: {loguniform: [1.0e-3, 1.0e-1]}}\ntune: {points_to_evaluate: {optim.lr: 0.02}}\n",
            "tune.points_to_evaluate",
        ),
        (
            "search: {optim.lr: {loguniform: [1.0e-3, 1.0e-1]}}\ntune: {points_to_evaluate: [{}]}\n",
            "tune.points_to_evaluate[0]",
        ),
        (
            "search: {optim.lr: {loguniform: [1.0e-3, 1.0e-1]}}\ntune: {points_to_evaluate: [{optim.lr: fast}]}\n",
            "tune.points_to_evaluate[0].optim.lr",
        ),
        (
            "search: {optim.lr: {loguniform: [1.0e-3, 1.0e-1]}}\ntune: {points_to_evaluate: [{train.epochs: 3}]}\n",
            "tune.points_to_evaluate[0].train.epochs",
        ),
        (
            "search: {model.hidden_size: {grid: [16, 32]}}\ntune: {points_to_evaluate: [{model.hidden_size: 16}]}\n",
            "tune.points_to_evaluate[0].model.hidden_size",
        ),
    ],
)
def test_bad_tune_files_name_the_key_and_the_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_tune_spec(path)
    assert e.value.source == path and e.value.key.startswith(key), str(e.value)


def test_points_to_evaluate_hold_sampled_keys(tmp_path):
    spec = load_tune_spec(
        write(
            tmp_path,
            """
        search:
          optim.lr: {loguniform: [1.0e-3, 1.0e-2]}
          model.hidden_size: {grid: [16, 32]}
        tune:
          points_to_evaluate:
            - {optim.lr: 0.02}        # outside the sampled range: a known config is allowed
        """,
        )
    )
    assert spec.tune.points_to_evaluate == [{"optim.lr": 0.02}]
    assert load_tune_spec(write(tmp_path, "")).tune.points_to_evaluate == []


def test_flatten_and_overrides_helpers():
    flat = flatten_search({"a": {"b": {"choice": [1]}}, "c.d": {"uniform": [0, 1]}}, "f")
    assert flat == {"a.b": {"choice": [1]}, "c.d": {"uniform": [0, 1]}}
    assert expand_plan({}, None, None, "f") == [{}]
    assert overrides_of({"optim.lr": 0.1, "plan": {"model.cell": "gru"}}) == {
        "optim.lr": 0.1,
        "model.cell": "gru",
    }
