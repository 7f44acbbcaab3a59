"""POST /v1/jobs for real: the Serve app submits `tunestack tune` to the session's Ray cluster through
the Jobs SDK (dashboard found from inside the replica, Ray token auth as the cluster has it), the
job registers and promotes a router, GET /v1/jobs/{id} reports the version, and the running app
serves it. Real HTTP on 127.0.0.1.

The app starts with an empty registry: the router it ends up serving is the one the job trained.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from pipeline.synth import synth_routing
from tests.support import free_port

pytestmark = pytest.mark.ray
TOKEN = "jobs-integration-token"
JOB_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def jobs_app(ray_cluster, tmp_path_factory):
    from ray import serve

    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict
    from serve.gateway import token_sha256

    home = tmp_path_factory.mktemp("jobs-it") / "home"
    (home / "registry").mkdir(parents=True)
    synth_routing(str(home / "routing"), rows=3000, seed=3, noise=0.1)
    port = free_port()
    config = serve_config_dict(str(DEFAULT_CONFIG), "127.0.0.1", port)
    args = config["applications"][0]["args"]
    args.update(
        registry_root=str(home / "registry"),
        families={"router": "route"},
        admin_token_sha256=token_sha256(TOKEN),
        model_num_cpus=0.1,
        gateway_num_cpus=0.1,
        poll_interval_s=0.5,
    )
    config["applications"][0]["deployments"] = [  # one hop: the Gateway holds the router
        {"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    ]
    deploy(config, timeout=480)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "auth": {"Authorization": f"Bearer {TOKEN}"}, "home": home}
    finally:
        serve.shutdown()


def test_submit_a_tuning_job_and_serve_what_it_registered(jobs_app):
    url, auth = jobs_app["url"], jobs_app["auth"]
    # refusals first: no token, a path out of tune_configs/, a missing file, an unknown id
    assert (
        requests.post(url + "/v1/jobs", json={"config": "tune_configs/router.yaml"}, timeout=30).status_code
        == 401
    )
    r = requests.post(
        url + "/v1/jobs", json={"config": "tune_configs/../README.md"}, headers=auth, timeout=30
    )
    assert r.status_code == 422 and "tune_configs/FILE.yaml" in r.text, r.text
    r = requests.post(url + "/v1/jobs", json={"config": "tune_configs/nope.yaml"}, headers=auth, timeout=30)
    assert r.status_code == 404, r.text
    r = requests.get(url + "/v1/jobs/tunestack-tune-0123456789abcdef", headers=auth, timeout=30)
    assert r.status_code == 404 and "unknown job" in r.text, r.text
    # no model yet: the router falls back or is not ready
    assert requests.get(url + "/readyz", timeout=30).status_code == 503

    overrides = [
        "train.epochs=2",
        "train.patience=0",
        "tune.num_samples=1",
        "tune.max_concurrent=1",
        "tune.asha.grace_period=1",
        "tune.asha.max_t=2",
    ]
    r = requests.post(
        url + "/v1/jobs",
        json={"config": "tune_configs/router.yaml", "promote": True, "overrides": overrides},
        headers=auth,
        timeout=60,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert job_id.startswith("tunestack-tune-") and r.json()["status"] == "PENDING"

    seen, t0 = [], time.monotonic()
    while True:
        r = requests.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        job = r.json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.monotonic() - t0 < JOB_TIMEOUT_S, f"job still {job['status']} after {JOB_TIMEOUT_S}s"
        time.sleep(0.5)  # poll interval; JOB_TIMEOUT_S bounds the wait
    assert job["status"] == "SUCCEEDED", (job.get("message"), job.get("logs_tail"))
    assert job["config"] == "tune_configs/router.yaml" and job["promote"] is True and job["set"] == overrides
    assert job["registered"] == {"family": "router", "version": "v0001", "stage": "production"}, job
    assert job["result"]["ok"] is True and job["result"]["best"]["metric"] > 0.5
    assert Path(jobs_app["home"], "registry", "router", "v0001", "version.json").is_file()
    from serve.client import TunestackClient

    assert (
        TunestackClient(url, token=TOKEN).job(job_id)["registered"] == job["registered"]
    )  # the Python client

    # the promotion the job made reaches the running app through the registry watch
    deadline = time.monotonic() + 30
    while True:
        r = requests.post(url + "/v1/route", json={"features": [0.5] * 5}, timeout=30)
        if r.status_code == 200 and r.json().get("model_version") == "v0001":
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert requests.get(url + "/readyz", timeout=30).status_code == 200
    print(
        f"job {job_id}: {' -> '.join(seen)} in {time.monotonic() - t0:.0f}s; registered {job['registered']}"
    )
