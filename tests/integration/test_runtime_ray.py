"""pipeline.runtime on a real local cluster, with another Ray on the same machine."""

from __future__ import annotations

import os

import pytest

from tests.support.procs import RayHead, venv_env

pytestmark = pytest.mark.ray


def test_workers_ask_their_own_cluster_with_another_ray_on_the_machine(ray_cluster, tmp_path):
    """Ray Train's PlacementGroupCleaner calls the state API from a worker with no address; with a
    second Ray on the machine that call failed ("Found multiple active Ray instances") and finished
    trials kept their CPUs. A local cluster's workers are pinned to it (pipeline.runtime)."""
    ray = ray_cluster
    env = venv_env(HOME=str(tmp_path), RAY_AUTH_MODE="disabled")  # nothing here connects to it
    other = RayHead(tmp_path / "other-head.log", env, num_cpus=1)
    try:

        @ray.remote(num_cpus=0)
        def probe():
            from ray.util.state import list_actors

            list_actors(limit=1)  # raised ConnectionError before the workers were pinned
            return os.environ["RAY_ADDRESS"]

        assert ray.get(probe.remote(), timeout=120) == ray.get_runtime_context().gcs_address
    finally:
        other.stop()
