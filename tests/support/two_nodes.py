"""A two-node `ray.cluster_utils.Cluster` in a process of its own, running a test's script body.

The session's shared Ray (`ray_cluster`) stays connected in the test's process, and a process can
hold one Ray connection, so a test that needs two nodes starts a child: the child builds the
cluster (a head and a 2-CPU worker node, each on free ports), connects to it BY ADDRESS, runs
`body` (Python with `cluster`, `ray`, `sys` and a `result` dict holding the alive node IDs in
scope), shuts everything down and prints `result` as JSON.

    result = run_two_nodes(tmp_path, BODY, [arg, ...], env, head_cpus=1, timeout=300)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import free_ports
from tests.support.procs import REPO, end_session

_SCRIPT = r"""
import json, sys
import ray
import ray._common.utils
from ray.cluster_utils import Cluster

ports = json.loads(sys.argv[1])  # dashboard, the head's agent, the worker node's agent
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": {head_cpus}, "include_dashboard": True, "dashboard_host": "127.0.0.1",
    "dashboard_port": ports[0], "dashboard_agent_listen_port": ports[1]})
# Cluster advertises itself in /tmp/ray/ray_current_cluster, where any plain ray.init() on this
# machine would find and join it; this process connects by address, so take the notice down.
ray._common.utils.reset_ray_address()
cluster.add_node(num_cpus=2, dashboard_agent_listen_port=ports[2])
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
try:
    result = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
{body}
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(result))
"""


def run_two_nodes(
    tmp_path: Path, body: str, args: list[str], env: dict, head_cpus: int = 2, timeout: float = 300
) -> dict:
    """Run `body` against a fresh two-node cluster in a child process (script arguments `args`
    follow the ports, from sys.argv[2]); its `result`. Fails with the child's output when it
    printed none."""
    script = tmp_path / "two_nodes.py"
    source = _SCRIPT.replace("{head_cpus}", str(head_cpus))
    script.write_text(source.replace("{body}", textwrap.indent(textwrap.dedent(body).strip(), " " * 4)))
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(free_ports(3)), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        end_session(proc)
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    assert line, output[-4000:]
    return json.loads(line[len("RESULT ") :])
