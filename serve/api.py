"""The HTTP API: FastAPI routes over a GatewayService, the body guard, and the ONE table that maps
the gateway's and the models' exceptions to HTTP statuses (`ERROR_STATUS`).

No model logic here: `make_api(service)` only validates requests (serve.schemas), checks the admin
token, calls the service and turns what it raises into a 4xx/5xx answer with a reason.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations, and the
# request models are local to make_api (their limits are settings), so they must stay real objects.
import time

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.gateway import GatewayService, NotFound, Refused, Unauthorized, Unavailable
from serve.jobs import JobError
from serve.metrics import endpoint_label
from serve.models import InputError, NotLoaded
from serve.schemas import (
    EncodeBatchResult,
    EncodeResult,
    ErrorBody,
    JobRequest,
    PromoteRequest,
    RouteBatchResult,
    RouteResult,
    request_models,
)

# exception class -> HTTP status (the first match in order wins)
ERROR_STATUS = [
    (InputError, 422),  # the schema accepted it, the model cannot answer it (wrong feature count, …)
    (NotFound, 404),
    (Refused, 409),
    (Unauthorized, 401),
    (NotLoaded, 503),  # the family has no servable version right now
    (Unavailable, 503),
]

DESCRIPTION = """Routing and encoding with the registry's production models.

* `POST /v1/route`: `{"features": {...}}`, `{"features": [...]}`, `{"sequence": [[...], ...]}` or
  `{"instances": [...]}` → route, probability, uncertainty, the threshold that decided, model_version,
  latency_us.
* `POST /v1/encode`: `{"concept", "unit", "value"}` or `{"instances": [...]}` → latent,
  reconstruction_error, anomaly_score.
* `POST /v1/jobs`: `{"config": "tune_configs/FILE.yaml", "promote": false, "overrides": []}` → a
  tuning run submitted as a Ray job; `GET /v1/jobs/{job_id}` → its status and registered version.
* `/v1/models*` and `/v1/jobs*` need `Authorization: Bearer <token>` when `TUNESTACK_ADMIN_TOKEN` is set.
"""


def _error(status: int, detail, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


class GuardMiddleware:
    """Pure ASGI: refuse bodies over the limit with 413 before anything parses them, and record
    every request's status and latency."""

    def __init__(self, app, service: GatewayService):
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
        await _error(code, detail)({"type": "http"}, None, send)


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    # Only loc/msg/type: the offending input may be NaN or bytes, which JSON cannot carry.
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def add_error_mapping(app: FastAPI) -> None:
    """Every exception the gateway and the models raise on purpose becomes its status + reason."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = _validation_errors(exc)
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return _error(422, errors, reason=reason)

    @app.exception_handler(JobError)
    async def _job(_request: Request, exc: JobError):
        return _error(exc.status, exc.detail)

    for cls, status in ERROR_STATUS:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None

        async def _mapped(_request: Request, exc: Exception, status=status, headers=headers):
            return _error(status, str(exc), headers)

        app.add_exception_handler(cls, _mapped)


def make_api(service: GatewayService) -> FastAPI:
    """The FastAPI app of a gateway (validation, limits, auth, breaker, metrics) over its backends."""
    RouteRequest, EncodeRequest = request_models(service.args.max_instances, service.args.max_sequence_length)
    app = FastAPI(title="tunestack", version="1", description=DESCRIPTION)
    app.add_middleware(GuardMiddleware, service=service)
    add_error_mapping(app)
    bearer = HTTPBearer(auto_error=False, description="TUNESTACK_ADMIN_TOKEN (only when it is set)")

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        service.check_admin(credentials.credentials if credentials else None)

    def errors(*statuses: int, **described: str) -> dict:
        out = {s: {"model": ErrorBody, "description": "the reason is in detail"} for s in statuses}
        for s, text in described.items():
            out[int(s[1:])] = {"model": ErrorBody, "description": text}
        return out

    guarded = errors(
        _400="the body is not readable (bad JSON bytes, bad Content-Length)", _413="body over the size limit"
    )
    inference = {
        **guarded,
        **errors(_422="invalid input (reason in detail)", _503="the family has no loaded model"),
    }
    managed = {**guarded, **errors(401, 404, _503="the registry or the model backend cannot answer now")}

    async def answer(body, infer, path: str):
        """One inference endpoint: the request's instances through `infer`, one result or a batch."""
        t0 = time.perf_counter()
        instances, batch = body.as_instances()
        results = await infer(instances, t0)
        service.metrics.instances.labels(path).inc(len(results))
        return {"predictions": results} if batch else results[0]

    @app.post(
        "/v1/route",
        response_model=RouteResult | RouteBatchResult,
        responses=inference,
        summary="lightweight or powerful?",
    )
    async def route(body: RouteRequest):
        return await answer(body, service.route, "/v1/route")

    @app.post(
        "/v1/encode",
        response_model=EncodeResult | EncodeBatchResult,
        responses=inference,
        summary="latent vector and anomaly score of financial facts",
    )
    async def encode(body: EncodeRequest):
        return await answer(body, service.encode, "/v1/encode")

    @app.get("/v1/models", dependencies=[Depends(admin)], responses=managed, summary="every served family")
    async def models():
        return await service.models()

    @app.get(
        "/v1/models/{family}",
        dependencies=[Depends(admin)],
        responses=managed,
        summary="production version, metrics, config and what the replicas serve",
    )
    async def model(family: str):
        return await service.model(family)

    @app.post(
        "/v1/models/{family}/promote",
        dependencies=[Depends(admin)],
        responses={
            **managed,
            **errors(_409="the version is corrupted or does not load; nothing changed", _422="bad body"),
        },
    )
    async def promote(family: str, body: PromoteRequest):
        return await service.change(family, body.version)

    @app.post(
        "/v1/models/{family}/rollback",
        dependencies=[Depends(admin)],
        responses={**managed, **errors(_409="nothing to roll back to, or it does not load")},
    )
    async def rollback(family: str):
        return await service.change(family, None)

    @app.post(
        "/v1/jobs",
        dependencies=[Depends(admin)],
        status_code=202,
        summary="submit a tuning run (tunestack tune) to the cluster as a Ray job",
        responses={
            **managed,
            **errors(
                _404="no such file in tune_configs/",
                _422="not tune_configs/FILE.yaml, or not a valid tune file",
                _503="the cluster's Jobs API is unreachable",
            ),
        },
    )
    async def submit_job(body: JobRequest):
        return await service.job_call(service.jobs.submit, body.config, body.promote, body.overrides)

    @app.get(
        "/v1/jobs/{job_id}",
        dependencies=[Depends(admin)],
        summary="a tuning job's status and, once it succeeded, the version it registered",
        responses={**managed, **errors(_404="no job of this app has that id")},
    )
    async def job(job_id: str):
        return await service.job_call(service.jobs.status, job_id)

    @app.get("/healthz", summary="the gateway is alive", responses=guarded)
    async def healthz():
        return {"status": "alive"}

    @app.get(
        "/readyz",
        summary="every family with a production version has it loaded",
        responses={**guarded, 503: {"description": "not ready (the same body says what is missing)"}},
    )
    async def readyz():
        ready, detail = await service.readiness()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get(
        "/metrics", summary="Prometheus metrics of this gateway replica", response_class=PlainTextResponse
    )
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
