"""Ingest's task runner in this process (no Ray): every call gets its own and the shared arguments,
and runs with Arrow's allocations on jemalloc (malloc where pyarrow lacks it), the pool before
restored after (tasks.py says why: mimalloc keeps what a step frees resident); calls marked
threaded run on a thread per core, and a failed one stops the rest as Ray tasks do."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest

from pipeline.ingest import tasks
from pipeline.ingest.companyfacts import IngestError
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


def test_threaded_calls_in_this_process_run_at_once_on_the_lean_pool_in_call_order():
    before = pa.default_memory_pool().backend_name
    together = threading.Barrier(2, timeout=30)  # broken (an error) unless both calls run at once

    def call(a: int, b: int) -> tuple:
        together.wait()
        pa.array(range(1000))
        return a + b, pa.default_memory_pool().backend_name, threading.current_thread().name

    seen = []
    runner = TaskRunner(threads=2)
    got = runner.map(
        call, [{"a": 1}, {"a": 2}], on_result=lambda i, r: seen.append(i), shared={"b": 10}, threaded=True
    )
    assert [g[:2] for g in got] == [(11, _lean_pool().backend_name), (12, _lean_pool().backend_name)]
    assert all(g[2].startswith("ingest") for g in got)
    assert sorted(seen) == [0, 1]
    assert pa.default_memory_pool().backend_name == before
    # the same runner, a call not marked threaded: one at a time, in this thread
    assert (
        runner.map(lambda: threading.current_thread().name, [{}, {}]) == [threading.current_thread().name] * 2
    )


def test_a_failed_threaded_call_is_raised_once_no_call_still_runs_and_queued_ones_are_dropped(monkeypatch):
    lock, running, started, finished = threading.Lock(), [0], [], []
    one_runs, error_in = threading.Event(), threading.Event()

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            started.append(i)
        try:
            if i == 0:
                assert one_runs.wait(30)
                raise IngestError("doc.json", "bad fact", "concept x")
            one_runs.set()
            assert error_in.wait(30)  # still running when the error reaches the caller
            return i
        finally:
            with lock:
                running[0] -= 1
                finished.append(i)

    real = tasks._reraise

    def reraise(out: dict):
        if "error" in out:
            error_in.set()
        return real(out)

    monkeypatch.setattr(tasks, "_reraise", reraise)
    with pytest.raises(IngestError, match="bad fact") as e:
        TaskRunner(threads=2).map(call, [{"i": i} for i in range(40)], threaded=True)
    assert running[0] == 0  # nothing writes once the caller starts cleaning up
    assert sorted(started) == sorted(finished)
    assert len(started) < 40  # the queued calls were dropped
    assert e.value.source == "doc.json"


def test_runner_threads_one_per_core_by_default_one_with_workers_1():
    assert TaskRunner.start(workers=None, work_bytes=0).threads == (os.cpu_count() or 1)
    assert TaskRunner.start(workers=None, work_bytes=0).slots() == (os.cpu_count() or 1)
    one = TaskRunner.start(workers=1, work_bytes=0)
    assert (one.parallel, one.threads, one.slots()) == (False, 1, 1)
