"""Serve drills (issue 6): faults injected under load, hostile input, concurrent management.

One real Serve app for the module (serve/config.yaml on the session's Ray cluster with the two-hop
option, `model_deployments: [router, autoencoder]`: Gateway, two router replicas, one autoencoder
replica), real HTTP on 127.0.0.1. Tests run in file order:

1. fuzz: >= 2,000 hostile requests over every endpoint → never a 5xx, never a management answer
   without the token, the server stays ready;
2. 20 concurrent promote/rollback calls → one consistent registry state, served by every replica;
   a call that loses the race to another gets 409 "conflict" and changes nothing;
3. a replica whose model raises on every call → its health check fails, Serve replaces it;
4. a router replica killed (`ray.kill`) under >= 50 requests/s from a separate process →
   >= 99% succeed, a new replica replaces it, /readyz is ready again;
5. every router replica killed as soon as it exists → every answer is the fallback ("powerful"),
   the circuit opens; once they come back a probe closes it;
6. Serve listens on loopback only.

Before them, the module's Serve starts through a first `serve_start` that fails as it does when the
controller replaced an HTTP proxy that missed its readiness checks (0.).

Faults go into one replica with Ray's own `actor.__ray_call__` (a function run inside that actor):
the product has no fault-injection hook. Each drill prints a row "fault or input | tried | lost |
success rate" (run with -s to see them).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from pipeline.data.sequences import ROUTING_FEATURES
from tests.support import free_port, wait_until
from tests.support.serve_world import build_world, router_replicas, some_pairs

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chaos-token"
APP = "tunestack"
BODY_LIMIT = 65_536
MAX_INSTANCES = 64
FEATURES = ROUTING_FEATURES  # the router's input order
ROWS: list[str] = []


def report(fault: str, tried: int, lost: int, note: str = "") -> None:
    rate = 100.0 * (tried - lost) / tried if tried else 0.0
    row = f"| {fault} | {tried} | {lost} | {rate:.2f}% | {note} |"
    ROWS.append(row)
    print("\nDRILL " + row, flush=True)


# ---------------------------------------------------------------------------------------------
# Inside a replica (run there by actor.__ray_call__; pickled by value, tests/ is not installed)


def _model_server(replica_actor):
    return replica_actor._replica_impl._user_callable_wrapper.user_callable  # our ModelServer


def _served(replica_actor) -> dict:
    server = _model_server(replica_actor)
    if server is None or not hasattr(server, "host"):
        return {"version": None, "error": "initializing"}
    host = server.host
    return {"version": host.predictor.version if host.predictor else None, "error": host.error}


def _corrupt_weights_in_memory(replica_actor) -> str:
    """The live model's head weights no longer fit the layer: every forward raises (the lean
    engine a FastGRNN router runs on: ValueError; a torch model: RuntimeError)."""
    import numpy as np
    import torch

    predictor = _model_server(replica_actor).host.predictor
    predictor.model.head.weight.data = torch.zeros(3, 7)
    if getattr(predictor, "engine", None) is not None:
        predictor.engine.head_w = np.zeros((3, 7), np.float32)
    return predictor.version


def in_replica(ray, name: str, fn):
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor = ray.get_actor(name, namespace="serve")
    return ray.get(actor.__ray_call__.remote(fn), timeout=60)


def served_by_replica(ray) -> dict[str, dict]:
    """{replica actor: what it serves}, asking every router replica itself."""
    return {name: in_replica(ray, name, _served) for name in router_replicas(ray)}


def wait_ready(url: str, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while requests.get(url + "/readyz", timeout=30).status_code != 200:
        assert time.monotonic() - t0 < timeout, requests.get(url + "/readyz", timeout=30).text
        time.sleep(0.5)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# The app


def _first_serve_start_fails(mp: pytest.MonkeyPatch) -> list[str]:
    """Serve's start as on a loaded machine where the HTTP proxy missed the controller's readiness
    checks (seen with the CPUs oversubscribed): the controller is up, and serve_start's wait on its
    first proxy ends in ActorDiedError. deploy() must start again (which connects to that
    controller) and wait for a HEALTHY proxy. Returns what each serve_start call did."""
    import ray
    from ray.serve._private import api as serve_api

    real, calls = serve_api.serve_start, []

    def serve_start(*args, **kwargs):
        client = real(*args, **kwargs)
        if not calls:
            calls.append("failed")
            raise ray.exceptions.ActorDiedError()
        calls.append("connected")
        return client

    mp.setattr(serve_api, "serve_start", serve_start)
    return calls


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):
    from ray import serve

    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict
    from serve.gateway import token_sha256

    world = build_world(tmp_path_factory.mktemp("chaos"))
    port = free_port()
    config = serve_config_dict(str(DEFAULT_CONFIG), None, port)  # the default host: loopback
    args = config["applications"][0]["args"]
    args.update(
        registry_root=world["root"],
        admin_token_sha256=token_sha256(TOKEN),
        model_num_cpus=0.1,
        gateway_num_cpus=0.1,
        poll_interval_s=0.5,
        model_deployments=["router", "autoencoder"],
        max_instances=MAX_INSTANCES,
        max_body_bytes=BODY_LIMIT,
        breaker={"failure_threshold": 3, "reset_timeout_s": 1.0, "call_timeout_s": 5.0},
    )
    health = {"health_check_period_s": 1, "health_check_timeout_s": 5}
    config["applications"][0]["deployments"] = [
        {"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        {"name": "model-router", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}, **health},
        {"name": "model-autoencoder", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, **health},
    ]
    with pytest.MonkeyPatch.context() as mp:  # 0. a start whose first HTTP proxy died
        started = _first_serve_start_fails(mp)
        deploy(config, timeout=480)  # a deadline: replicas start slowly on a loaded 2-core machine
    assert started == ["failed", "connected"], started
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 60)
    try:
        yield {**world, "url": url, "port": port, "auth": {"Authorization": f"Bearer {TOKEN}"}}
    finally:
        serve.shutdown()
        if ROWS:
            print(
                "\n| fault or input | tried | lost | success rate | notes |\n|---|---|---|---|---|\n"
                + "\n".join(ROWS),
                flush=True,
            )


# ---------------------------------------------------------------------------------------------
# 1. Hostile input over every endpoint


SERVABLE = {"v0001", "v0002"}  # a valid-token promote of these would change state: fuzzed without the token


def _hostile_cases(templates: list[tuple[str, str]]):
    from hypothesis import strategies as st

    weird_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
        [
            "",
            "\u0000",
            "\u202e\u0644\u0639",
            "🙂" * 3,
            "a" * 600,
            "..",
            "../../etc/passwd",
            "%00",
            "\\",
            "router/..",
        ]
    )
    number = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**40), 10**40),
        st.booleans(),
        st.none(),
        weird_text,
        st.sampled_from([1e308, -1e308, 5e-324, 2**63, -(2**63) - 1]),
    )
    json_any = st.recursive(
        st.one_of(st.none(), st.booleans(), number, weird_text),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(weird_text, c, max_size=4),
        max_leaves=16,
    )
    instance = st.one_of(
        st.fixed_dictionaries({"features": st.lists(number, max_size=7)}),
        st.fixed_dictionaries(
            {"features": st.dictionaries(st.sampled_from(FEATURES + ["x"]), number, max_size=6)}
        ),
        st.fixed_dictionaries({"sequence": st.lists(st.lists(number, max_size=6), max_size=3)}),
        st.fixed_dictionaries(
            {
                "concept": weird_text | st.just("Revenues"),
                "unit": st.sampled_from(["USD", "shares", ""]) | weird_text,
                "value": number,
            }
        ),
    )

    def batch(n):  # a batch of n copies: sizes around and far over the limit
        return st.builds(lambda one: {"instances": [one] * n}, instance)

    batches = st.sampled_from([0, 1, MAX_INSTANCES, MAX_INSTANCES + 1, 1000, 4000]).flatmap(batch)
    shaped = st.one_of(
        instance,
        batches,
        st.fixed_dictionaries(
            {
                "version": weird_text
                | st.sampled_from(["v0003", "v0004", "v9999", "v0", "V0001", "v0001 ", "v00001"])
            }
        ),
        st.fixed_dictionaries(
            {
                "config": weird_text
                | st.sampled_from(
                    [
                        "tune_configs/nope.yaml",
                        "/etc/passwd",
                        "tune_configs/../../../etc/passwd",
                        "../tune_configs/router.yaml",
                        "tune_configs/sub/x.yaml",
                        "tune_configs/router.yml\n",
                        "~/x.yaml",
                    ]
                ),
                "promote": number,
                "overrides": st.lists(weird_text, max_size=3),
            }
        ),
        json_any,
    )
    as_json = shaped.map(lambda b: json.dumps(b, allow_nan=True).encode())
    raw = st.one_of(
        as_json,
        st.integers(1, 30_000).map(lambda d: b"[" * d + b"]" * d),  # deep nesting
        st.integers(1, 6_000).map(lambda d: b'{"features":' * d + b"[1]" + b"}" * d),
        st.sampled_from(
            [
                b'{"features": [1e400, 1, 1, 1, 1]}',
                b'{"value": -1e999, "concept": "Revenues", "unit": "USD"}',
                b'{"features": [' + b"9" * 5000 + b", 1, 1, 1, 1]}",
                b'{"features": [1, 1, 1, 1, 1e-400]}',
                b'{"concept": "\\ud800", "unit": "\\udfff", "value": 1}',
                b'{"features": {"\\ud800": 1}}',
                b'{"version": "\\udc00"}',
                b'{"config": "tune_configs/\\u0000.yaml"}',
                b'\xef\xbb\xbf{"features": [1, 1, 1, 1, 1]}',
                '{"features": [1,1,1,1,1]}'.encode("utf-16"),
                b'{"concept": "\xff\xfe", "unit": "USD", "value": 1}',
                b"",
                b"null",
                b"[]",
                b'"x"',
            ]
        ),
        st.integers(BODY_LIMIT - 64, 2 * BODY_LIMIT).map(
            lambda n: b'{"features": [' + b" " * n + b"1]}"
        ),  # oversized
        st.binary(max_size=300),
    )
    segment = st.sampled_from(
        [
            "router",
            "autoencoder",
            "nope",
            "..",
            "%2e%2e",
            "%2F",
            "%00",
            "%ED%A0%80",
            "%FF",
            "tunestack-tune-0123456789abcdef",
            "a" * 300,
        ]
    ) | weird_text.map(lambda s: quote(s, safe=""))

    @st.composite
    def case(draw):
        method, template = draw(st.sampled_from(templates))
        if draw(st.integers(0, 9)) == 0:
            method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
        path = template
        while "{" in path:
            start, end = path.index("{"), path.index("}")
            path = path[:start] + draw(segment) + path[end + 1 :]
        if draw(st.integers(0, 9)) == 0:  # query strings nobody asked for
            path += "?" + quote(draw(weird_text), safe="=&") + "=" + str(draw(st.integers(-(10**20), 10**20)))
        body = draw(raw) if method not in ("GET", "HEAD") or draw(st.booleans()) else b""
        headers = {}
        ctype = draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/json",
                    "text/plain",
                    "",
                    "multipart/form-data",
                    "application/x-www-form-urlencoded",
                    "application/json; charset=latin-1",
                    "application/xml",
                    None,
                ]
            )
        )
        if ctype is not None:
            headers["Content-Type"] = ctype
        auth = draw(st.sampled_from(["none", "wrong", "valid", "malformed"]))
        headers.update(
            {
                "none": {},
                "wrong": {"Authorization": "Bearer nope"},
                "valid": {"Authorization": f"Bearer {TOKEN}"},
                "malformed": {"Authorization": "Basic Zm9vOmJhcg=="},
            }[auth]
        )
        return method, path, headers, body, auth

    return case()


def _unsafe_with_token(method: str, path: str, body: bytes) -> bool:
    """A valid-token call the fuzz must not make: promoting a servable version, rolling back, or
    submitting a job for a real tuning config (the drill is about input, not about running jobs)."""
    if method != "POST" or not path.startswith(("/v1/models", "/v1/jobs")):
        return False
    if path.split("?")[0].endswith("/rollback"):
        return True
    try:
        b = json.loads(body)
    except (ValueError, RecursionError):
        return False
    config = b.get("config") if isinstance(b, dict) else None
    return isinstance(b, dict) and (
        b.get("version") in SERVABLE
        or (isinstance(config, str) and config.strip().endswith((".yaml", ".yml")))
    )


def test_fuzz_every_endpoint_never_5xx(app):
    from hypothesis import HealthCheck, given, settings

    openapi = requests.get(app["url"] + "/openapi.json", timeout=30).json()
    templates = sorted({(m.upper(), p) for p, ops in openapi["paths"].items() for m in ops})
    templates += [
        ("GET", "/"),
        ("GET", "/v1"),
        ("POST", "/v1/route/"),
        ("GET", "/v1/models/{family}/x/y"),
        ("GET", "/docs/oauth2-redirect"),
        ("POST", "/v2/route"),
        ("GET", "/{family}"),
        ("GET", "/redoc"),
    ]
    core = {
        "/v1/route",
        "/v1/encode",
        "/v1/models",
        "/v1/models/{family}",
        "/v1/models/{family}/promote",
        "/v1/models/{family}/rollback",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert core <= {p for _, p in templates}
    reg = app["registry"]
    before = {f: reg.pointer(f) for f in ("router", "autoencoder")}
    session = requests.Session()
    statuses: dict[int, int] = {}
    failures: list = []

    @settings(
        max_examples=2200,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_hostile_cases(templates))
    def one(case):
        method, path, headers, body, auth = case
        if auth == "valid" and _unsafe_with_token(method, path, body):
            headers = {k: v for k, v in headers.items() if k != "Authorization"}
            auth = "none"
        req = requests.Request(method, app["url"], data=body or None, headers=headers)
        prepared = session.prepare_request(req)
        prepared.url = app["url"] + path  # the path exactly as drawn (already percent-encoded)
        try:
            r = session.send(prepared, timeout=60)
        except requests.RequestException as e:
            failures.append((method, path, body[:80], repr(e)))
            session.close()
            return
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, path, headers, body[:200], r.status_code, r.text[:300])
        management = path.startswith(("/v1/models", "/v1/jobs"))
        if management and auth != "valid":
            assert r.status_code >= 400, (
                "answered without the token",
                method,
                path,
                r.status_code,
                r.text[:200],
            )

    t0 = time.monotonic()
    one()
    # With the token, a real tune file and hostile overrides (negative batch sizes and counts, YAML
    # tags, unknown keys): refused with 422 naming the key, before anything is submitted.
    for overrides in (
        ["train.batch_size=-5"],
        ["train.batch_size=0"],
        ["tune.num_samples=-1"],
        ["train.epochs=0"],
        ["train.epochs=!!python/object/apply:os.system [id]"],
        ["nope.key=1"],
        ["model.arch=__import__"],
        ["train.epochs=[[["],
        ["x" * 300],
        ["a=b\nc=d"],
    ):
        r = session.post(
            app["url"] + "/v1/jobs",
            json={"config": "tune_configs/router.yaml", "overrides": overrides},
            headers=app["auth"],
            timeout=60,
        )
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code == 422, (overrides, r.status_code, r.text[:300])
    took = time.monotonic() - t0
    tried = sum(statuses.values()) + len(failures)
    assert not failures, failures[:5]
    assert tried >= 2000, statuses
    assert statuses.get(200, 0) > 0 and statuses.get(422, 0) > 0 and statuses.get(401, 0) > 0, statuses
    assert statuses.get(413, 0) > 0 and statuses.get(404, 0) > 0, statuses
    assert requests.get(app["url"] + "/readyz", timeout=30).status_code == 200
    assert {f: reg.pointer(f) for f in before} == before  # nothing the fuzz sent changed production
    assert all("v0003" in p for p in reg.verify())  # only v0003, corrupted by design
    report(
        "hostile HTTP requests over every endpoint (fuzz)",
        tried,
        0,
        f"{took:.0f}s; statuses {dict(sorted(statuses.items()))}; no 5xx; server ready after",
    )


# ---------------------------------------------------------------------------------------------
# 2. Concurrent management


def test_concurrent_promote_and_rollback_end_consistent(app, ray_cluster):
    reg, url, auth = app["registry"], app["url"], app["auth"]
    r = requests.post(url + "/v1/models/router/promote", json={"version": "v0002"}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    start = reg.pointer("router")
    ops = [("promote", "v0001")] * 7 + [("promote", "v0002")] * 7 + [("rollback", None)] * 6
    barrier = threading.Barrier(len(ops))

    def call(op):
        kind, version = op
        s = requests.Session()
        barrier.wait()
        if kind == "promote":
            resp = s.post(
                url + "/v1/models/router/promote", json={"version": version}, headers=auth, timeout=120
            )
        else:
            resp = s.post(url + "/v1/models/router/rollback", headers=auth, timeout=120)
        return kind, version, resp.status_code, resp.json()

    with ThreadPoolExecutor(len(ops)) as pool:
        results = list(pool.map(call, ops))
    codes = [c for _, _, c, _ in results]
    assert all(c in (200, 409) for c in codes), results  # 409: lost the race, or nothing to roll back to
    promoted = [b for k, _, c, b in results if k == "promote" and c == 200]
    rolled = [b for k, _, c, b in results if k == "rollback" and c == 200]
    # The pointer is compare-and-swap: a promotion of a good version fails only when another change
    # won the race between its read and its write, and then it says so.
    lost = [b for k, _, c, b in results if k == "promote" and c == 409]
    assert promoted and all("conflict" in b["detail"] for b in lost), lost

    # one consistent registry state
    fam = Path(app["root"]) / "router"
    end = json.loads((fam / "production.json").read_text())
    assert end == reg.pointer("router")
    assert end["version"] == end["history"][-1] and set(end["history"]) <= SERVABLE
    assert all(a != b for a, b in zip(end["history"], end["history"][1:]))  # a no-op promote adds nothing
    keep = max(len(start["history"]) - len(rolled), 0)
    assert (
        end["history"][:keep] == start["history"][:keep]
    )  # a stack: below what rollbacks reached, untouched
    assert len(start["history"]) - len(rolled) <= len(end["history"]) <= len(start["history"]) + len(promoted)
    assert not [p.name for p in fam.iterdir() if p.name.startswith((".production", ".staging"))]  # no debris
    assert all(b["version"] in SERVABLE for b in promoted + rolled)

    # every replica serves that state's version (asked one by one), and so do HTTP answers
    deadline = time.monotonic() + 15
    while True:
        served = served_by_replica(ray_cluster)
        if len(served) == 2 and all(s["version"] == end["version"] for s in served.values()):
            break
        assert time.monotonic() < deadline, (end, served)
        time.sleep(0.3)
    answers = {
        requests.post(url + "/v1/route", json={"features": [0.5] * 5}, timeout=30).json()["model_version"]
        for _ in range(20)
    }
    assert answers == {end["version"]}
    assert requests.get(url + "/readyz", timeout=30).status_code == 200
    report(
        "20 concurrent promote/rollback calls",
        len(ops),
        0,
        f"{len(promoted)} promotions + {len(rolled)} rollbacks applied, {codes.count(409)} refused (409: "
        f"lost a race, or nothing to roll back); final {end['version']} (history {len(end['history'])}) "
        "on all replicas",
    )


# ---------------------------------------------------------------------------------------------
# 3. A replica whose model raises on every call is found unhealthy and replaced


def test_replica_whose_model_raises_is_replaced(app, ray_cluster):
    url = app["url"]
    replicas = router_replicas(ray_cluster)
    assert len(replicas) == 2
    sick = replicas[0]
    version = in_replica(ray_cluster, sick, _corrupt_weights_in_memory)
    actor = ray_cluster.get_actor(sick, namespace="serve")
    with pytest.raises(Exception, match="mat1 and mat2|shape"):  # Serve's own health probe of that replica
        ray_cluster.get(actor.check_health.remote(), timeout=30)

    answered, fallbacks, errors = 0, 0, []
    t0 = time.monotonic()
    while sick in router_replicas(ray_cluster):  # Serve sees 3 failed checks in a row and stops it
        assert time.monotonic() - t0 < 90, "the unhealthy replica was never replaced"
        r = requests.post(url + "/v1/route", json={"features": [0.5] * 5}, timeout=30)
        if r.status_code == 200:
            answered += 1
            fallbacks += r.json()["fallback"]
        else:
            errors.append((r.status_code, r.text[:200]))
        time.sleep(0.05)
    gone = time.monotonic() - t0
    while True:  # a new replica, initialized and serving the same version
        served = served_by_replica(ray_cluster)
        if len(served) == 2 and sick not in served and {s["version"] for s in served.values()} == {version}:
            break
        assert time.monotonic() - t0 < 120, served
        time.sleep(0.3)
    wait_ready(url)
    replaced = time.monotonic() - t0
    for name in served:  # the new replica passes the canary
        ray_cluster.get(ray_cluster.get_actor(name, namespace="serve").check_health.remote(), timeout=30)
    after = [
        requests.post(url + "/v1/route", json={"features": [0.5] * 5}, timeout=30).json() for _ in range(10)
    ]
    deadline = time.monotonic() + 10
    while any(a["fallback"] for a in after[-3:]):  # the breaker may still be open: a probe closes it
        assert time.monotonic() < deadline, after[-3:]
        time.sleep(0.3)
        after.append(requests.post(url + "/v1/route", json={"features": [0.5] * 5}, timeout=30).json())
    assert not errors, errors[:3]
    report(
        "router replica whose model raises on every call",
        answered,
        0,
        f"health check failed; replica stopped after {gone:.1f}s, replaced and ready after {replaced:.1f}s; "
        f"{fallbacks} of {answered} answers meanwhile by the fallback (route=powerful), 0 errors",
    )


# ---------------------------------------------------------------------------------------------
# 4. A router replica killed under constant load from another process


def test_replica_killed_under_load_loses_under_one_percent(app, ray_cluster, tmp_path):
    url = app["url"]
    wait_ready(url)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(some_pairs(app["store"], 4)))
    out, started = tmp_path / "load.json", tmp_path / "started"
    rate, duration = 60, 30
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.load_process",
            "--url",
            url,
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--pairs",
            str(pairs),
            "--out",
            str(out),
            "--started",
            str(started),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        t0 = time.monotonic()
        while not started.exists():
            assert proc.poll() is None and time.monotonic() - t0 < 60, (
                proc.stdout.read() if proc.poll() else "slow"
            )
            time.sleep(0.1)
        victims, replaced, ready = [], [], []
        for at in (8, 18):  # two kills, 10 s apart
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            before = router_replicas(ray_cluster)
            assert len(before) == 2
            victim = sorted(set(before) - set(victims))[0]
            victims.append(victim)
            killed_at = time.monotonic()
            ray_cluster.kill(ray_cluster.get_actor(victim, namespace="serve"), no_restart=True)
            while True:  # a new replica takes its place
                now = router_replicas(ray_cluster)
                if victim not in now and len(now) == 2:
                    break
                assert time.monotonic() - killed_at < 60, now
                time.sleep(0.2)
            replaced.append(time.monotonic() - killed_at)
            ready.append(wait_ready(url) + replaced[-1])
        stdout, _ = proc.communicate(timeout=duration + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    res = json.loads(out.read_text())
    lost = [r for r in res["records"] if not r["ok"]]
    assert res["requests"] == rate * duration
    assert res["achieved_rate"] >= 50, res["achieved_rate"]
    assert res["success_rate"] >= 0.99, (res["lost"], lost[:5])
    served = served_by_replica(ray_cluster)
    assert len(served) == 2 and not set(victims) & set(served)
    assert requests.get(url + "/readyz", timeout=30).status_code == 200
    by_endpoint = {e: sum(r["endpoint"] == e for r in res["records"]) for e in ("/v1/route", "/v1/encode")}
    metrics = requests.get(url + "/metrics", timeout=30).text
    regate = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('tunestack_model_call_retries_total{family="router"}')
    ]
    report(
        f"router replica killed (ray.kill) twice under {res['achieved_rate']:.0f} req/s for {duration}s",
        res["requests"],
        res["lost"],
        f"{by_endpoint}; {res['fallbacks']} route answers by the fallback; in-flight calls re-asked "
        f"by the gateway {int(sum(regate))}; client retries {res['client']['retries']}; replacement replicas "
        f"after {', '.join(f'{r:.1f}' for r in replaced)}s, /readyz ready after "
        f"{', '.join(f'{r:.1f}' for r in ready)}s",
    )


# ---------------------------------------------------------------------------------------------
# Circuit breaker: router replicas dying → "powerful" with fallback, then recovery


def test_router_outage_falls_back_then_recovers(app, ray_cluster):
    stop = threading.Event()
    one = {"features": [0.5] * 5}

    def route():
        r = requests.post(app["url"] + "/v1/route", json=one, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def keep_killing():  # every router replica dies as soon as it exists
        while not stop.is_set():
            for name in router_replicas(ray_cluster):
                try:
                    ray_cluster.kill(ray_cluster.get_actor(name, namespace="serve"), no_restart=True)
                except ValueError:
                    pass
            stop.wait(0.1)

    killer = threading.Thread(target=keep_killing)
    killer.start()
    reasons = set()
    try:
        wait_until(lambda: not router_replicas(ray_cluster) or route()["fallback"], 60, "a first fallback")
        with ThreadPoolExecutor(6) as pool:
            first = list(pool.map(lambda _: route(), range(6)))
        assert all(a["fallback"] and a["route"] == "powerful" for a in first), first

        def opened():
            a = route()
            assert a["fallback"] is True and a["route"] == "powerful", a
            reasons.add(a["reason"])
            return "circuit open" in reasons

        wait_until(opened, 60, "the circuit opening")
    finally:
        stop.set()
        killer.join()
    # replicas come back; a half-open probe succeeds and closes the circuit
    wait_until(lambda: not route()["fallback"], 120, "the router recovering", interval=0.5)
    assert "tunestack_route_fallbacks_total" in requests.get(app["url"] + "/metrics", timeout=30).text
    wait_until(lambda: requests.get(app["url"] + "/readyz", timeout=30).status_code == 200, 60, "/readyz")
    report("every router replica killed as it appears", 1, 0, f"fallback reasons {sorted(reasons)}")


# ---------------------------------------------------------------------------------------------
# 6. Serve listens on loopback only (the default config, no --host)


def _non_loopback_ipv4() -> list[str]:
    import psutil

    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def test_serve_listens_on_loopback_only(app):
    import psutil

    listening = {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == app["port"]
    }
    assert listening == {"127.0.0.1"}, listening
    others = _non_loopback_ipv4()
    for ip in others:
        with pytest.raises(OSError):
            socket.create_connection((ip, app["port"]), timeout=5).close()
    assert requests.get(app["url"] + "/healthz", timeout=30).status_code == 200
    report("connections to Serve from non-loopback addresses", len(others), 0, f"refused on {others}")
