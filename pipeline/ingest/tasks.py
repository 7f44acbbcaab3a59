"""Where ingest's per-unit work runs: in this process, or as Ray tasks on every core of this machine
or every node of a cluster.

    runner = TaskRunner.start(address=None, workers=None, work_bytes=...)
    results = runner.map(stage_unit, [kwargs, ...], on_result=progress)   # in call order

`TaskRunner.start` picks: a Ray cluster when `address` (or RAY_ADDRESS) names one; a local Ray
with `workers` CPUs when `workers` > 1, or when `workers` is None and the input is large enough
(AUTO_RAY_BYTES) on a machine with more than one core; else this process, without Ray. There,
`map(..., threaded=True)` runs calls on a thread per core (`workers` None; `--workers 1` keeps to
one) for work that spends its time in Arrow's and numpy's native code, outside the GIL
(de-duplicating and writing buckets: about 1.1x an ingest of 100 companies on 2 cores, with no
start-up to pay, where a local Ray's costs 4-6 s). A task that fails with bad input (IngestError)
or a storage error (OSError) has its error re-raised here as the same exception type with the
same message, once the tasks in flight have finished, so nothing writes after the caller starts
cleaning up (an interrupt cancels Ray's tasks; a thread's call is left to finish, queued calls
are dropped).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from pipeline.ingest.companyfacts import IngestError

AUTO_RAY_BYTES = 256 * 1024 * 1024  # inputs at least this large (uncompressed) go parallel by default


def _guarded(fn: Callable, kwargs: dict, shared: dict | None = None):
    """_call with Arrow's allocations on the lean pool."""
    with lean_arrow_memory():
        return _call(fn, kwargs, shared)


def _call(fn: Callable, kwargs: dict, shared: dict | None = None):
    """Run fn(**kwargs, **shared); bad input and storage errors come back as values (a Ray task
    error would carry a remote traceback into the user's one-line message)."""
    try:
        return {"ok": fn(**kwargs, **(shared or {}))}
    except IngestError as e:
        return {"error": "ingest", "args": (e.source, e.detail, e.where)}
    except OSError as e:
        return {"error": "os", "message": str(e)}


# Ingest's work allocates Arrow memory from jemalloc, not from pyarrow's default pool, mimalloc,
# which keeps much of what a step frees resident: a task's RSS then rises with its data far beyond
# what it holds at once. Measured on one bucket of 167k facts (800 companies), growth of the process
# on mimalloc / jemalloc / malloc: de-duplication 173 / 112 / 108 MiB, writing 105 / 42 / 57 MiB; an
# ingest's process-tree peak on Ray tasks fell from about 1,800 to 1,700 MiB at 800 companies (100:
# about 1,530 → 1,515), at the same speed. A Ray task gets it from its environment (then Arrow's
# C++ default, Acero's hash aggregations included); this process, from `lean_arrow_memory`.
TASK_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}


@contextlib.contextmanager
def lean_arrow_memory() -> Iterator[None]:
    """pyarrow's allocations on jemalloc (the C library's malloc where pyarrow lacks it) while this
    runs; the previous default pool after. Acero's own allocations stay on Arrow's C++ default."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(_lean_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _lean_pool():
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc (Windows)
        return pa.system_memory_pool()


def _task(fn: Callable, kwargs: dict, shared: dict | None = None):
    """_guarded as a Ray task. The worker process outlives the task, idle: the memory the task
    freed goes back to the OS (Arrow's pool and the C heap keep it otherwise, and it would count
    against the ingest's footprint while the driver finishes)."""
    try:
        return _guarded(fn, kwargs, shared)
    finally:
        release_freed_memory()


def release_freed_memory() -> None:
    """Return what Arrow's pools and the C heap keep of freed memory to the OS."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    _lean_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reraise(out: dict):
    if "ok" in out:
        return out["ok"]
    if out["error"] == "ingest":
        raise IngestError(*out["args"])
    raise OSError(out["message"])


def _node() -> str:
    """The Ray node this runs on ('local' outside Ray, without importing it)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "local"
    return ray.get_runtime_context().get_node_id()


class TaskRunner:
    """Runs functions over lists of keyword arguments, locally or as Ray tasks."""

    def __init__(self, ray_module=None, owns_ray: bool = False, threads: int = 1):
        self.ray = ray_module
        self.owns_ray = owns_ray
        self.threads = threads  # calls at once in this process, for map(..., threaded=True)

    @property
    def parallel(self) -> bool:
        return self.ray is not None

    @classmethod
    def start(cls, address: str | None = None, workers: int | None = None, work_bytes: int = 0) -> TaskRunner:
        address = address or os.environ.get("RAY_ADDRESS") or None
        cpus = os.cpu_count() or 1
        if address is None:
            if workers is None:
                if work_bytes < AUTO_RAY_BYTES or cpus == 1:
                    return cls(threads=cpus)
                workers = cpus
            if workers <= 1:
                return cls()
        import ray

        from pipeline.runtime import join, start_local

        if ray.is_initialized():
            return cls(ray)
        if address is not None:
            join(address)  # RayConnectError (a UserError) says what to check when it refuses
            return cls(ray, owns_ray=True)
        try:  # a fresh local cluster, never someone's `ray start`; a timed-out start is retried once
            start_local(num_cpus=workers, include_dashboard=False)
        except Exception as e:  # Ray's start-up failures are plain Exceptions (a timed-out raylet, …)
            raise OSError(f"could not start a local Ray with {workers} CPUs ({e}); --workers 1 "
                          "parses in this process") from e  # fmt: skip
        return cls(ray, owns_ray=True)

    def close(self) -> None:
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cpus(self) -> int:
        """The CPUs that tasks may use at once (1 in this process)."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1))) if self.ray else 1

    def slots(self) -> int:
        """How many tasks may run at once on one machine (the most CPUs of any node; in this
        process, its threads)."""
        if not self.ray:
            return self.threads
        return max([int(n["Resources"].get("CPU", 1)) for n in self.ray.nodes() if n["Alive"]] or [1])

    def map(
        self,
        fn: Callable,
        calls: list[dict],
        on_result: Callable | None = None,
        shared: dict | None = None,
        threaded: bool = False,
    ) -> list:
        """fn(**kwargs, **shared) for each kwargs in `calls`; results in call order. `shared`, the
        arguments common to every call, goes into Ray's object store once (not once per task).
        `on_result(i, result)` is called as each finishes (in completion order). `threaded`: fn
        spends its time outside the GIL, so in this process calls may run on `self.threads`
        threads at once."""
        if not self.parallel and threaded and self.threads > 1 and len(calls) > 1:
            return self._map_threads(fn, calls, on_result, shared)
        if not self.parallel:
            results = []
            for i, kwargs in enumerate(calls):
                results.append(_reraise(_guarded(fn, kwargs, shared)))
                if on_result:
                    on_result(i, results[-1])
            return results
        ray = self.ray
        remote = ray.remote(_task).options(
            num_cpus=1, scheduling_strategy="SPREAD", max_retries=2,
            runtime_env={"env_vars": TASK_ENV},  # merged into the job's own
        )  # fmt: skip
        cpus = self.cpus()
        shared_ref = ray.put(shared or {})  # a task argument that is an object ref arrives resolved
        pending: dict = {}  # ref -> call index
        results: list = [None] * len(calls)
        queue = list(enumerate(calls))
        try:
            while queue or pending:
                while queue and len(pending) < 2 * cpus:  # a short queue per CPU: no idle gaps
                    i, kwargs = queue.pop(0)
                    pending[remote.remote(fn, kwargs, shared_ref)] = i
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                results[i] = _reraise(ray.get(done[0]))
                if on_result:
                    on_result(i, results[i])
        except Exception:  # a unit failed: the others in flight (at most two per CPU) finish first
            # Not cancelled: force-cancelling a task just as it completes can abort this very
            # process (a RAY_CHECK in Ray's core, "Tried to complete task that was not pending",
            # seen in this repo's tests with Ray 2.60; ray-project/ray#54846), and an abort would
            # skip the clean-up that leaves the store as it was.
            ray.wait(list(pending), num_returns=len(pending))
            raise
        except BaseException:  # interrupted (Ctrl-C): stop what runs
            self._cancel(list(pending))
            raise
        return results

    def _map_threads(self, fn: Callable, calls: list[dict], on_result: Callable | None, shared: dict | None):
        results: list = [None] * len(calls)
        # The lean pool for all the threads at once: swapping Arrow's process-wide default pool
        # per call would race between them.
        with lean_arrow_memory(), ThreadPoolExecutor(self.threads, thread_name_prefix="ingest") as pool:
            futures = {pool.submit(_call, fn, kwargs, shared): i for i, kwargs in enumerate(calls)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = _reraise(future.result())
                    if on_result:
                        on_result(i, results[i])
            except BaseException:  # a call failed or Ctrl-C: the queued calls are dropped, the
                pool.shutdown(cancel_futures=True)  # running ones finish before the caller cleans up
                raise
        return results

    def _cancel(self, refs: list) -> None:
        """Stop the tasks still queued or running, and wait until none of them can write anymore."""
        ray = self.ray
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # a task that already finished cannot be cancelled
                pass
        try:
            ray.wait(refs, num_returns=len(refs), timeout=60)
        except Exception:  # cancelled tasks report errors here; they are expected
            pass
