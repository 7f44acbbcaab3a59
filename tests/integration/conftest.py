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
