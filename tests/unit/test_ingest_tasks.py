"""Ingest's task runner in this process (no Ray): every call gets its own and the shared arguments,
and runs with Arrow's allocations on jemalloc (malloc where pyarrow lacks it), the pool before
restored after (tasks.py says why: mimalloc keeps what a step frees resident)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.ingest.tasks import TaskRunner, _lean_pool


def test_calls_in_this_process_get_their_own_and_the_shared_arguments_on_the_lean_pool():
    before = pa.default_memory_pool().backend_name

    def call(a: int, b: int) -> tuple:
        pa.array(range(1000))  # an allocation while the call runs
        return a + b, pa.default_memory_pool().backend_name

    seen = []
    got = TaskRunner().map(
        call, [{"a": 1}, {"a": 2}], on_result=lambda i, r: seen.append(i), shared={"b": 10}
    )
    assert got == [(11, _lean_pool().backend_name), (12, _lean_pool().backend_name)]
    assert seen == [0, 1]
    assert pa.default_memory_pool().backend_name == before
