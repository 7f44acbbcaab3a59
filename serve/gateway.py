"""The gateway's logic, without HTTP: routing behind the circuit breaker (with its fallback),
encoding, the management calls (models, promote/rollback, readiness) and the admin token check.

It talks to each family's model through a backend (serve.hosting) and raises plain exceptions
(`NotFound`, `Refused`, `Unavailable`, `Unauthorized`, and the model layer's `InputError`,
`NotLoaded`); serve.api maps each to its HTTP status in one table.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import time
from collections import deque

from pipeline.registry.registry import Registry, RegistryError
from serve.breaker import OPEN, CircuitBreaker
from serve.hosting import ModelCallError
from serve.jobs import JobLauncher
from serve.metrics import Metrics
from serve.models import POWERFUL, InputError, NotLoaded
from serve.schemas import TOKEN_ENV, AppArgs

logger = logging.getLogger("tunestack.serve")


class NotFound(LookupError):
    """No such family / version (HTTP 404)."""


class Refused(Exception):
    """A management change refused; nothing changed (HTTP 409)."""


class Unavailable(Exception):
    """A dependency (the registry, a model backend) cannot answer now (HTTP 503)."""


class Unauthorized(PermissionError):
    """A management call without the admin token (HTTP 401)."""


def token_sha256(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def json_safe(obj):
    """`obj` with every non-finite float replaced by None (JSON has no NaN; a registered version's
    metrics may hold one)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class GatewayService:
    def __init__(self, args: AppArgs, backends: dict[str, object], admin_token_sha256: str | None = None):
        self.args = args
        self.backends = backends  # family -> backend (serve.hosting)
        self.tasks = {family: task for family, task in args.families.items() if family in backends}
        self.registry = Registry(args.registry_root)
        b = args.breaker
        self.breaker = CircuitBreaker(b.failure_threshold, b.reset_timeout_s)
        self._counted_calls: deque[int] = deque(maxlen=1024)  # failed model calls the breaker has seen
        self.metrics = Metrics()
        for family, backend in backends.items():
            if hasattr(backend, "on_retry"):
                backend.on_retry = self.metrics.retries.labels(family).inc
        self.admin_sha = (
            admin_token_sha256 or args.admin_token_sha256 or token_sha256(os.environ.get(TOKEN_ENV))
        )
        self.jobs = JobLauncher(
            args.registry_root, args.jobs_configs_dir, args.jobs_home, args.jobs_dashboard_address
        )

    def backend_for(self, task: str):
        family = next((f for f, t in self.tasks.items() if t == task), None)
        if family is None:
            raise Unavailable(f"no model family is configured to serve {task!r}")
        return self.backends[family]

    def family_backend(self, family: str):
        if family not in self.backends:
            raise NotFound(f"unknown model family {family!r}; served: {sorted(self.backends)}")
        return self.backends[family]

    def check_admin(self, token: str | None) -> None:
        if self.admin_sha is None:
            return
        given = token_sha256(token) if token else ""
        if not hmac.compare_digest(given or "", self.admin_sha):
            raise Unauthorized("a valid bearer token is required (TUNESTACK_ADMIN_TOKEN)")

    # -- inference ------------------------------------------------------------------------------
    async def route(self, instances: list[dict], t0: float) -> list[dict]:
        """Route every instance; when the router fails, times out or its circuit is open, every
        instance gets the safe answer (powerful) with `fallback: true` and the reason."""
        backend = self.backend_for("route")
        outputs, reason = None, "circuit open"
        permit = self.breaker.allow()
        if permit is not None:
            try:
                # the backend times the model call itself; this bounds the wait in its queue too
                outputs = await asyncio.wait_for(
                    backend.predict(instances), 2 * self.args.breaker.call_timeout_s
                )
            except (InputError, NotLoaded):  # no verdict on the router's health
                self.breaker.release(permit)
                raise
            except ModelCallError as e:
                reason = f"router {e.kind}"
                if e.call not in self._counted_calls:  # one failure per failed call, not per request
                    self._counted_calls.append(e.call)
                    self.breaker.record_failure(permit)
                else:
                    self.breaker.release(permit)
            except asyncio.TimeoutError:
                reason = "router timeout"
                self.breaker.record_failure(permit)
            except Exception as e:  # the backend failed outside a model call: the router is down too
                logger.warning("router call failed: %s: %s", type(e).__name__, e)
                reason = "router error"
                self.breaker.record_failure(permit)
            else:
                self.breaker.record_success(permit)
        self.metrics.breaker_open.set(1 if self.breaker.state == OPEN else 0)
        latency = int((time.perf_counter() - t0) * 1e6)
        if outputs is None:
            self.metrics.fallbacks.labels(reason).inc(len(instances))
            self.metrics.routes.labels(POWERFUL).inc(len(instances))
            return [fallback_answer(reason, latency) for _ in instances]
        for o in outputs:
            self.metrics.routes.labels(o["route"]).inc()
        return [{**o, "latency_us": latency, "fallback": False} for o in outputs]

    async def encode(self, instances: list[dict], t0: float) -> list[dict]:
        backend = self.backend_for("encode")
        try:
            outputs = await asyncio.wait_for(backend.predict(instances), 2 * self.args.breaker.call_timeout_s)
        except (ModelCallError, asyncio.TimeoutError) as e:
            raise Unavailable(f"{backend.family} is unavailable: {e or type(e).__name__}") from None
        latency = int((time.perf_counter() - t0) * 1e6)
        return [
            {"concept": i["concept"], "unit": i["unit"], **o, "latency_us": latency}
            for i, o in zip(instances, outputs)
        ]

    # -- training jobs (serve.jobs) -----------------------------------------------------------------
    async def job_call(self, fn, *args) -> dict:
        """Run a (blocking) Jobs SDK call off the event loop (a JobError carries its own status)."""
        return await asyncio.to_thread(fn, *args)

    # -- models ---------------------------------------------------------------------------------
    async def serving(self, family: str) -> dict:
        try:
            info = await asyncio.wait_for(self.backends[family].info(), self.args.breaker.call_timeout_s)
        except Exception as e:
            return {"family": family, "loaded": False, "error": f"unreachable: {type(e).__name__}: {e}"}
        return json_safe(info)

    async def model(self, family: str) -> dict:
        self.family_backend(family)
        out = {"family": family, "task": self.tasks[family], "version": None}
        try:
            pointer = self.registry.pointer(family)
            out.update(
                version=pointer["version"],
                history=pointer["history"],
                versions=self.registry.versions(family),
            )
            if pointer["version"]:
                rec = self.registry.get(family)
                out.update(metrics=rec.get("metrics"), config=rec.get("config"), created=rec.get("created"))
        except (RegistryError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            out["registry_error"] = f"{type(e).__name__}: {e}"  # report it; the app keeps serving
        out["serving"] = await self.serving(family)
        return json_safe(out)

    async def models(self) -> dict:
        return {"models": [await self.model(f) for f in self.tasks]}

    async def change(self, family: str, version: str | None) -> dict:
        """Promote `version` (or roll back when None): the version must load before the pointer moves."""
        backend = self.family_backend(family)
        try:
            previous = self.registry.pointer(family)
        except (RegistryError, OSError, ValueError) as e:
            raise Unavailable(f"{family}: the registry's production pointer is unreadable: {e}") from None
        rollback = version is None
        if rollback:
            if len(previous["history"]) < 2:
                self.metrics.promotions.labels(family, "refused").inc()
                raise Refused(f"{family}: no earlier production version to roll back to")
            version = previous["history"][-2]
        try:
            staged = await backend.stage(version)
        except Exception as e:  # the backend itself failed (a replica died mid-call, …)
            self.metrics.promotions.labels(family, "refused").inc()
            raise Unavailable(f"{family}: could not load {version}: {type(e).__name__}: {e}") from None
        if not staged["ok"]:
            self.metrics.promotions.labels(family, "refused").inc()
            if staged.get("not_found"):
                raise NotFound(f"refused: {staged['error']}")
            raise Refused(f"refused: {staged['error']}")
        try:
            if rollback:
                rec = await asyncio.to_thread(self.registry.rollback, family)
            else:
                rec = await asyncio.to_thread(self.registry.promote, family, version)
        except (RegistryError, OSError, ValueError) as e:
            self.metrics.promotions.labels(family, "refused").inc()
            raise Refused(f"refused: {e}") from None
        serving = await self._wait_serving(family, rec["version"])
        self.metrics.promotions.labels(family, "ok").inc()
        return json_safe(
            {
                "family": family,
                "version": rec["version"],
                "previous": previous["version"],
                "serving": serving,
                "metrics": rec.get("metrics"),
            }
        )

    async def _wait_serving(self, family: str, version: str) -> bool:
        """True once the backend answers with `version` several times in a row (a handle picks
        replicas at random, so a run of answers is how one sees most of them)."""
        deadline = time.monotonic() + self.args.reload_wait_s
        in_a_row = 0
        while time.monotonic() < deadline:
            info = await self.serving(family)
            in_a_row = in_a_row + 1 if info.get("version") == version else 0
            if in_a_row >= 4:
                return True
            await asyncio.sleep(0.05 if in_a_row else 0.2)
        return False

    async def readiness(self) -> tuple[bool, dict]:
        families = {}
        for family in self.tasks:
            info = await self.serving(family)
            try:
                production = self.registry.pointer(family)["version"]
            except (OSError, ValueError, KeyError, RegistryError):
                production = None
            families[family] = {
                "loaded": bool(info.get("loaded")),
                "version": info.get("version"),
                "production": production,
                "error": info.get("error"),
            }
        loaded = [f for f, s in families.items() if s["loaded"]]
        waiting = [f for f, s in families.items() if s["production"] and not s["loaded"]]
        return bool(loaded) and not waiting, {"families": families, "breaker": self.breaker.snapshot()}


def fallback_answer(reason: str, latency_us: int) -> dict:
    """The safe answer without the router: the powerful model."""
    return {
        "route": POWERFUL,
        "probability": None,
        "uncertainty": None,
        "model_version": None,
        "latency_us": latency_us,
        "fallback": True,
        "reason": reason,
    }
