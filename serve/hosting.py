"""Model hosting: how the ingress reaches a family's model, and the answers that cross a hop.

Two backends, one interface (`predict(instances)`, `info()`, `stage(version)`):

- `InProcessBackend` (the default, ONE hop): the ingress replica itself holds the family's
  ModelHost. Requests that arrive together are gathered by `@serve.batch` into one model call
  (at most one call in flight per family: the requests that arrive meanwhile form the next batch),
  run off the event loop (a small lean-engine call, tens of µs, runs on it: see runs_inline), and
  a background task follows the registry's production pointer.
- `HandleBackend` (opt-in: `model_deployments` in the app args): the family runs in its own
  ModelServer deployment (a GPU family, a heavy model); the ingress gathers requests the same way
  and sends each gathered batch as one `predict_many` call over a DeploymentHandle.

Both raise the model layer's own errors: `InputError` (the input does not fit the model),
`NotLoaded` (no servable version) and `ModelCallError` (the call itself failed or timed out). The
HTTP status of each is decided in one place, serve.api. A ModelCallError carries the number of
the model call it came from: every request of a failed gathered call gets the same number, so the
circuit breaker counts ONE failure per call, not one per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from ray import serve

from serve.models import InputError, ModelHost, NotLoaded

logger = logging.getLogger("tunestack.serve")
_CALLS = itertools.count(1)  # model call numbers, unique within the process


class ModelCallError(Exception):
    """A model call that failed ("error") or did not answer in time ("timeout")."""

    def __init__(self, kind: str, call: int, detail: str):
        super().__init__(f"model call {kind}: {detail}")
        self.kind, self.call, self.detail = kind, call, detail


def count_batch(stats: dict, requests: int) -> None:
    """Record one model call of `requests` requests in {"batches", "requests", "largest"}."""
    stats["batches"] += 1
    stats["requests"] += requests
    stats["largest"] = max(stats["largest"], requests)


def new_batch_stats() -> dict:
    return {"batches": 0, "requests": 0, "largest": 0}


# ---------------------------------------------------------------------------------------------
# What crosses the hop from a model replica: one plain dict per request


def answer(host: ModelHost, predictor, outputs: list[dict]) -> dict:
    """The answer of one request: {"outputs": [...]} or {"input_error": reason}."""
    try:
        return {"outputs": host.finish(predictor, outputs)}
    except InputError as e:
        return {"input_error": str(e)}


def prepared_or_answer(host: ModelHost, instances: list[dict]):
    """(predictor, prepared instances), or the error answer {"input_error"|"not_loaded": reason}."""
    try:
        return host.prepare(instances)
    except NotLoaded as e:
        return {"not_loaded": str(e)}
    except InputError as e:
        return {"input_error": str(e)}


def unwrap(ans: dict) -> list[dict]:
    """A request's answer → its outputs, or the error it stands for."""
    if "outputs" in ans:
        return ans["outputs"]
    if "not_loaded" in ans:
        raise NotLoaded(ans["not_loaded"])
    if "input_error" in ans:
        raise InputError(ans["input_error"])
    raise ModelCallError(ans.get("kind", "error"), ans.get("call", 0), ans.get("detail", str(ans)))


def predict_many(host: ModelHost, requests: list[list[dict]], stats: dict) -> list[dict]:
    """Requests gathered by an ingress: one model call for all that can be answered, an answer each."""
    answers = [prepared_or_answer(host, instances) for instances in requests]
    ready = [n for n, a in enumerate(answers) if isinstance(a, tuple)]
    if ready:
        count_batch(stats, len(ready))
        outputs = ModelHost.run([answers[n] for n in ready])
        for n, out in zip(ready, outputs):
            answers[n] = answer(host, answers[n][0], out)
    return answers


# ---------------------------------------------------------------------------------------------
# Backends


class _Gathering:
    """Per-instance `@serve.batch` (the decorator keeps one queue per decorated function). Outside a
    Serve replica (tests, notebooks: serve.batch needs one) each request is its own call."""

    def __init__(self, fn, max_batch_size: int, batch_wait_timeout_s: float, concurrency: int):
        self.batches = new_batch_stats()
        self._fn, self._gathered, self._lock = fn, None, asyncio.Lock()
        self._options = dict(
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=concurrency,
        )

    async def __call__(self, item):
        if self._gathered is None:  # decided on the first call: inside a replica or not
            from ray.serve.exceptions import RayServeException

            try:
                serve.get_replica_context()
                self._gathered = serve.batch(**self._options)(self._fn)
            except RayServeException:
                self._gathered = self._one
        return await self._gathered(item)

    async def _one(self, item):
        async with self._lock:  # a predictor is not re-entrant
            return (await self._fn([item]))[0]


def _failed(e: Exception, n: int) -> ModelCallError:
    """A model call's failure as ONE ModelCallError (call number `n`) for the whole batch."""
    logger.warning("model call %d failed: %s: %s", n, type(e).__name__, e)
    return ModelCallError("error", n, f"{type(e).__name__}: {e}")


async def _timed(coro, timeout_s: float, n: int) -> list[dict] | Exception:
    """Await a model call; its failure becomes ONE ModelCallError (call number `n`) for the batch."""
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except asyncio.TimeoutError:
        return ModelCallError("timeout", n, f"no answer within {timeout_s:g} s")
    except Exception as e:  # the model (or its replica) failed: what the breaker is for
        return _failed(e, n)


# A lean-engine call of this many instances at most runs on the event loop: it takes tens of µs,
# less than the hop to a worker thread and back (~150-400 µs of CPU measured per call here).
INLINE_MAX_INSTANCES = 64


def runs_inline(items: list[tuple]) -> bool:
    """Whether a gathered call is small and quick enough to run on the event loop: every predictor
    on the lean NumPy engine and at most INLINE_MAX_INSTANCES instances in all. Anything else (torch,
    the autoencoder, large batches) runs on a thread so the loop keeps accepting requests."""
    lean = all(getattr(predictor, "engine", None) is not None for predictor, _ in items)
    return lean and sum(len(prepared) for _, prepared in items) <= INLINE_MAX_INSTANCES


class InProcessBackend:
    """The family's ModelHost inside the ingress replica (one hop; tests and notebooks too)."""

    def __init__(
        self,
        host: ModelHost,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.0,
        call_timeout_s: float = 5.0,
    ):
        self.host, self.family = host, host.family
        self.call_timeout_s = call_timeout_s
        # One model call at a time: a predictor is not re-entrant, and what arrives meanwhile is
        # the next batch (with batch_wait_timeout_s 0 a lone request never waits for company).
        self._gather = _Gathering(self._run_many, max_batch_size, batch_wait_timeout_s, 1)
        self.batches = self._gather.batches
        self._watcher: asyncio.Task | None = None

    def follow(self) -> None:
        """Start following the production pointer (every settings.poll_interval_s) on this loop."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.host.settings.poll_interval_s)
            try:
                if await asyncio.to_thread(self.host.sync):
                    logger.info("%s: now serving %s", self.family, self.host.predictor.version)
            except Exception:  # never let the watcher die
                logger.exception("%s: registry watch failed", self.family)

    async def _run_many(self, items: list[tuple]) -> list:
        count_batch(self.batches, len(items))
        n = next(_CALLS)
        if runs_inline(items):
            try:
                outs = ModelHost.run(items)
            except Exception as e:  # the model failed: what the breaker is for
                outs = _failed(e, n)
        else:
            outs = await _timed(asyncio.to_thread(ModelHost.run, items), self.call_timeout_s, n)
        return [outs] * len(items) if isinstance(outs, Exception) else outs

    async def predict(self, instances: list[dict]) -> list[dict]:
        self.follow()
        predictor, prepared = self.host.prepare(instances)  # InputError / NotLoaded: no model call
        outputs = await self._gather((predictor, prepared))
        if isinstance(outputs, Exception):
            raise outputs
        return self.host.finish(predictor, outputs)

    async def info(self) -> dict:
        self.follow()
        await asyncio.to_thread(self.host.sync)
        return {**self.host.info(), "batching": dict(self.batches), "hosting": "ingress"}

    async def stage(self, version: str) -> dict:
        return await asyncio.to_thread(self.host.stage, version)

    def check_health(self) -> None:
        self.host.canary()


class HandleBackend:
    """A ModelServer deployment behind a Serve DeploymentHandle (the two-hop option).

    The ingress gathers the requests that arrive together and sends them as ONE `predict_many`
    call: the hop from ingress to model replica, not the model, is what a small model's request
    costs. Up to GATHER_CONCURRENCY gathered calls are in flight at once (one at a time would make
    every burst wait for the previous round trip)."""

    GATHER_CONCURRENCY = 8

    def __init__(
        self,
        family: str,
        handle,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.0,
        call_timeout_s: float = 5.0,
    ):
        self.family, self.handle = family, handle
        self.call_timeout_s = call_timeout_s
        self.on_retry = lambda: None  # the gateway counts these (tunestack_model_call_retries)
        self._gather = _Gathering(
            self._predict_many, max_batch_size, batch_wait_timeout_s, self.GATHER_CONCURRENCY
        )
        self.batches = self._gather.batches

    async def _call(self, method: str, payload):
        from ray.exceptions import RayActorError

        try:
            return await getattr(self.handle, method).remote(payload)
        except RayActorError:  # the replica died or vanished mid-call (killed, its node lost): a
            # prediction changes nothing, so ask once more; Serve has dropped that replica by now
            self.on_retry()
            return await getattr(self.handle, method).remote(payload)

    async def _predict_many(self, requests: list[list[dict]]) -> list:
        count_batch(self.batches, len(requests))
        n = next(_CALLS)
        answers = await _timed(self._call("predict_many", requests), self.call_timeout_s, n)
        return [answers] * len(requests) if isinstance(answers, Exception) else answers

    async def predict(self, instances: list[dict]) -> list[dict]:
        ans = await self._gather(instances)
        if isinstance(ans, Exception):
            raise ans
        return unwrap(ans)

    async def info(self) -> dict:
        info = await self.handle.info.remote()
        return {**info, "gateway_batching": dict(self.batches), "hosting": "deployment"}

    async def stage(self, version: str) -> dict:
        return await self.handle.stage.remote(version)
