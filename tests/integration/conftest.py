"""One real local Ray cluster per test session (ray.init costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipeline.runtime import start_local

    if not ray.is_initialized():
        start_local(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _release_leftover_placement_groups():
    """After each test, remove the placement groups the session's job still holds: nothing of a
    finished test runs any more, but Ray 2.60 can leave a finished Train run's worker-group group
    behind (pipeline.runtime.release_placement_groups), and on the session's 2-CPU cluster the
    next test's trials then wait for CPUs until the test times out."""
    yield
    import ray

    if ray.is_initialized():
        from pipeline.runtime import job_placement_groups, release_placement_groups

        release_placement_groups(job_placement_groups())
