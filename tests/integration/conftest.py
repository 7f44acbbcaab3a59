"""One real local Ray cluster per test session (ray.init costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipeline.runtime import start_local

    # Ray gives a new node 30 s to register with its GCS; on a loaded shared machine that can pass
    # (the raylet is slow, not broken): a second attempt, after a clean shutdown, then gives up.
    for attempt in (1, 2):
        if ray.is_initialized():
            break
        try:
            start_local(num_cpus=2)
        except Exception as e:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    yield ray
    ray.shutdown()
