"""The Ray Serve application: a FastAPI gateway in front of one model deployment per family.

    HTTP ─► Gateway (FastAPI ingress: validation, body limit, auth, circuit breaker, metrics;
              │      gathers concurrent requests per family with @serve.batch: one model call each)
              ├─► model-router       ModelServer replicas: the router's production version,
              └─► model-autoencoder  ModelServer replicas: the autoencoder's

Run it with `tunestack serve`, `serve run serve/config.yaml` or `serve run serve.app:build_app`.

Every model replica watches its family's production pointer in the registry and swaps to a newly
promoted version in place (see serve.models.ModelHost), so a promotion from the CLI reaches a
running app within about `poll_interval_s` plus the load time. The HTTP promote/rollback first has
a replica load the version (sha256 + load + smoke test), moves the pointer only if that worked,
then waits until the replicas answer with it.

`make_api(service)` builds the FastAPI app from a `GatewayService`, which talks to model backends
through three async calls (predict, info, stage): `HandleBackend` calls Serve deployments,
`LocalBackend` an in-process ModelHost — the same API runs in tests without Ray
(`make_local_api`).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations, and the
# request models are local to make_api (their limits are settings), so they must stay real objects.
import asyncio
import hashlib
import hmac
import logging
import os
import re
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

from pipeline.registry.registry import Registry, RegistryError
from serve.breaker import OPEN, CircuitBreaker
from serve.jobs import JobError, JobLauncher
from serve.models import POWERFUL, InputError, ModelHost, NotLoaded
from serve.schemas import (
    AppArgs,
    EncodeBatchResult,
    EncodeResult,
    JobRequest,
    ModelSettings,
    PromoteRequest,
    RouteBatchResult,
    RouteResult,
    request_models,
)

logger = logging.getLogger("tunestack.serve")
TOKEN_ENV = "TUNESTACK_ADMIN_TOKEN"


def token_sha256(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


# ---------------------------------------------------------------------------------------------
# Backends: how the gateway reaches a family's model


class LocalBackend:
    """An in-process ModelHost (tests, notebooks). It follows the registry lazily, on each call."""

    def __init__(self, host: ModelHost):
        self.host, self.family = host, host.family

    async def predict(self, instances: list[dict]) -> dict:
        self.host.sync()
        try:
            return {"status": 200, "outputs": self.host.predict(instances)}
        except NotLoaded as e:
            return {"status": 503, "detail": str(e)}
        except InputError as e:
            return {"status": 422, "detail": str(e)}

    async def info(self) -> dict:
        self.host.sync()
        return self.host.info()

    async def stage(self, version: str) -> dict:
        return await asyncio.to_thread(self.host.stage, version)


def count_batch(stats: dict, requests: int) -> None:
    """Record one model call of `requests` requests in {"batches", "requests", "largest"}."""
    stats["batches"] += 1
    stats["requests"] += requests
    stats["largest"] = max(stats["largest"], requests)


# Gathered calls in flight at once per backend: one at a time would make every burst wait for the
# previous call's round trip (the gateway -> replica hop, not the model, is the slow part).
GATHER_CONCURRENCY = 8


class HandleBackend:
    """A ModelServer deployment behind a Serve DeploymentHandle.

    With `max_batch_size` > 1 the gateway gathers the requests that arrive together (`@serve.batch`,
    one queue per backend) and sends them to the model as ONE call (`predict_many`): the hop from
    gateway to model replica, not the model, is what a small model's request costs. Each request
    keeps its own answer or error. With 1, every request is its own call (`predict`)."""

    def __init__(self, family: str, handle, max_batch_size: int = 1, batch_wait_timeout_s: float = 0.0):
        self.family, self.handle = family, handle
        self.on_retry = lambda: None  # the gateway counts these (tunestack_model_call_retries)
        self.batches = {"batches": 0, "requests": 0, "largest": 0}  # what the gathering did
        self._gathered = None
        if max_batch_size > 1:  # decorated per instance: @serve.batch keeps one queue per function
            self._gathered = serve.batch(
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=batch_wait_timeout_s,
                max_concurrent_batches=GATHER_CONCURRENCY,
            )(self._predict_many)

    async def _call(self, method: str, payload):
        from ray.exceptions import RayActorError

        try:
            return await getattr(self.handle, method).remote(payload)
        except RayActorError:  # the replica died or vanished mid-call (killed, its node lost): a
            # prediction changes nothing, so ask once more; Serve has dropped that replica by now
            self.on_retry()
            return await getattr(self.handle, method).remote(payload)

    async def _predict_many(self, requests: list[list[dict]]) -> list[dict]:
        count_batch(self.batches, len(requests))
        return await self._call("predict_many", requests)

    async def predict(self, instances: list[dict]) -> dict:
        if self._gathered is not None:
            return await self._gathered(instances)
        return await self._call("predict", instances)

    async def info(self) -> dict:
        return {**await self.handle.info.remote(), "gateway_batching": dict(self.batches)}

    async def stage(self, version: str) -> dict:
        return await self.handle.stage.remote(version)


# ---------------------------------------------------------------------------------------------
# Metrics (Prometheus text at GET /metrics; one registry per gateway replica)

ENDPOINTS = [
    (re.compile(p), name)
    for p, name in (
        (r"/v1/route$", "/v1/route"),
        (r"/v1/encode$", "/v1/encode"),
        (r"/v1/models$", "/v1/models"),
        (r"/v1/models/[^/]+$", "/v1/models/{family}"),
        (r"/v1/models/[^/]+/promote$", "/v1/models/{family}/promote"),
        (r"/v1/models/[^/]+/rollback$", "/v1/models/{family}/rollback"),
        (r"/healthz$", "/healthz"),
        (r"/v1/jobs$", "/v1/jobs"),
        (r"/v1/jobs/[^/]+$", "/v1/jobs/{job_id}"),
        (r"/readyz$", "/readyz"),
        (r"/metrics$", "/metrics"),
        (r"/docs$", "/docs"),
        (r"/openapi.json$", "/openapi.json"),
    )
]


def endpoint_label(path: str) -> str:
    return next((name for pattern, name in ENDPOINTS if pattern.search(path)), "other")


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "tunestack_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tunestack_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.instances = Counter("tunestack_instances", "instances answered", ["endpoint"], registry=r)
        self.routes = Counter("tunestack_route_decisions", "routing decisions", ["route"], registry=r)
        self.fallbacks = Counter(
            "tunestack_route_fallbacks", "instances routed by the fallback", ["reason"], registry=r
        )
        self.breaker_open = Gauge("tunestack_breaker_open", "1 while the router circuit is open", registry=r)
        self.retries = Counter(
            "tunestack_model_call_retries",
            "model calls asked again after their replica died",
            ["family"],
            registry=r,
        )
        self.promotions = Counter(
            "tunestack_promotions", "promote/rollback requests", ["family", "outcome"], registry=r
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class GuardMiddleware:
    """Pure ASGI: refuse bodies over the limit with 413 before anything parses them, and record
    every request's status and latency."""

    def __init__(self, app, service: "GatewayService"):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            limit = self.service.args.max_body_bytes
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                return await self._refuse(
                    send_status,
                    413 if length.isdigit() else 400,
                    f"request body larger than {limit} bytes" if length.isdigit() else "bad Content-Length",
                )
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    status["code"] = 499  # the client went away mid-body
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > limit:
                    return await self._refuse(send_status, 413, f"request body larger than {limit} bytes")
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            label = endpoint_label(scope.get("path", ""))
            m = self.service.metrics
            m.requests.labels(label, str(status["code"])).inc()
            m.latency.labels(label).observe(time.perf_counter() - t0)

    @staticmethod
    async def _refuse(send, code: int, detail: str):
        await JSONResponse({"detail": detail}, status_code=code)({"type": "http"}, None, send)


# ---------------------------------------------------------------------------------------------
# The gateway's logic


class GatewayService:
    def __init__(self, args: AppArgs, backends: dict[str, object], admin_token_sha256: str | None = None):
        self.args = args
        self.backends = backends  # family -> backend
        self.tasks = {family: task for family, task in args.families.items() if family in backends}
        self.registry = Registry(args.registry_root)
        b = args.breaker
        self.breaker = CircuitBreaker(b.failure_threshold, b.reset_timeout_s)
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
            raise HTTPException(503, f"no model family is configured to serve {task!r}")
        return self.backends[family]

    def family_backend(self, family: str):
        if family not in self.backends:
            raise HTTPException(404, f"unknown model family {family!r}; served: {sorted(self.backends)}")
        return self.backends[family]

    def check_admin(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.admin_sha is None:
            return
        given = token_sha256(credentials.credentials) if credentials and credentials.credentials else ""
        if not hmac.compare_digest(given or "", self.admin_sha):
            raise HTTPException(
                401,
                "a valid bearer token is required (TUNESTACK_ADMIN_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- inference ------------------------------------------------------------------------------
    async def route(self, instances: list[dict], t0: float) -> list[dict]:
        backend = self.backend_for("route")
        outputs, reason = None, None
        if not self.breaker.allow():
            reason = "circuit open"
        else:
            try:
                res = await asyncio.wait_for(backend.predict(instances), self.args.breaker.call_timeout_s)
            except asyncio.TimeoutError:
                self.breaker.record_failure()
                reason = "router timeout"
            except Exception as e:  # the router deployment failed: that is what the breaker is for
                logger.warning("router call failed: %s: %s", type(e).__name__, e)
                self.breaker.record_failure()
                reason = "router error"
            else:
                if res["status"] == 200:
                    self.breaker.record_success()
                    outputs = res["outputs"]
                elif res["status"] == 422:
                    self.breaker.record_success()  # the router answered: it is healthy
                    raise HTTPException(422, res["detail"])
                else:
                    self.breaker.release()
                    raise HTTPException(res["status"], res["detail"])
        self.metrics.breaker_open.set(1 if self.breaker.state == OPEN else 0)
        latency = int((time.perf_counter() - t0) * 1e6)
        if outputs is None:
            self.metrics.fallbacks.labels(reason).inc(len(instances))
            self.metrics.routes.labels(POWERFUL).inc(len(instances))
            return [
                {
                    "route": POWERFUL,
                    "probability": None,
                    "uncertainty": None,
                    "model_version": None,
                    "latency_us": latency,
                    "fallback": True,
                    "reason": reason,
                }
                for _ in instances
            ]
        for o in outputs:
            self.metrics.routes.labels(o["route"]).inc()
        return [{**o, "latency_us": latency, "fallback": False} for o in outputs]

    async def encode(self, instances: list[dict], t0: float) -> list[dict]:
        backend = self.backend_for("encode")
        try:
            res = await asyncio.wait_for(backend.predict(instances), self.args.breaker.call_timeout_s)
        except Exception as e:
            raise HTTPException(503, f"{backend.family} is unavailable: {type(e).__name__}") from None
        if res["status"] != 200:
            raise HTTPException(res["status"], res["detail"])
        latency = int((time.perf_counter() - t0) * 1e6)
        return [
            {"concept": i["concept"], "unit": i["unit"], **o, "latency_us": latency}
            for i, o in zip(instances, res["outputs"])
        ]

    # -- training jobs (serve.jobs) -----------------------------------------------------------------
    async def job_call(self, fn, *args) -> dict:
        """Run a (blocking) Jobs SDK call off the event loop; its refusals become HTTP errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except JobError as e:
            raise HTTPException(e.status, e.detail) from None

    # -- models ---------------------------------------------------------------------------------
    async def serving(self, family: str) -> dict:
        try:
            return await asyncio.wait_for(self.backends[family].info(), self.args.breaker.call_timeout_s)
        except Exception as e:
            return {"family": family, "loaded": False, "error": f"unreachable: {type(e).__name__}: {e}"}

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
                out.update(
                    metrics=rec["metrics"],
                    config=rec["config"],
                    created=rec["created"],
                    precision=rec.get("precision", "float32"),  # "int8": an INT8 export
                )
        except (RegistryError, OSError, ValueError, KeyError) as e:  # report it; the app keeps serving
            out["registry_error"] = f"{type(e).__name__}: {e}"
        out["serving"] = await self.serving(family)
        return out

    async def models(self) -> dict:
        return {"models": [await self.model(f) for f in self.tasks]}

    async def change(self, family: str, version: str | None) -> dict:
        """Promote `version` (or roll back when None): the version must load before the pointer moves."""
        backend = self.family_backend(family)
        try:
            previous = self.registry.pointer(family)
        except (RegistryError, OSError, ValueError) as e:
            raise HTTPException(
                503, f"{family}: the registry's production pointer is unreadable: {e}"
            ) from None
        rollback = version is None
        if rollback:
            if len(previous["history"]) < 2:
                self.metrics.promotions.labels(family, "refused").inc()
                raise HTTPException(409, f"{family}: no earlier production version to roll back to")
            version = previous["history"][-2]
        staged = await backend.stage(version)
        if not staged["ok"]:
            self.metrics.promotions.labels(family, "refused").inc()
            raise HTTPException(404 if staged.get("not_found") else 409, f"refused: {staged['error']}")
        try:
            if rollback:
                rec = await asyncio.to_thread(self.registry.rollback, family)
            else:
                rec = await asyncio.to_thread(self.registry.promote, family, version)
        except RegistryError as e:
            self.metrics.promotions.labels(family, "refused").inc()
            raise HTTPException(409, f"refused: {e}") from None
        serving = await self._wait_serving(family, rec["version"])
        self.metrics.promotions.labels(family, "ok").inc()
        return {
            "family": family,
            "version": rec["version"],
            "previous": previous["version"],
            "serving": serving,
            "metrics": rec["metrics"],
        }

    async def _wait_serving(self, family: str, version: str) -> bool:
        """True once replicas answer with `version` several times in a row (handles pick replicas at
        random, so a run of answers is how one sees most of them)."""
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
            except (OSError, ValueError, RegistryError):
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


# ---------------------------------------------------------------------------------------------
# The HTTP API

DESCRIPTION = """Routing and encoding with the registry's production models.

* `POST /v1/route`: `{"features": {...}}`, `{"features": [...]}`, `{"sequence": [[...], ...]}` or
  `{"instances": [...]}` → route, probability, uncertainty, model_version, latency_us.
* `POST /v1/encode`: `{"concept", "unit", "value"}` or `{"instances": [...]}` → latent,
  reconstruction_error, anomaly_score.
* `POST /v1/jobs`: `{"config": "tune_configs/FILE.yaml", "promote": false, "overrides": []}` → a
  tuning run submitted as a Ray job; `GET /v1/jobs/{job_id}` → its status and registered version.
* `/v1/models*` and `/v1/jobs*` need `Authorization: Bearer <token>` when `TUNESTACK_ADMIN_TOKEN` is set.
"""


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    # Only loc/msg/type: the offending input may be NaN or bytes, which JSON cannot carry.
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def make_api(service: GatewayService) -> FastAPI:
    """The FastAPI app of a gateway (validation, limits, auth, breaker, metrics) over its backends."""
    RouteRequest, EncodeRequest = request_models(service.args.max_instances, service.args.max_sequence_length)
    app = FastAPI(title="tunestack", version="1", description=DESCRIPTION)
    app.add_middleware(GuardMiddleware, service=service)
    bearer = HTTPBearer(auto_error=False, description="TUNESTACK_ADMIN_TOKEN (only when it is set)")

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        service.check_admin(credentials)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = _validation_errors(exc)
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"detail": errors, "reason": reason}, status_code=422)

    one_or_many = {
        422: {"description": "invalid input (reason in detail)"},
        413: {"description": "body over the size limit"},
        503: {"description": "the family has no loaded model"},
    }

    @app.post(
        "/v1/route",
        response_model=RouteResult | RouteBatchResult,
        responses=one_or_many,
        summary="lightweight or powerful?",
    )
    async def route(body: RouteRequest):
        t0 = time.perf_counter()
        instances, batch = body.as_instances()
        results = await service.route(instances, t0)
        service.metrics.instances.labels("/v1/route").inc(len(results))
        return {"predictions": results} if batch else results[0]

    @app.post(
        "/v1/encode",
        response_model=EncodeResult | EncodeBatchResult,
        responses=one_or_many,
        summary="latent vector and anomaly score of financial facts",
    )
    async def encode(body: EncodeRequest):
        t0 = time.perf_counter()
        instances, batch = body.as_instances()
        results = await service.encode(instances, t0)
        service.metrics.instances.labels("/v1/encode").inc(len(results))
        return {"predictions": results} if batch else results[0]

    @app.get("/v1/models", dependencies=[Depends(admin)], summary="every served family")
    async def models():
        return await service.models()

    @app.get(
        "/v1/models/{family}",
        dependencies=[Depends(admin)],
        summary="production version, metrics, config and what the replicas serve",
    )
    async def model(family: str):
        return await service.model(family)

    @app.post(
        "/v1/models/{family}/promote",
        dependencies=[Depends(admin)],
        responses={409: {"description": "the version is corrupted or does not load; nothing changed"}},
    )
    async def promote(family: str, body: PromoteRequest):
        return await service.change(family, body.version)

    @app.post(
        "/v1/models/{family}/rollback",
        dependencies=[Depends(admin)],
        responses={409: {"description": "nothing to roll back to, or it does not load"}},
    )
    async def rollback(family: str):
        return await service.change(family, None)

    @app.post(
        "/v1/jobs",
        dependencies=[Depends(admin)],
        status_code=202,
        summary="submit a tuning run (tunestack tune) to the cluster as a Ray job",
        responses={
            404: {"description": "no such file in tune_configs/"},
            422: {"description": "not tune_configs/FILE.yaml, or not a valid tune file"},
            503: {"description": "the cluster's Jobs API is unreachable"},
        },
    )
    async def submit_job(body: JobRequest):
        return await service.job_call(service.jobs.submit, body.config, body.promote, body.overrides)

    @app.get(
        "/v1/jobs/{job_id}",
        dependencies=[Depends(admin)],
        summary="a tuning job's status and, once it succeeded, the version it registered",
        responses={404: {"description": "no job of this app has that id"}},
    )
    async def job(job_id: str):
        return await service.job_call(service.jobs.status, job_id)

    @app.get("/healthz", summary="the gateway is alive")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="every family with a production version has it loaded")
    async def readyz():
        ready, detail = await service.readiness()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics of this gateway replica")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def make_local_api(args: dict | None = None) -> FastAPI:
    """The same API over in-process models (no Ray): for tests and notebooks."""
    a = resolve_args(args)
    backends = {
        f: LocalBackend(ModelHost(f, t, a.registry_root, a.store_uri, a.model_settings()))
        for f, t in a.families.items()
    }
    for b in backends.values():
        b.host.sync()
    return make_api(GatewayService(a, backends))


# ---------------------------------------------------------------------------------------------
# Ray Serve deployments


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
class ModelServer:
    """One family's replicas: the production predictor, hot-swapped when the pointer moves."""

    async def __init__(self, family: str, task: str, registry_root: str, store_uri: str | None = None):
        import torch

        torch.set_num_threads(1)  # many small replicas share the node's cores
        self.host = ModelHost(family, task, registry_root, store_uri)
        self.batches = {"batches": 0, "requests": 0, "largest": 0}  # what @serve.batch did
        await asyncio.to_thread(self.host.sync)  # serve the production version from the first request
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def reconfigure(self, config: dict) -> None:
        self.host.settings = ModelSettings(**(config or {}))
        self._run_batch.set_max_batch_size(self.host.settings.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.host.settings.batch_wait_timeout_s)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.host.settings.poll_interval_s)
            try:
                if await asyncio.to_thread(self.host.sync):
                    logger.info("%s: now serving %s", self.host.family, self.host.predictor.version)
            except Exception:  # never let the watcher die
                logger.exception("%s: registry watch failed", self.host.family)

    def _prepare(self, instances: list[dict]) -> tuple | dict:
        """(predictor, prepared instances), or the error answer {"status", "detail"}."""
        try:
            return self.host.prepare(instances)
        except NotLoaded as e:
            return {"status": 503, "detail": str(e)}
        except InputError as e:
            return {"status": 422, "detail": str(e)}

    def _answer(self, predictor, outputs: list[dict]) -> dict:
        try:
            return {"status": 200, "outputs": self.host.finish(predictor, outputs)}
        except InputError as e:
            return {"status": 422, "detail": str(e)}

    async def predict(self, instances: list[dict]) -> dict:
        """One request (a list of instances); concurrent calls are batched by @serve.batch."""
        prepared = self._prepare(instances)
        if isinstance(prepared, dict):
            return prepared
        return self._answer(prepared[0], await self._run_batch(prepared))

    async def predict_many(self, requests: list[list[dict]]) -> list[dict]:
        """Requests a gateway gathered: one model call for all of them, an answer (or error) each."""
        answers = [self._prepare(instances) for instances in requests]
        ready = [n for n, a in enumerate(answers) if isinstance(a, tuple)]
        if ready:
            count_batch(self.batches, len(ready))
            outputs = ModelHost.run([answers[n] for n in ready])
            for n, out in zip(ready, outputs):
                answers[n] = self._answer(answers[n][0], out)
        return answers

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _run_batch(self, items: list[tuple]) -> list[list[dict]]:
        count_batch(self.batches, len(items))
        return ModelHost.run(items)

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`: a canary prediction through the live model.
        A replica whose model raises (or answers NaN) fails it, and Serve replaces the replica."""
        self.host.canary()

    async def info(self) -> dict:
        return {
            **self.host.info(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batching": dict(self.batches),
        }

    async def stage(self, version: str) -> dict:
        return await asyncio.to_thread(self.host.stage, version)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Gateway:
    """The HTTP ingress (FastAPI, built per replica by make_api)."""

    def __init__(self, args: dict, handles: dict):
        a = AppArgs(**args)
        self.service = GatewayService(
            a,
            {
                family: HandleBackend(family, h, a.max_batch_size, a.batch_wait_timeout_s)
                for family, h in handles.items()
            },
        )

    def __serve_build_asgi_app__(self):
        return make_api(self.service)


def resolve_args(args: dict | None) -> AppArgs:
    """Validated args with absolute paths and the admin token's hash filled in from the environment."""
    from pipeline.home import registry_dir

    a = AppArgs(**(args or {}))
    store = a.store_uri
    if store and "://" not in store:
        store = os.path.abspath(store)
    return a.model_copy(
        update={
            "registry_root": os.path.abspath(a.registry_root or registry_dir()),
            "store_uri": store,
            "admin_token_sha256": a.admin_token_sha256 or token_sha256(os.environ.get(TOKEN_ENV)),
            "jobs_configs_dir": a.jobs_configs_dir and os.path.abspath(a.jobs_configs_dir),
            "jobs_home": a.jobs_home and os.path.abspath(a.jobs_home),
        }
    )


def build_app(args: dict | None = None):
    """The Serve application (`serve run serve.app:build_app`, or `import_path` in a config)."""
    a = resolve_args(args)
    handles = {
        family: ModelServer.options(
            name=f"model-{family}",
            user_config=a.model_settings(),
            ray_actor_options={"num_cpus": a.model_num_cpus},
        ).bind(family, task, a.registry_root, a.store_uri)
        for family, task in a.families.items()
    }
    return Gateway.options(ray_actor_options={"num_cpus": a.gateway_num_cpus}).bind(a.model_dump(), handles)
