"""`tunestack tune` on clusters a test starts itself: a `ray start --head` cluster that runs the
experiment as a `ray job submit` job (token auth on), and a two-node `ray.cluster_utils.Cluster`
whose trials land on both nodes. Both run in their own processes: the session's shared Ray
(`ray_cluster`) stays connected in this one, and nothing here calls `ray stop`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.registry import Registry
from pipeline.synth import synth_routing
from pipeline.train.checkpoint import load_checkpoint
from tests.support import free_ports
from tests.support.procs import REPO, VENV_BIN, end_session, venv_env

pytestmark = pytest.mark.ray

SMALL_TUNE = [
    "--set",
    "train.epochs=2",
    "--set",
    "tune.num_samples=1",
    "--set",
    "tune.asha.grace_period=1",
    "--set",
    "tune.asha.max_t=2",
]  # router.yaml: 2 planned hidden sizes -> 2 trials


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on free ports, dashboard on 127.0.0.1; ended with its whole session."""
    gcs, dash, client, agent, agent_grpc = free_ports(5)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = open(tmp_path / "ray_head.log", "w")
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--port",
        str(gcs),
        "--dashboard-port",
        str(dash),
        "--dashboard-host",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--temp-dir",
        temp_dir,
    ]
    proc = subprocess.Popen(cmd, env=venv_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while _http_status(f"{url}/api/version") is None:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(
                    f"ray start --head did not come up:\n{(tmp_path / 'ray_head.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield {"url": url, "cmd": cmd}
    finally:
        end_session(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_tune_config_to_completion(ray_head):
    home = Path(os.environ["TUNESTACK_HOME"])  # this test's home (tests/conftest.py); the job gets it too
    synth_routing(str(home / "routing"), rows=4000, seed=1, noise=0.1)

    # Token auth is on: the Jobs API refuses a request without the token ...
    assert _http_status(f"{ray_head['url']}/api/jobs/") in (401, 403)
    # ... and the client sends it (~/.ray/auth_token) when RAY_AUTH_MODE=token.
    submit = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head["url"],
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps({"env_vars": {"TUNESTACK_HOME": str(home)}}),
        "--",
        "tunestack",
        "tune",
        "--config",
        "tune_configs/router.yaml",
        "--name",
        "job-router",
        *SMALL_TUNE,
    ]
    done = subprocess.run(
        submit, cwd=REPO, env=venv_env(RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=480
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    job = re.search(r"Job '(raysubmit_\w+)' succeeded", out)
    assert job, out[-4000:]
    status = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "status", "--address", ray_head["url"], job.group(1)],
        env=venv_env(RAY_AUTH_MODE="token"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"Job '{job.group(1)}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    assert Registry().versions("router") == ["v0001"]
    rec = Registry().get("router", "v0001")
    assert rec["version"] == "v0001" and rec["stage"] == "candidate"
    assert Registry().verify() == []
    assert rec["source"].startswith(str(home / "runs" / "tune" / "job-router"))  # the job's best trial
    assert load_checkpoint(rec["checkpoint"]).meta["metrics"]["val_accuracy"] > 0.5


TWO_NODES = r"""
import json, sys
import ray
import ray._common.utils
from ray.cluster_utils import Cluster
from pipeline.train.checkpoint import load_checkpoint
from pipeline.tune.run import run_tune

config, dash, agents = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash,
    "dashboard_agent_listen_port": agents[0]})
# Cluster advertises itself in /tmp/ray/ray_current_cluster, where any plain ray.init() on this
# machine would find and join it; this process connects by address, so take the notice down.
ray._common.utils.reset_ray_address()
cluster.add_node(num_cpus=2, dashboard_agent_listen_port=agents[1])
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
try:
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    out = run_tune(config, name="two-nodes", overrides=["train.epochs=2", "tune.num_samples=2", "tune.asha=null"])
    placed = {t["trial"]: sorted({a["node"] for a in load_checkpoint(t["checkpoint"]).meta["attempts"]})
              for t in out.trials}
    errors = [t["error"] for t in out.trials if t["error"]]
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps({"nodes": nodes, "placed": placed, "errors": errors,
                              "registered": out.registered["version"] if out.registered else None}))
"""


def test_two_node_cluster_places_trials_on_both_nodes(tmp_path):
    home = Path(os.environ["TUNESTACK_HOME"])
    synth_routing(str(home / "routing"), rows=4000, seed=1, noise=0.1)
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    dash, *agents = free_ports(3)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(REPO / "tune_configs" / "router.yaml"),
            str(dash),
            json.dumps(agents),
        ],
        cwd=REPO,
        env=venv_env(TUNESTACK_HOME=home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=480)
    finally:
        end_session(proc)
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    assert line, output[-4000:]
    result = json.loads(line[len("RESULT ") :])
    assert len(result["nodes"]) == 2 and not result["errors"], result
    assert len(result["placed"]) == 4  # 2 planned hidden sizes x 2 samples
    used = {node for nodes in result["placed"].values() for node in nodes}
    assert used == set(result["nodes"]), result  # trials ran on both nodes
    assert result["registered"] == "v0001"
