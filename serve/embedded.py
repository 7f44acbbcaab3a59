"""The router in your own process: no HTTP, no Ray.

    from serve.embedded import EmbeddedRouter

    with EmbeddedRouter() as router:            # $TUNESTACK_HOME/registry, router:production
        router.route({"features": {"similarity": 0.92, "recency": 0.8, "frequency": 12.0,
                                   "success_rate": 0.97, "metadata_match": 1.0}})
        # -> {"route": "lightweight", "probability": 0.97, "threshold": 0.91,
        #     "threshold_source": "calibrated", "model_version": "v0003", ...}

It loads the family's production version the way a Serve replica does (serve.models.ModelHost:
sha256 check, load, smoke test), follows promotions in a background thread every
`poll_interval_s`, and decides with the same request schema, normalization, threshold and answer
format as POST /v1/route: for the same body it gives the same answer (only `latency_us`, the time
this call took, differs). Bad input raises `InputError` with the reason /v1/route would give in
its 422; no servable version raises `NotLoaded` (the 503). There is no circuit breaker: a model
that raises raises here too.
"""

from __future__ import annotations

import logging
import threading
import time

from pydantic import ValidationError

from serve.models import InputError, ModelHost, NotLoaded
from serve.schemas import ModelSettings, RouteResult, request_models

__all__ = ["EmbeddedRouter", "InputError", "NotLoaded"]
logger = logging.getLogger("tunestack.embedded")


def _reason(e: ValidationError) -> str:
    """The one-line reason /v1/route puts in a 422's `reason` (locations start at the body)."""
    return "; ".join(
        f"{'.'.join(map(str, ('body', *err.get('loc', ()))))}: {err.get('msg', '')}" for err in e.errors()[:5]
    )


class EmbeddedRouter:
    """router:production (or `family`'s) in-process, following the registry's production pointer."""

    def __init__(
        self,
        registry_root: str | None = None,
        family: str = "router",
        *,
        confidence_threshold: float | None = None,
        max_uncertainty: float | None = None,
        poll_interval_s: float = 0.5,
        max_instances: int = 256,
        max_sequence_length: int = 512,
        follow: bool = True,
    ):
        from pipeline.home import registry_dir

        settings = ModelSettings(
            confidence_threshold=confidence_threshold,
            max_uncertainty=max_uncertainty,
            poll_interval_s=poll_interval_s,
        )
        self.host = ModelHost(
            family, "route", registry_root or registry_dir(), settings=settings.model_dump()
        )
        self._request = request_models(max_instances, max_sequence_length)[0]
        self._lock = threading.Lock()  # a predictor is not re-entrant
        self._stop = threading.Event()
        self.host.sync()
        self._watcher = None
        if follow:
            self._watcher = threading.Thread(
                target=self._watch, name=f"tunestack-{family}-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.host.settings.poll_interval_s):
            try:
                if self.host.sync():
                    logger.info("%s: now serving %s", self.host.family, self.host.predictor.version)
            except Exception:  # never let the watcher die
                logger.exception("%s: registry watch failed", self.host.family)

    @property
    def version(self) -> str | None:
        """The version deciding now (None: nothing servable yet)."""
        p = self.host.predictor
        return p.version if p else None

    def route(self, body: dict) -> dict:
        """A /v1/route request body → its answer: one result, or {"predictions": [...]} for a batch."""
        t0 = time.perf_counter()
        try:
            request = self._request.model_validate(body)
        except ValidationError as e:
            raise InputError(_reason(e)) from None
        instances, batch = request.as_instances()
        with self._lock:
            outputs = self.host.predict(instances)
        latency = int((time.perf_counter() - t0) * 1e6)
        results = [  # through /v1/route's response model: the same fields, the same defaults
            RouteResult.model_validate({**o, "latency_us": latency, "fallback": False}).model_dump()
            for o in outputs
        ]
        return {"predictions": results} if batch else results[0]

    def decide(self, features) -> dict:
        """One decision for a feature dict ({"similarity": …}) or a list in the model's order."""
        return self.route({"features": features})

    def close(self) -> None:
        """Stop following the registry."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def __enter__(self) -> EmbeddedRouter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
