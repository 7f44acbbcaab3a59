"""One real local Ray cluster per test session (ray.init costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipeline.train.run import LOCAL_RAY

    ray.init(**{**LOCAL_RAY, "num_cpus": 2}, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
