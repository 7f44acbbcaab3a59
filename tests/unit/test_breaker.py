"""The circuit breaker (pure, with a fake clock) and the gateway's fallback built on it (no Ray:
the FastAPI app over a router backend that fails on command)."""

from __future__ import annotations

import asyncio

import pytest

from serve.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def fail(b, n=1):
    for _ in range(n):
        b.record_failure(b.allow())


def test_opens_after_n_consecutive_failures_only():
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=Clock())
    fail(b, 2)
    b.record_success(b.allow())  # a success resets the count
    fail(b, 2)
    assert b.state == CLOSED and b.allow()
    fail(b)
    assert b.state == OPEN and b.allow() is None and b.times_opened == 1


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    fail(b)
    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.2
    probe = b.allow()
    assert probe and probe.probe and b.state == HALF_OPEN
    assert not b.allow() and not b.allow()  # everyone else: fallback while the probe runs
    b.record_success(probe)
    assert b.state == CLOSED and b.allow() and b.allow()


def test_only_the_probe_closes_an_open_circuit():
    """A call allowed before the circuit opened that answers late says nothing about now."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=clock)
    early, late = b.allow(), b.allow()
    b.record_failure(early)
    fail(b)
    assert b.state == OPEN
    b.record_success(late)  # while OPEN: ignored
    assert b.state == OPEN
    clock.t += 5
    probe = b.allow()
    b.record_success(late)  # while HALF_OPEN, but not the probe: ignored
    assert b.state == HALF_OPEN
    b.record_failure(late)  # nor does its failure re-open the circuit
    assert b.state == HALF_OPEN
    b.record_success(probe)
    assert b.state == CLOSED


def test_a_failure_from_an_earlier_closed_spell_does_not_count():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=clock)
    stale = b.allow()
    fail(b, 2)
    clock.t += 5
    b.record_success(b.allow())  # the probe closes it: a new spell
    b.record_failure(stale)
    fail(b)
    assert b.state == CLOSED and b.snapshot()["consecutive_failures"] == 1


def test_failed_probe_reopens_for_another_full_timeout():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=clock)
    fail(b, 2)
    clock.t += 5
    probe = b.allow()
    b.record_failure(probe)
    assert b.state == OPEN and b.times_opened == 2
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    assert b.allow() and b.state == HALF_OPEN


def test_a_forgotten_probe_expires_and_a_released_one_frees_the_slot():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    fail(b)
    clock.t += 5
    forgotten = b.allow()  # probe taken, verdict never recorded
    assert forgotten
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    probe = b.allow()  # expired: a new probe
    assert probe
    b.record_success(forgotten)  # the expired probe's late verdict does not count
    assert b.state == HALF_OPEN
    b.release(probe)
    assert b.allow()  # released: the next caller probes at once


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"failure_threshold": 1.5}, {"reset_timeout_s": 0}]
)
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


# ---------------------------------------------------------------------------------------------
# The gateway's fallback over a router backend that fails on command


class FlakyRouter:
    family = "router"

    def __init__(self):
        self.mode = "ok"  # "ok" | "error" | "slow"
        self.calls = 0

    async def predict(self, instances):
        from serve.models import InputError

        self.calls += 1
        if any(len(i.get("features", [])) != 5 for i in instances):
            raise InputError("features has 4 values; the model takes 5")
        if self.mode == "error":
            raise RuntimeError("replica died")
        if self.mode == "slow":
            await asyncio.sleep(30.0)  # cancelled by the gateway's timeout
        return [
            {"route": "lightweight", "probability": 0.99, "uncertainty": 0.01, "model_version": "v0001"}
            for _ in instances
        ]

    async def info(self):
        return {"family": "router", "loaded": True, "version": "v0001"}

    async def stage(self, version):
        return {"ok": False, "error": "not in this test"}


@pytest.fixture
def flaky(tmp_path):
    from fastapi.testclient import TestClient

    from serve.api import make_api
    from serve.gateway import GatewayService
    from serve.schemas import AppArgs

    router = FlakyRouter()
    args = AppArgs(
        registry_root=str(tmp_path),
        families={"router": "route"},
        breaker={"failure_threshold": 2, "reset_timeout_s": 60.0, "call_timeout_s": 1.0},
    )
    service = GatewayService(args, {"router": router})
    with TestClient(make_api(service)) as client:
        yield client, router, service


def _route(client):
    r = client.post("/v1/route", json={"features": [0.5] * 5})
    assert r.status_code == 200, r.text
    return r.json()


def test_router_failures_fall_back_to_powerful_then_recover(flaky):
    client, router, service = flaky
    assert _route(client)["route"] == "lightweight"
    router.mode = "error"
    first = _route(client)  # a failing call is answered by the fallback, not a 5xx
    assert first["fallback"] is True and first["route"] == "powerful" and first["reason"] == "router error"
    _route(client)
    assert service.breaker.state == OPEN
    calls = router.calls
    for _ in range(5):
        body = _route(client)
        assert body["fallback"] is True and body["reason"] == "circuit open" and body["route"] == "powerful"
    assert router.calls == calls  # open: the router is not called at all
    router.mode = "ok"
    service.breaker._opened_at -= 61.0  # as if reset_timeout_s had passed
    body = _route(client)  # the half-open probe succeeds
    assert body["fallback"] is False and service.breaker.state == CLOSED
    assert "tunestack_route_fallbacks_total" in client.get("/metrics").text


def test_timeouts_count_as_failures(flaky):
    client, router, service = flaky
    router.mode = "slow"
    assert _route(client)["reason"] == "router timeout"
    assert _route(client)["reason"] == "router timeout"
    assert service.breaker.state == OPEN
    body = client.post("/v1/route", json={"instances": [{"features": [0.5] * 5}] * 3}).json()
    assert [p["route"] for p in body["predictions"]] == ["powerful"] * 3


def test_bad_input_is_422_and_does_not_trip_the_breaker(flaky):
    client, router, service = flaky
    for _ in range(5):
        assert client.post("/v1/route", json={"features": ["x"]}).status_code == 422
    assert service.breaker.state == CLOSED and router.calls == 0


def test_bad_input_on_the_probe_neither_closes_nor_holds_the_circuit(flaky):
    """A 422 says nothing about the router's health: the circuit stays half-open, and the next
    request is the probe."""
    client, router, service = flaky
    router.mode = "error"
    _route(client)
    _route(client)
    assert service.breaker.state == OPEN
    router.mode = "ok"
    service.breaker._opened_at -= 61.0  # as if reset_timeout_s had passed
    r = client.post("/v1/route", json={"features": [0.5] * 4})
    assert r.status_code == 422 and "the model takes 5" in r.text
    assert service.breaker.state == HALF_OPEN
    assert _route(client)["fallback"] is False and service.breaker.state == CLOSED


def test_one_failed_gathered_call_counts_as_one_failure(tmp_path):
    """Every request of a gathered model call that failed gets the same ModelCallError: the breaker
    counts the call once, not once per request."""
    from serve.gateway import GatewayService
    from serve.hosting import ModelCallError
    from serve.schemas import AppArgs

    class Gathered(FlakyRouter):
        def __init__(self):
            super().__init__()
            self.call = 7

        async def predict(self, instances):
            await asyncio.sleep(0)
            raise ModelCallError("error", self.call, "the batch failed")

    router = Gathered()
    args = AppArgs(
        registry_root=str(tmp_path), families={"router": "route"}, breaker={"failure_threshold": 3}
    )
    service = GatewayService(args, {"router": router})

    async def burst(n):
        return await asyncio.gather(*(service.route([{"features": [0.5] * 5}], 0.0) for _ in range(n)))

    answers = asyncio.run(burst(16))
    assert all(a[0]["fallback"] and a[0]["reason"] == "router error" for a in answers)
    assert service.breaker.snapshot()["consecutive_failures"] == 1 and service.breaker.state == CLOSED
    router.call = 8
    asyncio.run(burst(16))
    assert service.breaker.snapshot()["consecutive_failures"] == 2


def test_a_failed_model_call_is_one_error_for_every_request_it_carried(tmp_path, monkeypatch):
    from pipeline.registry.registry import Registry
    from serve.hosting import InProcessBackend, ModelCallError
    from serve.models import ModelHost
    from tests.support.serve_world import register, train_router

    reg = Registry(tmp_path / "registry")
    register(reg, "router", train_router(tmp_path / "r1", steps=10), promote=True)
    host = ModelHost("router", "route", str(reg.root))
    host.sync()
    backend = InProcessBackend(host, call_timeout_s=5.0)
    items = [host.prepare([{"features": [0.5] * 5}]) for _ in range(4)]
    assert all(len(out) == 1 for out in asyncio.run(backend._run_many(items)))

    def broken(_items):
        raise RuntimeError("the model raised")

    monkeypatch.setattr(ModelHost, "run", staticmethod(broken))
    outs = asyncio.run(backend._run_many(items))
    assert all(isinstance(o, ModelCallError) and o is outs[0] for o in outs) and outs[0].kind == "error"
    assert backend.batches["batches"] == 2 and backend.batches["requests"] == 8


def test_small_lean_engine_calls_run_on_the_event_loop(tmp_path, monkeypatch):
    """A lean-engine call of a few instances takes tens of µs: it runs on the loop, not on a thread
    (whose hop costs more than the model); torch models and large batches still go to a thread."""
    from types import SimpleNamespace

    import serve.hosting as hosting
    from pipeline.registry.registry import Registry
    from serve.models import ModelHost
    from tests.support.serve_world import register, train_router

    reg = Registry(tmp_path / "registry")
    register(reg, "router", train_router(tmp_path / "r1", steps=10), promote=True)
    host = ModelHost("router", "route", str(reg.root))
    host.sync()
    one = host.prepare([{"features": [0.5] * 5}])
    assert hosting.runs_inline([one] * 4)
    assert not hosting.runs_inline(
        [host.prepare([{"features": [0.5] * 5}] * (hosting.INLINE_MAX_INSTANCES + 1))]
    )
    assert not hosting.runs_inline([(SimpleNamespace(engine=None), one[1])])  # a torch model

    async def no_thread(*_a, **_k):
        raise AssertionError("a small lean call went to a thread")

    monkeypatch.setattr(hosting.asyncio, "to_thread", no_thread)
    backend = hosting.InProcessBackend(host, call_timeout_s=5.0)
    outs = asyncio.run(backend._run_many([one] * 4))
    assert [len(o) for o in outs] == [1] * 4 and all("probability" in o[0] for o in outs)
