"""ModelHost.canary, what a model replica's Serve health check runs (no Ray)."""

from __future__ import annotations

import pytest
import torch

from pipeline.registry.registry import Registry
from serve.models import LoadError, ModelHost
from tests.support.serve_world import register, train_router


def test_canary_passes_on_a_sound_model_and_fails_when_its_model_raises(tmp_path):
    reg = Registry(tmp_path / "registry")
    host = ModelHost("router", "route", str(reg.root))
    host.canary()  # nothing to serve yet is not this replica's fault: /readyz reports it, no replacement
    register(reg, "router", train_router(tmp_path / "r1", steps=20), promote=True)
    assert host.sync()
    host.canary()
    weight = host.predictor.model.head.weight
    weight.data = torch.full_like(weight, float("nan"))  # answers NaN for every input
    with pytest.raises(LoadError, match="NaN"):
        host.canary()
    weight.data = torch.zeros(3, 7)  # weights that no longer fit the layer: every forward raises
    with pytest.raises(RuntimeError):
        host.canary()
    with pytest.raises(RuntimeError):
        host.predict([{"features": [0.5] * 5}])  # what the canary stands for: real calls fail too
