"""ModelHost.canary, what a model replica's Serve health check runs (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

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
    engine = host.predictor.engine  # a FastGRNN router runs on the lean NumPy engine
    assert engine is not None
    engine.head_w[:] = np.nan  # answers NaN for every input
    with pytest.raises(LoadError, match="NaN"):
        host.canary()
    engine.head_w = np.zeros((3, 7), np.float32)  # weights that no longer fit the layer: every call raises
    with pytest.raises(ValueError):
        host.canary()
    with pytest.raises(ValueError):
        host.predict([{"features": [0.5] * 5}])  # what the canary stands for: real calls fail too
