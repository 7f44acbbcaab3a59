"""POST /v1/jobs and GET /v1/jobs/{id} refuse what they must before anything reaches Ray (no Ray here).

The submission itself (Jobs SDK → `tunestack tune` → registered version) is in
tests/integration/test_serve_jobs.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "unit-jobs-token"


@pytest.fixture()
def api(tmp_path, monkeypatch, request):
    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    configs = tmp_path / "tune_configs"
    configs.mkdir()
    shutil.copy(REPO / "tune_configs" / "router.yaml", configs / "router.yaml")
    (configs / "broken.yaml").write_text("name: router\nmodel: {arch: nope}\n")
    (tmp_path / "outside.yaml").write_text((REPO / "tune_configs" / "router.yaml").read_text())
    (configs / "escape.yaml").symlink_to(tmp_path / "outside.yaml")
    (configs / "sub").mkdir()
    monkeypatch.setenv("TUNESTACK_ADMIN_TOKEN", TOKEN)
    home = tmp_path / "home"
    app = make_local_api(
        {
            "registry_root": str(home / "registry"),
            "families": {"router": "route"},
            "jobs_configs_dir": str(configs),
            # A dashboard nobody listens on: whatever Ray this process may be connected
            # to (the integration tests' session cluster), nothing is ever submitted.
            "jobs_dashboard_address": getattr(request, "param", f"http://127.0.0.1:{free_port()}"),
        }
    )
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


BAD_CONFIGS = [
    ("/etc/passwd", 422, "tune_configs/FILE.yaml"),
    ("tune_configs/../pyproject.toml", 422, "no absolute path"),
    ("tune_configs/..%2f..%2fx.yaml", 422, "tune_configs/FILE.yaml"),
    ("tune_configs/sub/router.yaml", 422, "sub-folder"),
    ("tune_configs/./router.yaml", 422, "tune_configs/FILE.yaml"),
    ("router.yaml", 422, "tune_configs/FILE.yaml"),
    ("tune_configs/escape.yaml", 422, "outside tune_configs"),
    ("tune_configs/nope.yaml", 404, "no such file"),
    ("tune_configs/broken.yaml", 422, "not a valid tune file"),
]


@pytest.mark.parametrize("config, status, fragment", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_config_must_be_a_valid_file_directly_in_tune_configs(api, config, status, fragment):
    r = api.post("/v1/jobs", json={"config": config})
    assert r.status_code == status and fragment in r.text, (r.status_code, r.text)


def test_overrides_and_body_are_validated(api):
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "overrides": ["train.epochs"]})
    assert r.status_code == 422 and "KEY=VALUE" in r.text, r.text
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "overrides": ["train.nope=1"]})
    assert r.status_code == 422 and "train.nope" in r.text, r.text
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "overrides": ["a=1\nb=2"]})
    assert r.status_code == 422, r.text
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "promote": "yes please"})
    assert r.status_code == 422, r.text
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "extra": 1})
    assert r.status_code == 422 and "extra" in r.text, r.text


def test_jobs_need_the_admin_token(api):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        assert (
            api.post("/v1/jobs", json={"config": "tune_configs/router.yaml"}, headers=headers).status_code
            == 401
        )
        assert api.get("/v1/jobs/tunestack-tune-0123456789abcdef", headers=headers).status_code == 401


def test_unknown_job_ids_are_404_without_asking_ray(api):
    for job_id in ("nope", "raysubmit_abc", "tunestack-tune-xyz", "tunestack-tune-" + "0" * 17):
        r = api.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and "unknown job" in r.text, r.text


def test_a_valid_request_to_an_unreachable_jobs_api_is_503_naming_it(api):
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "overrides": ["train.epochs=1"]})
    assert r.status_code == 503 and "Jobs API at http://127.0.0.1:" in r.text and "unavailable" in r.text, (
        r.text
    )


@pytest.mark.parametrize("api", [None], indirect=True)  # no address: the cluster this process runs in
def test_a_valid_request_without_a_cluster_is_503_naming_ray(api):
    import ray

    if ray.is_initialized():
        pytest.skip(
            "this process is connected to a Ray cluster (an integration test's): the no-cluster case "
            "cannot happen here"
        )
    r = api.post("/v1/jobs", json={"config": "tune_configs/router.yaml", "overrides": ["train.epochs=1"]})
    assert r.status_code == 503 and "Ray cluster" in r.text, r.text


def test_jobs_must_register_into_the_served_registry(tmp_path):
    from serve.jobs import JobError, job_home

    assert job_home(str(tmp_path / "h" / "registry"), None) == (tmp_path / "h").resolve()
    with pytest.raises(JobError) as e:
        job_home(str(tmp_path / "elsewhere"), None)
    assert e.value.status == 409 and "<home>/registry" in e.value.detail
    with pytest.raises(JobError) as e:  # a registry in a bucket: said, not a nonsense local path
        job_home("s3://bucket/tunestack/registry", None)
    assert e.value.status == 409 and "TUNESTACK_STORAGE" in e.value.detail


def test_tune_result_file_reports_a_refused_config(tmp_path):
    from pipeline.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: router\n")
    result = tmp_path / "jobs" / "r.json"
    assert main(["tune", "--config", str(bad), "--result-file", str(result)]) == 2
    out = json.loads(result.read_text())
    assert out["ok"] is False and out["registered"] is None and "data: section is required" in out["error"]


class _StartingJobHead:
    """A Jobs API over real HTTP that answers as Ray's job head does while its node's job agent has
    not registered yet (ray.dashboard.modules.job.job_head: 500 "No available agent to submit job,
    please try again later.") for the first `busy` submissions, then accepts."""

    def __init__(self, busy: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        head = self
        self.busy, self.submissions = busy, []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: str, kind: str = "application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                assert self.path == "/api/version", self.path
                self._answer(200, json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}))

            def do_POST(self):
                assert self.path == "/api/jobs/", self.path
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                head.submissions.append(request)
                if len(head.submissions) <= head.busy:
                    self._answer(
                        500, "No available agent to submit job, please try again later.", "text/plain"
                    )
                else:
                    sid = request["submission_id"]
                    self._answer(200, json.dumps({"job_id": sid, "submission_id": sid}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("busy, wait_s, status", [(2, 60.0, 202), (10**6, 1.0, 503)])
def test_submission_asks_again_while_the_job_agent_is_starting(tmp_path, monkeypatch, busy, wait_s, status):
    import serve.jobs
    from serve.jobs import JobError, JobLauncher

    monkeypatch.setattr(serve.jobs, "AGENT_WAIT_S", wait_s)
    head = _StartingJobHead(busy)
    try:
        launcher = JobLauncher(str(tmp_path / "home" / "registry"), dashboard_address=head.url)
        try:
            out = launcher.submit("tune_configs/router.yaml", overrides=["train.epochs=1"])
        except JobError as e:  # past the wait: 503 with Ray's reason
            assert status == 503 and e.status == 503 and "No available agent" in e.detail, e.detail
            assert len(head.submissions) >= 2  # it did ask again before giving up
        else:
            assert status == 202 and len(head.submissions) == busy + 1
            assert {s["submission_id"] for s in head.submissions} == {out["job_id"]}  # the same job each time
    finally:
        head.close()
