"""`tunestack tune` on a cluster the test starts itself: a two-node `ray.cluster_utils.Cluster` whose
trials land on both nodes, in its own process (the session's shared Ray, `ray_cluster`, stays
connected in this one; nothing here calls `ray stop`). A `ray start --head` cluster running the
experiment as a `ray job submit` job (token auth on) is the README's `cluster` block, run by
tests/integration/test_readme.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.synth import synth_routing
from tests.support.procs import REPO, venv_env
from tests.support.two_nodes import run_two_nodes

pytestmark = pytest.mark.ray

TWO_NODES = """
from pipeline.train.checkpoint import load_checkpoint
from pipeline.tune.run import run_tune

overrides = ["train.epochs=2", "tune.num_samples=2", "tune.asha=null"]
out = run_tune(sys.argv[2], name="two-nodes", overrides=overrides)
result["placed"] = {
    t["trial"]: sorted({a["node"] for a in load_checkpoint(t["checkpoint"]).meta["attempts"]})
    for t in out.trials
}
result["errors"] = [t["error"] for t in out.trials if t["error"]]
result["registered"] = out.registered["version"] if out.registered else None
"""


def test_two_node_cluster_places_trials_on_both_nodes(tmp_path):
    home = Path(os.environ["TUNESTACK_HOME"])
    synth_routing(str(home / "routing"), rows=4000, seed=1, noise=0.1)
    config = str(REPO / "tune_configs" / "router.yaml")
    result = run_two_nodes(tmp_path, TWO_NODES, [config], venv_env(TUNESTACK_HOME=home), timeout=480)
    assert len(result["nodes"]) == 2 and not result["errors"], result
    assert len(result["placed"]) == 4  # 2 planned hidden sizes x 2 samples
    used = {node for nodes in result["placed"].values() for node in nodes}
    assert used == set(result["nodes"]), result  # trials ran on both nodes
    assert result["registered"] == "v0001"
