"""A router judged by cost and quality, end to end on the default synthetic logs: `tunestack train`
(Ray Train) calibrates the best checkpoint on the validation split and stores the threshold in it;
registered and promoted, `tunestack evaluate --model router:production` reports, on the test split,
a non-zero share routed lightweight with an error among them within a point of the target, an
APGR of at least 0.9 of the oracle's on the same rows, and writes the plot; the served decision
uses that threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_trained_router_is_calibrated_and_evaluated_by_cost_and_quality(ray_cluster, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.registry import Registry
    from pipeline.synth import synth_routing
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.run import train
    from serve.embedded import EmbeddedRouter

    home = tmp_path / "home"
    monkeypatch.setenv("TUNESTACK_HOME", str(home))
    logs = synth_routing(str(home / "routing"), rows=40_000, seed=0)  # the default logs
    assert logs["difficulty"] == "features" and (home / "routing" / "routing_oracle.json").is_file()
    cfg = load_config(
        ROOT / "tune_configs" / "router.yaml",
        ["train.epochs=4", "train.patience=0", f"data.path={home / 'routing'}"],
    )
    result = train(cfg, run_name="router-calibrated")
    cal = result.route_calibration
    assert cal and cal["split"] == "val" and cal["max_lightweight_error"] == 0.02
    assert load_checkpoint(result.best_checkpoint).meta["route_calibration"]["threshold"] == cal["threshold"]
    assert cal["error_among_lightweight"] <= 0.02 and cal["share_lightweight"] > 0.1

    ckpt = load_checkpoint(result.best_checkpoint)
    Registry().register("router", result.best_checkpoint, config=ckpt.config, metrics={}, promote=True)
    plot = tmp_path / "router.png"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "evaluate",
            "--model",
            "router:production",
            "--plot",
            str(plot),
        ],
        env={**os.environ, "TUNESTACK_HOME": str(home)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    router = json.loads(run.stdout)["router"]
    print(run.stderr)
    assert router["split"] == "test" and router["threshold"] == cal["threshold"]
    assert router["threshold_source"] == "calibrated"
    assert router["share_lightweight"] > 0.1
    # the test split's error among lightweight within one point of the 2% target
    assert abs(router["error_among_lightweight"] - 0.02) <= 0.01, router
    assert router["apgr_vs_oracle"] >= 0.9, router
    assert plot.is_file() and plot.stat().st_size > 10_000
    for words in ("calibrated threshold", "lightweight", "of them wrong", "APGR"):
        assert words in run.stderr
    with EmbeddedRouter(str(home / "registry"), follow=False) as served:  # Serve decides with it
        answer = served.decide(
            {
                "similarity": 0.95,
                "recency": 0.9,
                "frequency": 20.0,
                "success_rate": 0.95,
                "metadata_match": 1.0,
            }
        )
        assert (answer["threshold"], answer["threshold_source"]) == (cal["threshold"], "calibrated")
        assert answer["route"] == "lightweight"
