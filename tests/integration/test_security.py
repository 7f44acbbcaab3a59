"""Security drills on the real local Ray (issue 6): the local cluster's dashboard on loopback with
token authentication on. (No pickle among the artifacts of a whole run is checked on the README's
run: tests/integration/test_readme.py::test_the_readme_run_wrote_no_pickle.)

Serve's loopback bind and the admin token are drilled in test_chaos_serve.py / test_serve.py,
cluster.yaml's ingress in tests/unit/test_cluster_yaml.py, refusing pickled weights in
tests/unit/test_security.py and test_train.py::test_loader_refuses_pickles.
"""

from __future__ import annotations

import socket

import pytest
import requests

pytestmark = [pytest.mark.ray, pytest.mark.chaos]


def _dashboard() -> tuple[str, int]:
    import ray

    host, port = ray._private.worker.get_dashboard_url().split(":")
    return host, int(port)


def test_local_ray_dashboard_on_loopback_with_token_auth(ray_cluster):
    import psutil
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from pipeline.runtime import LOCAL_RAY

    assert LOCAL_RAY["dashboard_host"] == "127.0.0.1" and "RAY_AUTH_MODE" not in LOCAL_RAY
    assert is_token_auth_enabled()  # Ray >= 2.59's default for a local ray.init(); ensure_ray sets it too
    host, port = _dashboard()
    assert host == "127.0.0.1"
    listening = {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}, listening
    # The Jobs API (what runs code on the cluster) refuses a caller without the token
    r = requests.get(f"http://{host}:{port}/api/jobs/", timeout=30)
    assert r.status_code in (401, 403), (r.status_code, r.text[:200])
    r = requests.get(f"http://{host}:{port}/api/jobs/", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code in (401, 403), (r.status_code, r.text[:200])
    for ip in {
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    }:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=5).close()
