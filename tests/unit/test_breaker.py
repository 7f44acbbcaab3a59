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


def test_opens_after_n_consecutive_failures_only():
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=Clock())
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    b.record_success()  # a success resets the count
    for _ in range(2):
        b.record_failure()
    assert b.state == CLOSED and b.allow()
    b.record_failure()
    assert b.state == OPEN and not b.allow() and b.times_opened == 1


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    b.record_failure()
    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.2
    assert b.allow() and b.state == HALF_OPEN  # the probe
    assert not b.allow() and not b.allow()  # everyone else: fallback while the probe runs
    b.record_success()
    assert b.state == CLOSED and b.allow() and b.allow()


def test_failed_probe_reopens_for_another_full_timeout():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.t += 5
    assert b.allow()
    b.record_failure()
    assert b.state == OPEN and b.times_opened == 2
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    assert b.allow() and b.state == HALF_OPEN


def test_a_forgotten_probe_expires_and_a_released_one_frees_the_slot():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    b.record_failure()
    clock.t += 5
    assert b.allow()  # probe taken, verdict never recorded
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    assert b.allow()  # expired: a new probe
    b.release()
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
        self.calls += 1
        if self.mode == "error":
            raise RuntimeError("replica died")
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        return {
            "status": 200,
            "outputs": [
                {"route": "lightweight", "probability": 0.99, "uncertainty": 0.01, "model_version": "v0001"}
                for _ in instances
            ],
        }

    async def info(self):
        return {"family": "router", "loaded": True, "version": "v0001"}

    async def stage(self, version):
        return {"ok": False, "error": "not in this test"}


@pytest.fixture
def flaky(tmp_path):
    from fastapi.testclient import TestClient

    from serve.app import GatewayService, make_api
    from serve.schemas import AppArgs

    router = FlakyRouter()
    args = AppArgs(
        registry_root=str(tmp_path),
        families={"router": "route"},
        breaker={"failure_threshold": 2, "reset_timeout_s": 0.3, "call_timeout_s": 0.1},
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
    service.breaker._opened_at -= 1.0  # as if reset_timeout_s had passed
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
