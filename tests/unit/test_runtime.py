"""pipeline.runtime without a cluster: nothing happens at import, which Ray a command gets (local or
$RAY_ADDRESS), a refused connection as a user error, the retry of a slow start, free ports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline import runtime
from pipeline.errors import UserError
from tests.support import REPO


def test_importing_the_pipeline_starts_nothing_and_sets_nothing():
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import pipeline.runtime, pipeline.train, pipeline.tune.run, pipeline.cli\n"
        "print(json.dumps({'changed': sorted(k for k in os.environ if os.environ.get(k) != before.get(k)),"
        " 'ray_initialized': 'ray' in sys.modules and sys.modules['ray'].is_initialized()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"changed": [], "ray_initialized": False}


class FakeRay:
    """Records ray.init calls; raises the queued errors first."""

    def __init__(self, errors=()):
        self.errors, self.calls, self.shutdowns, self.initialized = list(errors), [], 0, False

    def init(self, **kwargs):
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        self.initialized = True

    def is_initialized(self):
        return self.initialized

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    fake = FakeRay()
    for name in ("init", "is_initialized", "shutdown"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    return fake


def test_a_command_starts_a_fresh_local_cluster_with_the_train_poll_set(fake_ray, monkeypatch):
    import os

    runtime.ensure_ray()
    (call,) = fake_ray.calls
    assert call["address"] == "local"  # never someone else's `ray start` cluster
    assert call["dashboard_host"] == "127.0.0.1" and call["include_dashboard"] is True
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"  # inherited by the cluster
    runtime.ensure_ray()
    assert len(fake_ray.calls) == 1  # already connected: nothing more


def test_ray_address_is_joined_and_a_refusal_says_what_to_check(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    fake_ray.errors = [ConnectionError("could not reach the GCS")]
    with pytest.raises(
        runtime.RayConnectError, match=r"cannot join the Ray cluster at 10\.0\.0\.9:6379"
    ) as e:
        runtime.ensure_ray()
    assert isinstance(e.value, UserError) and "ray status" in str(e.value)
    assert fake_ray.calls == [{"address": "10.0.0.9:6379", "log_to_driver": False}]
    fake_ray.errors = [RuntimeError("Failed to authenticate: invalid token")]
    with pytest.raises(runtime.RayConnectError, match="RAY_AUTH_MODE=token"):
        runtime.ensure_ray()


def test_a_slow_node_start_is_tried_once_more(fake_ray):
    slow = Exception("The current node timed out during startup. This could happen because ...")
    fake_ray.errors = [slow]
    runtime.start_local(num_cpus=2)
    assert len(fake_ray.calls) == 2 and fake_ray.shutdowns == 1 and fake_ray.initialized
    fake_ray.initialized, fake_ray.calls = False, []
    fake_ray.errors = [slow, slow]
    with pytest.raises(Exception, match="timed out during startup"):
        runtime.start_local(num_cpus=2)
    assert len(fake_ray.calls) == 2  # twice, not forever
    fake_ray.errors = [ValueError("num_cpus must be >= 0")]
    with pytest.raises(ValueError):
        runtime.start_local(num_cpus=-1)  # any other error is not retried


def test_free_ports_are_distinct_and_bindable():
    import socket

    ports = runtime.free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
