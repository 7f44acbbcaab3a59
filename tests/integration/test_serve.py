"""The Serve app for real: serve/config.yaml deployed on the session's Ray cluster as shipped (one
hop: two Gateway replicas, each holding the router and the autoencoder), real HTTP on 127.0.0.1
with requests. The two-hop option (model_deployments) is drilled in test_chaos_serve.py.

One app for the module; tests run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from pipeline.data.sequences import ROUTING_FEATURES
from tests.support import free_port, wait_until
from tests.support.serve_world import (
    build_world,
    reference_encode,
    reference_route,
    routing_features,
    some_pairs,
)

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-token"
APP = "tunestack"
FEATURES = ROUTING_FEATURES  # the router's input order


def replicas(ray, deployment: str) -> list[str]:
    """Actor names of a deployment's replicas."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"{APP}#{deployment}#" in a["name"]
    ]


def _hosted(replica_actor) -> dict:
    """Inside a Gateway replica (run by actor.__ray_call__): {family: {"version", "batching"}}."""
    gateway = replica_actor._replica_impl._user_callable_wrapper.user_callable
    if gateway is None or not hasattr(gateway, "service"):
        return {}
    return {
        f: {"version": b.host.predictor.version if b.host.predictor else None, "batching": dict(b.batches)}
        for f, b in gateway.service.backends.items()
        if hasattr(b, "host")
    }


def in_replica(ray, name: str, fn):
    """Run `fn(actor)` inside one replica actor (Ray's own __ray_call__; this module by value)."""
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(fn), timeout=60)


def hosted(ray) -> dict[str, dict]:
    """{Gateway replica: what it hosts}, asking every replica itself."""
    return {name: in_replica(ray, name, _hosted) for name in replicas(ray, "Gateway")}


def replica_versions(ray, family: str = "router") -> dict[str, str]:
    """{Gateway replica: the version of `family` it serves}."""
    return {name: h[family]["version"] for name, h in hosted(ray).items()}


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):
    from ray import serve

    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict
    from serve.gateway import token_sha256

    world = build_world(tmp_path_factory.mktemp("serve-it"))
    port = free_port()
    config = serve_config_dict(str(DEFAULT_CONFIG), "127.0.0.1", port)
    args = config["applications"][0]["args"]
    args.update(
        registry_root=world["root"],
        admin_token_sha256=token_sha256(TOKEN),
        model_num_cpus=0.1,
        gateway_num_cpus=0.1,
        poll_interval_s=0.5,
        max_instances=64,
        max_body_bytes=65_536,
        breaker={"failure_threshold": 3, "reset_timeout_s": 2.0, "call_timeout_s": 5.0},
    )
    config["applications"][0]["deployments"] = [  # one hop (the default): the models live in here
        {"name": "Gateway", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}},
    ]
    deploy(config, timeout=480)  # a deadline: replicas start slowly on a loaded 2-core machine
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url + "/readyz", timeout=30).status_code == 200, 60, "/readyz")
    try:
        yield {**world, "url": url, "ray": ray_cluster, "auth": {"Authorization": f"Bearer {TOKEN}"}}
    finally:
        serve.shutdown()


def post(app, path, body=None, raw: bytes | None = None, **kw):
    if raw is not None:
        return requests.post(
            app["url"] + path,
            data=raw,
            headers={"Content-Type": "application/json", **kw.pop("headers", {})},
            timeout=60,
            **kw,
        )
    return requests.post(app["url"] + path, json=body, timeout=60, **kw)


# ---------------------------------------------------------------------------------------------
# Answers equal the in-process model's


def test_route_equals_in_process_model(app):
    from serve.models import ModelHost, decide_route

    x = routing_features(24, seed=11)
    instances = (
        [{"features": dict(zip(FEATURES, map(float, r)))} for r in x[:8]]
        + [{"features": [float(v) for v in r]} for r in x[8:16]]
        + [{"sequence": [[float(v) for v in r]]} for r in x[16:]]
    )
    r = post(app, "/v1/route", {"instances": instances})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want_p = reference_route(app["registry"], "v0001", x)
    host = ModelHost("router", "route", app["root"])
    host.sync()
    want = host.predict(instances)
    assert [g["model_version"] for g in got] == ["v0001"] * 24
    np.testing.assert_allclose([g["probability"] for g in got], want_p, atol=1e-6)
    for g, w in zip(got, want):
        assert g["threshold_source"] == "calibrated" and g["decided_by"] == "threshold"
        assert g["route"] == decide_route(g["probability"], g["uncertainty"], g["threshold"])
        assert {k: g[k] for k in w if k != "probability"} == {
            k: v for k, v in w.items() if k != "probability"
        }
        assert g["uncertainty"] is None and g["fallback"] is False and g["latency_us"] > 0
    single = post(app, "/v1/route", instances[0]).json()
    assert single["probability"] == pytest.approx(want_p[0], abs=1e-6)
    # a real multi-step sequence
    seq = [[float(v) for v in row] for row in x[:5]]
    p_seq = post(app, "/v1/route", {"sequence": seq}).json()["probability"]
    assert p_seq == pytest.approx(float(reference_route(app["registry"], "v0001", x[None, :5])[0]), abs=1e-6)


def test_gathered_requests_keep_their_own_answers(app, ray_cluster):
    """Concurrent requests the ingress gathers into one model call (@serve.batch) each get their own
    answer, and a bad one among them gets its own 422 without failing the others."""
    x = routing_features(48, seed=5)
    want = reference_route(app["registry"], "v0001", x)
    bodies = [
        {"features": [0.5] * 3} if n % 6 == 5 else {"features": [float(v) for v in r]}
        for n, r in enumerate(x)
    ]

    def totals():
        stats = [h["router"]["batching"] for h in hosted(ray_cluster).values()]
        return {k: sum(s[k] for s in stats) for k in ("batches", "requests")}

    was = totals()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: post(app, "/v1/route", b), bodies))
    for n, r in enumerate(answers):
        if n % 6 == 5:
            assert r.status_code == 422 and "features has 3 values" in r.text, (
                n,
                r.status_code,
                r.text[:200],
            )
        else:
            assert r.status_code == 200, (n, r.text[:200])
            assert r.json()["probability"] == pytest.approx(float(want[n]), abs=1e-6)
    got = totals()
    good = len(bodies) - len(bodies) // 6  # a 422 is refused before any model call
    assert got["requests"] - was["requests"] == good  # every good request went through the gathering
    assert got["batches"] - was["batches"] < good  # ... and some shared a model call


def test_encode_equals_in_process_model(app):
    from serve.models import ModelHost

    triplets = some_pairs(app["store"], 4)
    r = post(
        app, "/v1/encode", {"instances": [{"concept": c, "unit": u, "value": v} for c, u, v in triplets]}
    )
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    latent, err = reference_encode(app["registry"], app["store"], triplets)
    np.testing.assert_allclose([g["latent"] for g in got], latent, atol=1e-6)
    np.testing.assert_allclose([g["reconstruction_error"] for g in got], err, atol=1e-6)
    host = ModelHost("autoencoder", "encode", app["root"])
    host.sync()
    want = host.predict([{"concept": c, "unit": u, "value": v} for c, u, v in triplets])
    np.testing.assert_allclose(
        [g["anomaly_score"] for g in got], [w["anomaly_score"] for w in want], atol=1e-6
    )
    assert all(g["baseline"]["scope"] == "pair" and g["model_version"] == "v0001" for g in got)
    c, u, v = triplets[0]
    one = post(app, "/v1/encode", {"concept": c, "unit": u, "value": v}).json()
    assert one["concept"] == c and one["latent"] == pytest.approx(got[0]["latent"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: each gets its 4xx, never a 5xx


def _chunked(n: int):
    for _ in range(n):
        yield b" " * 1024


BAD = [
    ("route wrong feature count", "/v1/route", {"features": [0.5] * 4}, None, 422, "the model takes 5"),
    (
        "route unknown feature",
        "/v1/route",
        {"features": {**dict.fromkeys(FEATURES, 0.5), "x": 1.0}},
        None,
        422,
        "unknown ['x']",
    ),
    (
        "route string number",
        "/v1/route",
        {"features": [0.5, "0.5", 0.5, 0.5, 0.5]},
        None,
        422,
        "valid number",
    ),
    ("route NaN", "/v1/route", None, b'{"features": [NaN, 0.5, 0.5, 0.5, 0.5]}', 422, "finite number"),
    (
        "route Infinity",
        "/v1/route",
        None,
        b'{"features": [0.5, Infinity, 0.5, 0.5, 0.5]}',
        422,
        "finite number",
    ),
    ("route overflow", "/v1/route", {"features": [3e38] * 5}, None, 422, "numeric range"),
    ("route empty batch", "/v1/route", {"instances": []}, None, 422, "at least 1"),
    (
        "route batch over max",
        "/v1/route",
        {"instances": [{"features": [0.5] * 5}] * 65},
        None,
        422,
        "at most 64",
    ),
    ("route malformed JSON", "/v1/route", None, b'{"features": [0.5,', 422, "JSON decode error"),
    ("route not an object", "/v1/route", None, b"[1, 2, 3]", 422, ""),
    ("route ragged sequence", "/v1/route", {"sequence": [[0.5] * 5, [0.5] * 3]}, None, 422, "step 1 has 3"),
    ("encode missing value", "/v1/encode", {"concept": "Revenues", "unit": "USD"}, None, 422, "value"),
    ("encode empty batch", "/v1/encode", {"instances": []}, None, 422, "at least 1"),
    ("encode bool value", "/v1/encode", {"concept": "Revenues", "unit": "USD", "value": True}, None, 422, ""),
]


@pytest.mark.parametrize("name, path, body, raw, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_4xx(app, name, path, body, raw, status, fragment):
    r = post(app, path, body, raw)
    assert r.status_code == status and fragment in r.text, (name, r.status_code, r.text[:300])


def test_body_over_the_limit_is_413_unread(app):
    big = b'{"features": [' + b"0.5, " * 20_000 + b"0.5]}"
    assert post(app, "/v1/route", raw=big).status_code == 413
    r = requests.post(
        app["url"] + "/v1/route", data=_chunked(100), timeout=60, headers={"Content-Type": "application/json"}
    )  # no Content-Length: counted while read
    assert r.status_code == 413


def test_management_needs_the_token(app):
    u = app["url"]
    assert requests.get(u + "/v1/models", timeout=30).status_code == 401
    assert (
        requests.get(u + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=30).status_code
        == 401
    )
    assert post(app, "/v1/models/router/promote", {"version": "v0002"}).status_code == 401
    assert post(app, "/v1/models/router/rollback").status_code == 401
    assert post(app, "/v1/models/nope/promote", {"version": "v0001"}, headers=app["auth"]).status_code == 404
    assert (
        post(app, "/v1/models/router/promote", {"version": "v0077"}, headers=app["auth"]).status_code == 404
    )


# ---------------------------------------------------------------------------------------------
# Models, health, metrics, docs


def test_models_endpoints_health_metrics_docs(app):
    u, auth = app["url"], app["auth"]
    models = requests.get(u + "/v1/models", headers=auth, timeout=30).json()["models"]
    assert {m["family"]: m["version"] for m in models} == {"router": "v0001", "autoencoder": "v0001"}
    router = requests.get(u + "/v1/models/router", headers=auth, timeout=30).json()
    assert router["config"]["model"]["arch"] == "sequence_classifier" and "val_accuracy" in router["metrics"]
    assert router["serving"]["version"] == "v0001" and router["serving"]["uncertainty"] == "none"
    assert router["versions"] == ["v0001", "v0002", "v0003", "v0004"]
    assert requests.get(u + "/healthz", timeout=30).json() == {"status": "alive"}
    ready = requests.get(u + "/readyz", timeout=30).json()
    assert ready["ready"] and ready["families"]["autoencoder"]["loaded"]
    text = requests.get(u + "/metrics", timeout=30).text
    for name in (
        "tunestack_requests_total",
        "tunestack_request_latency_seconds_bucket",
        "tunestack_route_decisions_total",
        'status="422"',
    ):
        assert name in text, name
    assert requests.get(u + "/docs", timeout=30).status_code == 200
    paths = requests.get(u + "/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/route", "/v1/encode", "/v1/models/{family}/promote", "/readyz"} <= set(paths)


# ---------------------------------------------------------------------------------------------
# Promotion: refused when broken; under load, every answer from the old or the new version


def test_corrupted_or_unloadable_version_is_refused_and_nothing_changes(app):
    reg = app["registry"]
    before = reg.pointer("router")
    r = post(app, "/v1/models/router/promote", {"version": "v0003"}, headers=app["auth"])
    assert r.status_code == 409 and "sha256" in r.text, r.text
    r = post(app, "/v1/models/router/promote", {"version": "v0004"}, headers=app["auth"])
    assert r.status_code == 409 and "cannot load" in r.text, r.text
    assert reg.pointer("router") == before
    assert set(replica_versions(app["ray"]).values()) == {before["version"]}
    assert post(app, "/v1/route", {"features": [0.5] * 5}).json()["model_version"] == before["version"]


def test_promotion_under_constant_load(app, ray_cluster):
    assert len(replicas(ray_cluster, "Gateway")) == 2
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[int, object]] = []
    body = {"instances": [{"features": [float(v) for v in r]} for r in routing_features(4, seed=5)]}

    def load():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(app["url"] + "/v1/route", json=body, timeout=60)
                got = (r.status_code, r.json())
            except requests.RequestException as e:  # a dropped connection is an error too
                got = (0, repr(e))
            with lock:
                answers.append(got)

    def answered() -> int:
        with lock:
            return len(answers)

    def more_answers(k: int = 10):
        n = answered()
        wait_until(lambda: answered() >= n + k, 60, f"{k} more answers under load")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        more_answers()
        r = post(app, "/v1/models/router/promote", {"version": "v0002"}, headers=app["auth"])
        assert r.status_code == 200 and r.json()["serving"] is True and r.json()["previous"] == "v0001", (
            r.text
        )
        # every replica reloaded in place (the promote waits for a run of answers, not for all)
        wait_until(lambda: set(replica_versions(ray_cluster).values()) == {"v0002"}, 10, "v0002 everywhere")
        more_answers()
        r = post(app, "/v1/models/router/rollback", headers=app["auth"])
        assert r.status_code == 200 and r.json()["version"] == "v0001", r.text
        wait_until(lambda: set(replica_versions(ray_cluster).values()) == {"v0001"}, 10, "v0001 everywhere")
        more_answers()
        # the CLI moves the pointer; the replicas notice on their own
        env = {**os.environ, "TUNESTACK_HOME": app["home"]}
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "models", "promote", "router", "v0002"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        promoted_at = time.monotonic()
        assert cli.returncode == 0, cli.stderr
        wait_until(
            lambda: set(replica_versions(ray_cluster).values()) == {"v0002"},
            10,
            "a CLI promotion reaching every replica",
            interval=0.05,
        )
        reached = time.monotonic() - promoted_at
        more_answers(3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    errors = [a for a in answers if a[0] != 200]
    assert not errors, errors[:3]
    versions = [{p["model_version"] for p in a[1]["predictions"]} for a in answers]
    assert all(len(v) == 1 for v in versions)  # one answer, one version
    assert set().union(*versions) == {"v0001", "v0002"}
    assert not any(p["fallback"] for a in answers for p in a[1]["predictions"])
    assert post(app, "/v1/route", body).json()["predictions"][0]["model_version"] == "v0002"
    batching = [h["router"]["batching"] for h in hosted(ray_cluster).values()]
    assert all(b["requests"] >= b["batches"] > 0 for b in batching)  # requests went through @serve.batch
    print(
        f"{len(answers)} answers under load; CLI promotion reached every replica in {reached:.1f}s; "
        f"the replicas' batching: {batching}"
    )


# ---------------------------------------------------------------------------------------------
# Fuzz: no input makes a 5xx, and the server stays ready


def _fuzz_bodies():
    from hypothesis import strategies as st

    number = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**30), 10**30),
        st.booleans(),
        st.none(),
        st.text(max_size=5),
    )
    vector = st.lists(number, max_size=8)
    json_any = st.recursive(
        st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=8)),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
    route_instance = st.one_of(
        st.fixed_dictionaries({"features": vector}),
        st.fixed_dictionaries(
            {"features": st.dictionaries(st.sampled_from(FEATURES + ["x", ""]), number, max_size=6)}
        ),
        st.fixed_dictionaries({"sequence": st.lists(vector, max_size=4)}),
        st.dictionaries(st.sampled_from(["features", "sequence", "instances", "zzz"]), json_any, max_size=3),
    )
    route = st.one_of(
        route_instance, st.fixed_dictionaries({"instances": st.lists(route_instance, max_size=6)})
    )
    triplet = st.fixed_dictionaries(
        {
            "concept": st.one_of(st.text(max_size=12), st.sampled_from(["Revenues", ""]), number),
            "unit": st.one_of(st.sampled_from(["USD", "shares", ""]), number),
            "value": number,
        }
    )
    encode = st.one_of(triplet, st.fixed_dictionaries({"instances": st.lists(triplet, max_size=4)}), json_any)
    as_text = lambda s: s.map(lambda b: json.dumps(b, allow_nan=True).encode())  # noqa: E731
    garbage = st.binary(max_size=64)
    return st.one_of(
        st.tuples(st.just("/v1/route"), st.one_of(as_text(route), garbage)),
        st.tuples(st.just("/v1/encode"), st.one_of(as_text(encode), garbage)),
    )


def test_fuzz_never_5xx_and_stays_ready(app):
    from hypothesis import HealthCheck, given, settings

    session = requests.Session()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=500,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_fuzz_bodies())
    def one(case):
        path, raw = case
        r = session.post(
            app["url"] + path, data=raw, headers={"Content-Type": "application/json"}, timeout=60
        )
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, raw[:200], r.status_code, r.text[:300])

    one()
    assert sum(statuses.values()) >= 500 and statuses.get(422, 0) > 0 and statuses.get(200, 0) > 0, statuses
    assert requests.get(app["url"] + "/readyz", timeout=30).status_code == 200
