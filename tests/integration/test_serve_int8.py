"""A registered INT8 router version served by `tunestack serve` (a real process, real HTTP) answers
/v1/route within the documented INT8 tolerance of the float version of the same model, deciding
with the threshold calibrated in training (carried by the export); it runs on the lean engine, its
record says int8, and a sequence the single-step router cannot use is a 422.

INT8 tolerance: pipeline.lean.artifact.INT8_PROBABILITY_TOLERANCE on P(lightweight) (README, "Tiny models").
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from pipeline.lean.artifact import INT8_PROBABILITY_TOLERANCE
from tests.integration.test_readme import ServeApp
from tests.support.serve_world import routing_features, train_router

pytestmark = pytest.mark.ray
FEATURES = ["similarity", "recency", "frequency", "success_rate", "metadata_match"]


def _route(url: str, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, set]:
    body = {"instances": [{"features": [float(v) for v in row]} for row in rows]}
    r = requests.post(f"{url}/v1/route", json=body, timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert not any(p["fallback"] for p in preds), preds[:2]
    for p in preds:  # the version's calibrated threshold decides (the export carries it)
        assert p["threshold_source"] == "calibrated" and p["threshold"] == pytest.approx(threshold), p
        assert p["route"] == ("lightweight" if p["probability"] >= threshold else "powerful"), p
    return np.array([p["probability"] for p in preds]), {p["model_version"] for p in preds}


def test_int8_router_served_over_http_matches_the_float_version(tmp_path):
    from pipeline.export import export_model
    from pipeline.registry.registry import Registry

    home = tmp_path / "home"
    ckpt = train_router(tmp_path / "router", steps=150)
    meta_file = Path(ckpt) / "checkpoint.json"
    meta = json.loads(meta_file.read_text())
    meta["sequence_lengths"] = [1]  # what `tunestack train` records for routing logs
    meta_file.write_text(json.dumps(meta))
    threshold = meta["route_calibration"]["threshold"]
    reg = Registry(home / "registry")
    reg.register("router", ckpt, config=meta["config"], metrics={}, promote=True)
    exported = export_model(ckpt, "int8", str(tmp_path / "router-int8"))
    assert exported["unused"] == ["rnn.cell.U1", "rnn.cell.U2"] and exported["file_bytes"] < 1024  # rank-1 U
    reg.register("router", exported["path"], config=meta["config"], metrics={}, precision="int8")

    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        TUNESTACK_HOME=str(home),
        TUNESTACK_ADMIN_TOKEN=token,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    app = ServeApp(env, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{app.ensure(timeout=600)}"
        rows = routing_features(64, seed=11)
        p32, versions = _route(url, rows, threshold)
        assert versions == {"v0001"}

        auth = {"Authorization": f"Bearer {token}"}
        r = requests.post(
            f"{url}/v1/models/router/promote", json={"version": "v0002"}, headers=auth, timeout=120
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while True:  # replicas follow the production pointer
            p8, versions = _route(url, rows, threshold)
            if versions == {"v0002"}:
                break
            assert time.monotonic() < deadline, versions
            time.sleep(0.5)
        assert np.abs(p8 - p32).max() <= INT8_PROBABILITY_TOLERANCE, np.abs(p8 - p32).max()
        assert np.abs(p8 - p32).max() > 0  # it really is the quantized model answering

        info = requests.get(f"{url}/v1/models", headers=auth, timeout=30).json()
        text = json.dumps(info)
        assert '"precision": "int8"' in text and '"engine": "lean-numpy"' in text, text[:2000]

        seq = {"sequence": [[float(v) for v in rows[0]]] * 3}
        r = requests.post(f"{url}/v1/route", json=seq, timeout=30)
        assert r.status_code == 422 and "trained on 1-step inputs only" in r.text, r.text
        one = requests.post(f"{url}/v1/route", json={"sequence": [[float(v) for v in rows[0]]]}, timeout=30)
        assert one.status_code == 200 and one.json()["probability"] == pytest.approx(p8[0], abs=1e-6)
    finally:
        app.stop()
