"""serve.models without Ray: loading registry versions, the router's normalization, uncertainty and
decision, the encoder's anomaly score, hot swapping; and the HTTP API over in-process models
(FastAPI TestClient), so validation is covered in the fast tier.

The world (tiny models trained in-process, registered) comes from tests.support.serve_world.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.sequences import ROUTING_FEATURES
from pipeline.registry.registry import Registry
from pipeline.train.checkpoint import load_checkpoint
from tests.support import REPO as ROOT
from tests.support.serve_world import (
    build_world,
    reference_encode,
    reference_route,
    register,
    routing_features,
    some_pairs,
    train_fold_rows,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve-models"))


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_decide_route_threshold_then_uncertainty_where_there_is_one():
    from serve.models import decide_route

    assert decide_route(0.9, None, 0.85) == "lightweight"
    assert decide_route(0.85, None, 0.85) == "lightweight"  # the threshold is inclusive
    assert decide_route(0.84, None, 0.85) == "powerful"
    assert decide_route(0.99, 0.16, 0.85, 0.15) == "powerful"  # an MC-dropout spread over the limit
    assert decide_route(0.99, 0.15, 0.85, 0.15) == "lightweight"
    assert decide_route(0.99, None, 0.85, 0.15) == "lightweight"  # no independent uncertainty: no veto
    assert decide_route(0.99, 0.5, 0.85) == "lightweight"  # no limit set: no veto


# ---------------------------------------------------------------------------------------------
# Router predictor


def test_router_applies_saved_normalization_and_equals_the_checkpoint(world):
    from serve.models import load_predictor

    reg = world["registry"]
    pred = load_predictor(reg, "router")
    assert pred.version == "v0001" and pred.features == list(ROUTING_FEATURES)
    x = routing_features(16, seed=9)
    want = reference_route(reg, "v0001", x)
    as_dict = [pred.prepare({"features": dict(zip(ROUTING_FEATURES, map(float, row)))}) for row in x]
    as_list = [pred.prepare({"features": [float(v) for v in row]}) for row in x]
    as_seq = [pred.prepare({"sequence": [[float(v) for v in row]]}) for row in x]
    for prepared in (as_dict, as_list, as_seq):
        got = np.array([r["probability"] for r in pred.predict(prepared)])
        np.testing.assert_allclose(got, want, atol=1e-6)
    # the z-score matters: without it the answers differ
    raw = np.array([r["probability"] for r in pred.predict([row[None].astype(np.float32) for row in x])])
    assert np.abs(raw - want).max() > 1e-3


def test_router_without_dropout_has_no_uncertainty(world):
    """Entropy of the same probability would only restate it: no independent estimate, null."""
    from serve.models import load_predictor

    pred = load_predictor(world["registry"], "router")
    assert pred.uncertainty_kind == "none"
    out = pred.predict(
        [pred.prepare({"features": [float(v) for v in row]}) for row in routing_features(32, 3)]
    )
    assert all(o["uncertainty"] is None and 0 <= o["probability"] <= 1 for o in out)


def test_the_threshold_is_the_versions_calibrated_one_unless_the_deployment_sets_one(world):
    from serve.models import DEFAULT_THRESHOLD, ModelHost

    reg = world["registry"]
    calibrated = load_checkpoint(reg.get("router", "v0001")["checkpoint"]).meta["route_calibration"]
    x = routing_features(200, seed=21)
    inst = [{"features": [float(v) for v in row]} for row in x]
    host = ModelHost("router", "route", world["root"])
    host.sync()
    out = host.predict(inst)
    assert {(o["threshold"], o["threshold_source"]) for o in out} == {(calibrated["threshold"], "calibrated")}
    for o in out:
        assert o["route"] == ("lightweight" if o["probability"] >= o["threshold"] else "powerful")
        assert o["decided_by"] == "threshold"
    assert 0 < sum(o["route"] == "lightweight" for o in out) < len(out)
    host.settings = host.settings.model_copy(update={"confidence_threshold": 0.5})
    out = host.predict(inst)
    assert {(o["threshold"], o["threshold_source"]) for o in out} == {(0.5, "deployment")}
    assert all(o["route"] == ("lightweight" if o["probability"] >= 0.5 else "powerful") for o in out)
    host.settings = host.settings.model_copy(update={"confidence_threshold": None})
    host.predictor.calibration = None  # a version trained before calibration existed
    assert {(o["threshold"], o["threshold_source"]) for o in host.predict(inst)} == {
        (DEFAULT_THRESHOLD, "default")
    }


def test_max_uncertainty_vetoes_only_with_an_mc_dropout_model(world, tmp_path):
    import shutil

    from serve.models import ModelHost

    root = tmp_path / "registry"
    shutil.copytree(world["root"], root)
    inst = [{"features": [float(v) for v in row]} for row in routing_features(200, seed=22)]
    host = ModelHost(
        "router", "route", str(root), settings={"confidence_threshold": 0.0, "max_uncertainty": 0.0}
    )
    host.sync()  # v0001: no dropout, so the limit cannot apply
    assert all(o["route"] == "lightweight" and o["decided_by"] == "threshold" for o in host.predict(inst))
    Registry(root).promote("router", "v0002")  # dropout: MC uncertainty
    assert host.sync()
    out = host.predict(inst)
    vetoed = [o for o in out if o["uncertainty"] > 0]
    assert vetoed and all(o["route"] == "powerful" and o["decided_by"] == "uncertainty" for o in vetoed)


def test_router_mc_dropout_uncertainty_is_deterministic_and_bounded(world):
    from serve.models import MC_SAMPLES, load_predictor

    reg = world["registry"]
    pred = load_predictor(reg, "router", "v0002")
    assert pred.uncertainty_kind == f"mc_dropout(k={MC_SAMPLES})"
    xs = [pred.prepare({"features": [float(v) for v in row]}) for row in routing_features(64, 4)]
    a, b = pred.predict(xs), load_predictor(reg, "router", "v0002").predict(xs)
    assert a == b  # fixed masks: same answer every time, on every replica
    u = np.array([o["uncertainty"] for o in a])
    assert np.all((u >= 0) & (u <= 1)) and u.max() > 0
    # the probability is the eval-mode model's, not the MC mean
    x = routing_features(64, 4)
    np.testing.assert_allclose([o["probability"] for o in a], reference_route(reg, "v0002", x), atol=1e-6)
    # batch composition does not change an instance's answer
    alone = pred.predict(xs[:1])[0]
    assert alone["probability"] == pytest.approx(a[0]["probability"], abs=1e-6)
    assert alone["uncertainty"] == pytest.approx(a[0]["uncertainty"], abs=1e-6)


def test_router_monotone_in_similarity(world):
    """Behaviour: the synthetic rule rewards similarity, so P(lightweight) rises with it."""
    from serve.models import load_predictor

    pred = load_predictor(world["registry"], "router")
    base = {"similarity": 0.0, "recency": 0.8, "frequency": 5.0, "success_rate": 0.9, "metadata_match": 0.75}
    ps = [
        pred.predict([pred.prepare({"features": {**base, "similarity": s}})])[0]["probability"]
        for s in (0.0, 0.5, 1.0)
    ]
    assert ps[0] < ps[1] < ps[2]


@pytest.mark.parametrize(
    "instance, fragment",
    [
        ({"features": [0.1, 0.2]}, "has 2 values; the model takes 5"),
        ({"features": {"similarity": 0.1}}, "missing"),
        ({"features": {**dict.fromkeys(ROUTING_FEATURES, 0.1), "colour": 1.0}}, "unknown ['colour']"),
        ({"sequence": [[0.1] * 5, [0.1] * 4]}, "sequence step 1 has 4 features"),
        ({"features": [3e38] * 5}, "numeric range"),
    ],
)
def test_router_rejects_inputs_it_cannot_answer(world, instance, fragment):
    from serve.models import InputError, load_predictor

    with pytest.raises(InputError, match=None) as e:
        load_predictor(world["registry"], "router").prepare(instance)
    assert fragment in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loading and refusing versions


def test_corrupted_and_unloadable_versions_are_refused(world):
    from serve.models import LoadError, load_predictor

    reg = world["registry"]
    with pytest.raises(LoadError, match="sha256"):
        load_predictor(reg, "router", "v0003")
    with pytest.raises(LoadError, match="cannot load"):
        load_predictor(reg, "router", "v0004")
    with pytest.raises(LoadError) as e:
        load_predictor(reg, "router", "v0099")
    assert e.value.not_found
    with pytest.raises(LoadError, match="cannot serve 'encode'"):
        load_predictor(reg, "router", "v0001", task="encode")


def test_host_follows_the_pointer_and_keeps_serving_through_a_bad_version(world, tmp_path):
    import shutil

    from serve.models import RETRY_FIRST_S, ModelHost

    root = tmp_path / "registry"
    shutil.copytree(world["root"], root)
    reg = Registry(root)
    host = ModelHost("router", "route", str(root))
    assert host.sync() and host.predictor.version == "v0001"
    old = host.predictor
    inst = [{"features": [0.5, 0.5, 3.0, 0.8, 0.5]}]
    reg.promote("router", "v0002")
    assert (
        host.sync()
        and host.predictor.version == "v0002"
        and host.predict(inst)[0]["model_version"] == "v0002"
    )
    # a version that passes its sha256 but does not load: the pointer moves (the CLI does not load
    # models), the host refuses it, remembers why, and keeps serving v0002
    now = [0.0]
    host.clock = lambda: now[0]
    reg.promote("router", "v0004")
    assert not host.sync() and host.predictor.version == "v0002" and "v0004" in host.error
    assert not host.sync() and host.failed_loads == 1  # not retried on every poll ...
    now[0] = host.retry_at  # ... but once its backoff has passed, and then after twice as long
    assert not host.sync() and host.failed_loads == 2 and host.retry_at - now[0] == 2 * RETRY_FIRST_S
    assert host.predict(inst)[0]["model_version"] == "v0002"
    # a request that took the old predictor before the swap finishes on it
    outs = ModelHost.run([(old, [old.prepare(inst[0])]), (host.predictor, [host.predictor.prepare(inst[0])])])
    assert len(outs) == 2 and outs[0] != outs[1]
    # staging loads without serving
    assert host.stage("v0003")["ok"] is False and host.predictor.version == "v0002"
    assert host.stage("v0001") == {"ok": True, "version": "v0001"} and host.predictor.version == "v0002"


def test_host_without_production_version_says_why(tmp_path):
    from serve.models import ModelHost, NotLoaded

    host = ModelHost("router", "route", str(tmp_path / "empty"))
    assert not host.sync()
    with pytest.raises(NotLoaded, match="no production version"):
        host.prepare([{"features": [0.0] * 5}])
    assert host.info()["loaded"] is False


# ---------------------------------------------------------------------------------------------
# Encoder predictor


def test_encode_equals_the_checkpoint_and_scores_against_the_pair(world):
    from serve.models import MIN_PAIR_ROWS, ModelHost

    reg, store = world["registry"], world["store"]
    host = ModelHost("autoencoder", "encode", world["root"])
    host.sync()
    triplets = some_pairs(store, 3)
    out = host.predict([{"concept": c, "unit": u, "value": v} for c, u, v in triplets])
    latent, err = reference_encode(reg, store, triplets)
    np.testing.assert_allclose([o["latent"] for o in out], latent, atol=1e-6)
    np.testing.assert_allclose([o["reconstruction_error"] for o in out], err, atol=1e-6)
    for o in out:
        b = o["baseline"]
        assert b["scope"] == "pair" and b["count"] >= MIN_PAIR_ROWS
        assert o["anomaly_score"] == pytest.approx(
            (o["reconstruction_error"] - b["mean"]) / b["std"], rel=1e-9
        )
    # a value far outside the pair's range is more anomalous than a typical one
    c, u, v = triplets[0]
    typical, wild = host.predict(
        [{"concept": c, "unit": u, "value": v}, {"concept": c, "unit": u, "value": v * 1e6 + 1e9}]
    )
    assert wild["anomaly_score"] > typical["anomaly_score"] + 3


def test_encode_baseline_is_the_training_error_distribution(world):
    """The pair's baseline mean/std are those of the model's errors over its train-fold rows."""
    import torch

    from serve.models import load_predictor

    pred = load_predictor(world["registry"], "autoencoder")
    pid, scaled, _ = train_fold_rows(world["store"])
    emb = pred.features.view().embeddings
    x = torch.from_numpy(np.concatenate([emb[pid], scaled[:, None]], axis=1).astype(np.float32))
    with torch.no_grad():
        err = pred.model.per_sample_error(x, pred.model(x)[0]).double().numpy()
    p0 = int(np.bincount(pid).argmax())
    b = pred.features.baseline.row(pred.features.row_of(*pred.features.keys[pred.features.view().rows[p0]]))
    assert b["count"] == int((pid == p0).sum())
    assert b["mean"] == pytest.approx(err[pid == p0].mean(), rel=1e-9)
    assert b["std"] == pytest.approx(err[pid == p0].std(), rel=1e-6, abs=1e-12)


def test_encode_unseen_pair_is_embedded_and_scaled_with_its_unit_fallback(world):
    from serve.models import ModelHost

    host = ModelHost("autoencoder", "encode", world["root"])
    host.sync()
    f = host.predictor.features
    known, unseen, odd_unit = host.predict(
        [
            {"concept": f.keys[0][0], "unit": f.keys[0][1], "value": 1.0},
            {"concept": "NoSuchConcept", "unit": f.keys[0][1], "value": 1.0},
            {"concept": "NoSuchConcept", "unit": "NoSuchUnit", "value": 1.0},
        ]
    )
    assert known["pair_known"] and known["fallback"] is None
    assert not unseen["pair_known"] and unseen["fallback"] == f"unit:{f.keys[0][1]}"
    assert unseen["baseline"]["scope"] == "global"
    assert odd_unit["fallback"] == "global"
    assert all(np.isfinite(o["latent"]).all() for o in (unseen, odd_unit))
    # the unseen pair's input is its text through the recorded embedder and the model's projection
    from pipeline.store.embed import pair_text

    want = f.space.embed([pair_text("NoSuchConcept", f.keys[0][1], None, None)])[0]
    np.testing.assert_array_equal(host.predictor._embedding("NoSuchConcept", f.keys[0][1]), want)


def test_encode_unseen_pair_without_its_embedder_is_a_503_naming_it(world, tmp_path):
    """A version whose recorded embedder is not installed here answers known pairs and refuses
    unseen ones with Unavailable (HTTP 503), naming the embedder — never another embedder."""
    import dataclasses
    import shutil

    from pipeline.train.checkpoint import META_FILE, load_checkpoint, replace_features
    from serve.models import ModelHost, Unavailable

    reg = Registry(tmp_path / "registry")
    src = tmp_path / "ckpt"
    shutil.copytree(world["registry"].get("autoencoder")["checkpoint"], src)
    ckpt = load_checkpoint(str(src))
    f = ckpt.features()
    missing = dataclasses.replace(f.space, embedder={**f.space.embedder, "name": "not-installed-embedder"})
    meta = json.loads((src / META_FILE).read_text())
    meta["features"]["space"]["embedder"]["name"] = "not-installed-embedder"
    (src / META_FILE).write_text(json.dumps(meta))
    replace_features(str(src), dataclasses.replace(f, space=missing))
    register(reg, "autoencoder", str(src), promote=True)
    host = ModelHost("autoencoder", "encode", str(reg.root))
    host.sync()
    assert host.predict([{"concept": f.keys[0][0], "unit": f.keys[0][1], "value": 1.0}])[0]["pair_known"]
    with pytest.raises(Unavailable, match="not-installed-embedder"):
        host.predict([{"concept": "NoSuchConcept", "unit": "USD", "value": 1.0}])


# ---------------------------------------------------------------------------------------------
# The HTTP API over in-process models (no Ray)


@pytest.fixture(scope="module")
def client(world):
    import shutil

    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    root = world["tmp"] / "api-registry"
    shutil.copytree(world["root"], root)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)  # this client runs without a token
        api = make_local_api({"registry_root": str(root), "max_instances": 8, "max_body_bytes": 4096})
    with TestClient(api) as c:
        c.root = root
        yield c


def test_api_route_and_encode(client, world):
    r = client.post("/v1/route", json={"features": dict.fromkeys(ROUTING_FEATURES, 0.5)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"route", "probability", "uncertainty", "model_version", "latency_us", "fallback"}
    assert body["model_version"] == "v0001" and body["fallback"] is False
    r = client.post("/v1/route", json={"instances": [{"features": [0.5] * 5}, {"sequence": [[0.5] * 5] * 3}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    c, u, v = some_pairs(world["store"], 1)[0]
    r = client.post("/v1/encode", json={"concept": c, "unit": u, "value": v})
    assert r.status_code == 200, r.text
    assert len(r.json()["latent"]) == 8 and r.json()["concept"] == c


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"features": [0.5] * 4}, 422, "the model takes 5"),
        ({"features": [0.5, 0.5, "0.5", 0.5, 0.5]}, 422, "valid number"),
        ({"features": [0.5, 0.5, True, 0.5, 0.5]}, 422, "valid number"),
        ({"instances": []}, 422, "at least 1"),
        ({"instances": [{"features": [0.5] * 5}] * 9}, 422, "at most 8"),
        ({"features": [0.5] * 5, "sequence": [[0.5] * 5]}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"features": [0.5] * 5, "extra": 1}, 422, "Extra inputs"),
        ({"sequence": []}, 422, "at least 1"),
    ],
)
def test_api_route_rejects_bad_input(client, body, status, fragment):
    r = client.post("/v1/route", json=body)
    assert r.status_code == status and fragment in r.text, r.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"features": [NaN, 0.5, 0.5, 0.5, 0.5]}',
        b'{"features": [Infinity, 1, 1, 1, 1]}',
        b'{"features": [1e400, 1, 1, 1, 1]}',
        b'{"features": [0.5, ',
        b"\xff\xfe",
        b"[" * 2000 + b"]" * 2000,
        b'"just a string"',
    ],
)
def test_api_route_rejects_bad_json(client, raw):
    r = client.post("/v1/route", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (raw[:40], r.status_code, r.text)
    assert r.status_code == 422 or r.status_code == 400


def test_api_body_limit_is_413_before_parsing(client):
    big = b'{"features": [' + b"0.5, " * 2000 + b"0.5]}"
    assert (
        client.post("/v1/route", content=big, headers={"content-type": "application/json"}).status_code == 413
    )

    def chunks():  # no Content-Length: counted while read
        for _ in range(100):
            yield b" " * 100

    assert (
        client.post("/v1/route", content=chunks(), headers={"content-type": "application/json"}).status_code
        == 413
    )


def test_api_encode_rejects_bad_input(client):
    r = client.post("/v1/encode", json={"concept": "NoSuchConcept", "unit": "USD", "value": 1.0})
    assert r.status_code == 200 and r.json()["pair_known"] is False  # unseen pairs are answered
    r = client.post("/v1/encode", json={"concept": "NoSuchConcept", "unit": "USD", "value": 1e300})
    assert r.status_code == 200  # far beyond any scaler's range: bounded, answered (and anomalous)
    assert client.post("/v1/encode", json={"concept": "x", "unit": "USD"}).status_code == 422
    assert client.post("/v1/encode", json={"concept": "x", "unit": "USD", "value": "1"}).status_code == 422


def test_api_promote_refuses_bad_versions_and_changes_nothing(client):
    reg = Registry(client.root)
    before = reg.pointer("router")
    r = client.post("/v1/models/router/promote", json={"version": "v0003"})
    assert r.status_code == 409 and "sha256" in r.text
    r = client.post("/v1/models/router/promote", json={"version": "v0004"})
    assert r.status_code == 409 and "cannot load" in r.text
    assert client.post("/v1/models/router/promote", json={"version": "v0042"}).status_code == 404
    assert client.post("/v1/models/router/promote", json={"version": "latest"}).status_code == 422
    assert client.post("/v1/models/nope/promote", json={"version": "v0001"}).status_code == 404
    assert reg.pointer("router") == before
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == before["version"]


def test_api_promote_and_rollback(client):
    r = client.post("/v1/models/router/promote", json={"version": "v0002"})
    assert r.status_code == 200 and r.json()["serving"] is True, r.text
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == "v0002"
    info = client.get("/v1/models/router").json()
    assert info["version"] == "v0002" and info["serving"]["uncertainty"].startswith("mc_dropout")
    r = client.post("/v1/models/router/rollback")
    assert r.status_code == 200 and r.json()["version"] == "v0001"
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == "v0001"


def test_api_health_ready_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["families"]["router"]["loaded"]
    text = client.get("/metrics").text
    assert "tunestack_requests_total" in text and "tunestack_route_decisions_total" in text
    assert client.get("/docs").status_code == 200
    assert "/v1/route" in client.get("/openapi.json").json()["paths"]


def test_api_admin_token(world, monkeypatch):
    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    monkeypatch.setenv("TUNESTACK_ADMIN_TOKEN", "s3cret")
    with TestClient(make_local_api({"registry_root": world["root"]})) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and {m["family"] for m in r.json()["models"]} == {"router", "autoencoder"}
        assert c.post("/v1/models/router/rollback").status_code == 401
        assert c.post("/v1/route", json={"features": [0.5] * 5}).status_code == 200  # inference is open


# ---------------------------------------------------------------------------------------------
# The shipped Serve config and the CLI


def test_shipped_serve_config_is_valid_and_cli_overrides_apply(monkeypatch, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from serve.cli import DEFAULT_CONFIG, serve_config_dict
    from serve.gateway import token_sha256
    from serve.schemas import AppArgs

    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)
    raw = serve_config_dict(str(DEFAULT_CONFIG))
    assert raw["http_options"] == {
        **raw["http_options"],
        "host": "127.0.0.1",
        "port": 8000,
    }  # loopback default
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    args = AppArgs(**app.args)
    assert args.registry_root == str(tmp_path / "home" / "registry") and args.admin_token_sha256 is None
    assert (args.confidence_threshold, args.max_uncertainty) == (None, None)  # the versions' own thresholds
    # one hop by default: the Gateway replica holds every model
    assert args.model_deployments == [] and {d.name for d in app.deployments} == {"Gateway"}
    monkeypatch.setenv("TUNESTACK_ADMIN_TOKEN", "tok")
    raw = serve_config_dict(str(DEFAULT_CONFIG), host="0.0.0.0", port=9001)
    assert raw["http_options"]["host"] == "0.0.0.0" and raw["http_options"]["port"] == 9001
    assert raw["applications"][0]["args"]["admin_token_sha256"] == token_sha256("tok") != "tok"


def test_app_args_reject_unknown_keys_and_two_families_per_endpoint():
    from pydantic import ValidationError

    from serve.schemas import AppArgs

    with pytest.raises(ValidationError, match="confidence_treshold"):
        AppArgs(confidence_treshold=0.9)
    with pytest.raises(ValidationError, match="one family per endpoint"):
        AppArgs(families={"router": "route", "router2": "route"})


def test_serve_subcommand_help(capsys):
    import argparse

    from serve.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="tunestack")
    add_serve_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["serve", "--help"])
    assert e.value.code == 0 and "--port" in capsys.readouterr().out
    ns = parser.parse_args(["serve"])
    assert ns.host is None and ns.port is None and ns.config.endswith("config.yaml")


def test_deploy_waits_for_running_apps_and_settled_proxies():
    """The states come as `serve.status()` gives them (Ray's enums): a proxy being replaced
    (STARTING, UNHEALTHY) is waited for; a drained one (a node with no replica) is not."""
    from ray.serve.schema import ApplicationStatus as A
    from ray.serve.schema import ProxyStatus as P

    from serve.cli import serving

    assert serving({"app": A.RUNNING}, {"head": P.HEALTHY, "worker": P.DRAINING})
    assert serving({"app": A.RUNNING}, {"head": P.HEALTHY, "worker": P.DRAINED})
    assert serving({"app": A.RUNNING}, {})  # proxy_location: Disabled
    assert not serving({"app": A.RUNNING}, {"head": P.STARTING})
    assert not serving({"app": A.RUNNING}, {"head": P.HEALTHY, "worker": P.UNHEALTHY})
    assert not serving({"app": A.DEPLOYING, "other": A.RUNNING}, {"head": P.HEALTHY})


def test_client_retries_idempotent_calls_only(monkeypatch):
    from serve.client import TunestackClient, TunestackError

    class Resp:
        def __init__(self, status, body):
            self.status_code, self._body, self.text = status, body, json.dumps(body)

        def json(self):
            return self._body

    class Session:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def request(self, method, url, **kw):
            self.calls += 1
            return self.answers.pop(0)

    monkeypatch.setattr("serve.client.time.sleep", lambda s: None)
    s = Session(
        [Resp(503, {"detail": "loading"}), Resp(503, {"detail": "loading"}), Resp(200, {"route": "powerful"})]
    )
    assert TunestackClient(session=s, token="").route([0.5] * 5) == {"route": "powerful"} and s.calls == 3
    s = Session([Resp(422, {"detail": "features has 4 values"})])
    with pytest.raises(TunestackError) as e:
        TunestackClient(session=s, token="").route([0.5] * 4)
    assert e.value.status == 422 and s.calls == 1  # a client error is not retried
    s = Session([Resp(503, {"detail": "busy"}), Resp(200, {})])
    with pytest.raises(TunestackError):
        TunestackClient(session=s, token="").rollback("router")  # not idempotent: sent once
    assert s.calls == 1


# ---------------------------------------------------------------------------------------------
# The embedded router: /v1/route's answers, in-process


def embedded_inputs(n: int, seed: int) -> list[dict]:
    """n /v1/route instances in every form: named features, a vector, a one-step sequence."""
    x = routing_features(n, seed)
    forms = [
        lambda r: {"features": dict(zip(ROUTING_FEATURES, map(float, r)))},
        lambda r: {"features": [float(v) for v in r]},
        lambda r: {"sequence": [[float(v) for v in r]]},
    ]
    return [forms[i % 3](r) for i, r in enumerate(x)]


def without_latency(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "latency_us"}


def test_embedded_router_answers_as_the_http_api(client):
    from serve.embedded import EmbeddedRouter, InputError

    inputs = embedded_inputs(1000, seed=31)
    # the same request bodies (batches of 8, the client's limit, and single instances), so the
    # same forward passes: answers equal to the bit
    bodies = [{"instances": inputs[i : i + 8]} for i in range(0, 496, 8)] + inputs[496:]
    with EmbeddedRouter(str(client.root), follow=False) as router:
        mine, http = [], []
        for body in bodies:
            r = client.post("/v1/route", json=body)
            assert r.status_code == 200, r.text
            answer = router.route(body)
            for side, got in ((mine, answer), (http, r.json())):
                side += [without_latency(a) for a in got.get("predictions", [got])]
        assert len(mine) == 1000 and mine == http
        assert {a["route"] for a in mine} == {"lightweight", "powerful"}
        assert {a["threshold_source"] for a in mine} == {"calibrated"}
        # bad input: the reason /v1/route gives in its 422
        for bad in ({"features": [0.5] * 4}, {"features": [0.5, "x", 0.5, 0.5, 0.5]}, {"instances": []}):
            with pytest.raises(InputError) as e:
                router.route(bad)
            r = client.post("/v1/route", json=bad)
            assert r.status_code == 422
            assert str(e.value) == (r.json().get("reason") or r.json()["detail"])


def test_embedded_router_follows_promotions(world, tmp_path):
    import shutil
    import time

    from serve.embedded import EmbeddedRouter

    root = tmp_path / "registry"
    shutil.copytree(world["root"], root)
    with EmbeddedRouter(str(root), poll_interval_s=0.05) as router:
        assert router.version == "v0001" and router.decide([0.5] * 5)["model_version"] == "v0001"
        Registry(root).promote("router", "v0002")
        deadline = time.monotonic() + 10
        while router.version != "v0002":
            assert time.monotonic() < deadline, "the promotion did not reach the embedded router"
            time.sleep(0.02)
        assert router.decide([0.5] * 5)["model_version"] == "v0002"


def test_serve_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    """`tunestack serve --host 0.0.0.0` with no admin token exits non-zero before starting anything,
    saying how to set one; loopback, a token, or --insecure-no-admin-token pass the check."""
    import os
    import subprocess
    import sys

    from serve.cli import DEFAULT_CONFIG, exposure_refusal, is_loopback, serve_config_dict

    env = {k: v for k, v in os.environ.items() if k not in ("TUNESTACK_ADMIN_TOKEN", "RAY_ADDRESS")}
    env["TUNESTACK_HOME"] = str(tmp_path / "home")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", "--host", "0.0.0.0", "--timeout", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "refusing to listen on 0.0.0.0 without an admin token" in run.stderr
    assert "export TUNESTACK_ADMIN_TOKEN=" in run.stderr and "--insecure-no-admin-token" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "home").exists()  # nothing started
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)
        assert exposure_refusal(serve_config_dict(str(DEFAULT_CONFIG))) is None  # loopback: fine
        assert exposure_refusal(serve_config_dict(str(DEFAULT_CONFIG), host="::1")) is None
        assert "0.0.0.0" in exposure_refusal(serve_config_dict(str(DEFAULT_CONFIG), host="0.0.0.0"))
        mp.setenv("TUNESTACK_ADMIN_TOKEN", "s3cret")
        assert exposure_refusal(serve_config_dict(str(DEFAULT_CONFIG), host="0.0.0.0")) is None
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("example.com")


def test_management_never_500s_on_a_damaged_registry(world, tmp_path):
    """A malformed version.json, NaN metrics, a stage() that raises: 4xx/503 or a reported error,
    never a 500, and the live version keeps serving."""
    import shutil

    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    root = tmp_path / "registry"
    shutil.copytree(world["root"], root)
    reg = Registry(root)
    version_json = Path(reg.get("router", "v0002")["path"]) / "version.json"
    version_json.write_text("{not json")
    production = Path(reg.get("router")["path"]) / "version.json"
    record = json.loads(production.read_text())
    record["metrics"] = {"val_accuracy": math.nan, "val_loss": math.inf}
    production.write_text(json.dumps(record))  # json.dumps writes NaN/Infinity: what a careless tool does
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)
        api = make_local_api({"registry_root": str(root), "reload_wait_s": 0.5})
    with TestClient(api) as c:
        r = c.get("/v1/models/router")
        assert r.status_code == 200 and r.json()["metrics"] == {"val_accuracy": None, "val_loss": None}
        assert c.get("/v1/models").status_code == 200
        r = c.post("/v1/models/router/promote", json={"version": "v0002"})
        assert r.status_code == 409 and "unreadable" in r.text, r.text
        with pytest.MonkeyPatch.context() as mp:
            from serve.models import ModelHost

            def broken(self, version):
                raise RuntimeError("the replica died mid-call")

            mp.setattr(ModelHost, "stage", broken)
            r = c.post("/v1/models/router/promote", json={"version": "v0001"})
            assert r.status_code == 503 and "the replica died mid-call" in r.text
        assert reg.pointer("router")["version"] == "v0001"
        assert c.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == "v0001"
