"""Ray Tune + ASHA over Ray Train trials on a real local cluster, into the registry."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from pipeline.registry import Registry
from pipeline.runtime import job_placement_groups
from pipeline.synth import synth_routing
from pipeline.train.checkpoint import load_checkpoint
from pipeline.tune.run import max_concurrent, run_tune, tune_config
from pipeline.tune.space import overrides_of, param_space
from pipeline.tune.spec import load_tune_spec

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def test_asha_tune_with_more_trials_than_slots_registers_the_best(ray_cluster, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNESTACK_HOME", str(home))
    synth_routing(str(home / "routing"), rows=6000, seed=1, noise=0.1)
    overrides = [
        "train.epochs=4",
        "train.patience=0",
        "tune.num_samples=3",
        "tune.asha.grace_period=1",
        "tune.asha.max_t=4",
    ]
    spec = load_tune_spec(str(REPO / "tune_configs" / "router.yaml"), overrides)
    slots = max_concurrent(spec)
    assert slots >= 2  # two single-worker trials at once on 2 CPUs
    held_before = job_placement_groups()
    out = run_tune(
        str(REPO / "tune_configs" / "router.yaml"), name="router-asha", promote=True, overrides=overrides
    )
    assert job_placement_groups() <= held_before  # no finished trial still holds CPUs

    assert len(out.trials) == 6 > slots  # 2 planned hidden sizes x 3 samples: more trials than slots
    assert all(t["error"] is None for t in out.trials), [t["error"] for t in out.trials]
    assert all(1 <= t["epochs"] <= 4 for t in out.trials)
    assert any(t["stopped_early"] for t in out.trials)  # ASHA cut some, and their resources came back
    assert {t["overrides"]["model.hidden_size"] for t in out.trials} == {8, 16}
    best = out.best
    assert best["metric"] == max(t["metric"] for t in out.trials if t["metric"] is not None)
    assert best["metric"] > 0.8

    reg = Registry()
    rec = reg.get("router")
    assert (rec["version"], rec["stage"]) == (out.registered["version"], "production")
    assert rec["metrics"]["val_accuracy"] == pytest.approx(best["metric"])
    assert reg.verify() == []
    model_cfg = load_checkpoint(rec["checkpoint"]).config["model"]
    assert model_cfg["hidden_size"] == best["overrides"]["model.hidden_size"]

    for name in ("report.md", "trials.csv", "curves.png"):
        assert (Path(out.path) / name).stat().st_size > 0
    # The trials' Train runs hold safetensors + JSON only (Tune's own bookkeeping sits above them).
    for path in Path(out.path, "trials").rglob("*"):
        if path.name == ".validate_storage_marker":  # Ray Train's empty storage probe
            assert path.stat().st_size == 0
        elif path.is_file() and "tensorboard" not in path.parts:
            assert path.suffix in (".safetensors", ".json"), path
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                with safe_open(str(path), "pt") as f:  # parses as safetensors: no code can run
                    list(f.keys())


def test_points_to_evaluate_run_first_on_every_plan_entry_besides_the_draws(ray_cluster, tmp_path):
    """run_tune's own TuneConfig and param space, with a trainable that only reports its config: the
    trials Tune creates, in order, are what a real experiment would train."""
    from ray import tune

    overrides = [
        "train.patience=0",
        "tune.num_samples=1",
        "tune.asha=null",
        "tune.points_to_evaluate=[{optim.lr: 0.0123}]",
    ]
    spec = load_tune_spec(str(REPO / "tune_configs" / "router.yaml"), overrides)

    def reports_its_config(config):
        tune.report({spec.metric: 0.5, "overrides": overrides_of(config)})

    results = tune.Tuner(
        reports_its_config,
        param_space=param_space(spec.search, spec.plan),
        tune_config=tune_config(spec),
        run_config=tune.RunConfig(name="points", storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert not results.errors, results.errors
    # Tune numbers trials in creation order
    ordered = sorted((r.metrics for r in results), key=lambda m: int(m["trial_id"].rsplit("_", 1)[1]))
    assert len(ordered) == 4  # the point and one draw, each on both planned hidden sizes
    assert [(m["overrides"]["optim.lr"], m["overrides"]["model.hidden_size"]) for m in ordered[:2]] == [
        (0.0123, 8),
        (0.0123, 16),
    ]
    assert all(
        2.0e-3 <= m["overrides"]["optim.lr"] <= 3.0e-2 and m["overrides"]["optim.lr"] != 0.0123
        for m in ordered[2:]
    )
