"""`tunestack tune` on a cluster the test starts itself: a two-node `ray.cluster_utils.Cluster` whose
trials land on both nodes, in its own process (the session's shared Ray, `ray_cluster`, stays
connected in this one; nothing here calls `ray stop`). A `ray start --head` cluster running the
experiment as a `ray job submit` job (token auth on) is the README's `cluster` block, run by
tests/integration/test_readme.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.synth import synth_routing
from tests.support import free_ports
from tests.support.procs import REPO, end_session, venv_env

pytestmark = pytest.mark.ray

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
