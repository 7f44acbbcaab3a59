"""The toy third family (tests/families/pooled_mlp.py + pooled.yaml: one module, one config)
trains through the real Ray Train loop — `tunestack train`'s own path, no copy of the step — and
its best checkpoint evaluates and reloads as that family.

Ray's workers import the family by the module path its config names (`model.arch`); they find
`tests.families` because a local Ray puts the driver's working directory (the repository root,
where pytest runs) on its workers' sys.path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_toy_family_trains_through_ray_train(ray_cluster, tmp_path, monkeypatch):
    if Path.cwd().resolve() != ROOT:
        pytest.skip(
            "Ray workers import tests.families from the driver's working directory: run from the repo root"
        )
    from pipeline.config import load_config
    from pipeline.data.sequences import write_digits_npz
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.run import train
    from tests.families.pooled_mlp import PooledMLP

    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))
    digits = write_digits_npz(str(tmp_path / "digits.npz"))
    cfg = load_config(ROOT / "tests" / "families" / "pooled.yaml", [f"data.path={digits}"])
    result = train(cfg, run_name="pooled-ray")

    assert result.best_checkpoint and os.path.isdir(result.best_checkpoint)
    with open(os.path.join(result.path, "run.json")) as f:
        run = json.load(f)
    assert run["config"]["model"]["arch"] == "tests.families.pooled_mlp"
    # two epochs of a 10-class problem: far above chance (0.1); the pooled model reaches ~0.8
    assert result.test_metrics["accuracy"] > 0.5, result.test_metrics
    assert result.best_metrics["epoch"] in (0, 1)
    ckpt = load_checkpoint(result.best_checkpoint)
    assert isinstance(ckpt.build_model(), PooledMLP)
    assert [a["device"] for a in ckpt.meta["attempts"]] == ["cpu"]  # trained by a Ray Train worker
