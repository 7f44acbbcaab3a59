"""A small Python client for the tunestack HTTP API.

    from serve.client import TunestackClient
    c = TunestackClient("http://127.0.0.1:8000")
    c.route({"similarity": 0.9, "recency": 0.8, "frequency": 4, "success_rate": 0.95, "metadata_match": 1})
    c.encode("Revenues", "USD", 3.1e9)

Idempotent calls (every GET, and /v1/route and /v1/encode, which change nothing) are retried on
connection errors and on 502/503/504 with exponential backoff (base · 2^attempt, capped, with
jitter). Promote and rollback are sent once: a retried rollback would roll back twice.
`client.stats` counts requests, retries and failures (what a load test reports).
"""

from __future__ import annotations

import os
import random
import time

import requests

RETRY_STATUS = (502, 503, 504)
# The request may not have reached the server, or its answer was cut off: safe to resend if idempotent.
RETRY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class TunestackError(Exception):
    """An HTTP error answer (status and the server's detail) or an unreachable server."""

    def __init__(self, status: int | None, detail):
        super().__init__(f"HTTP {status}: {detail}" if status else str(detail))
        self.status, self.detail = status, detail


class TunestackClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("TUNESTACK_ADMIN_TOKEN")
        self.timeout, self.retries = timeout, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.session = session or requests.Session()
        self.stats = {"requests": 0, "retries": 0, "failed": 0}

    # -- transport ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, json=None, idempotent: bool = True):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        attempts = self.retries + 1 if idempotent else 1
        self.stats["requests"] += 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            if attempt:
                self.stats["retries"] += 1
            try:
                r = self.session.request(
                    method, self.base_url + path, json=json, headers=headers, timeout=self.timeout
                )
                if r.status_code < 400:
                    return r.json()
            except RETRY_ERRORS as e:
                if last:
                    self.stats["failed"] += 1
                    raise TunestackError(None, f"{method} {path}: {type(e).__name__}: {e}") from e
            else:
                if r.status_code not in RETRY_STATUS or last:
                    self.stats["failed"] += 1
                    try:
                        detail = r.json().get("detail", r.text)
                    except (ValueError, AttributeError):
                        detail = r.text
                    raise TunestackError(r.status_code, detail)
            self._sleep(attempt)
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        time.sleep(delay * (0.5 + random.random() / 2))

    # -- inference ------------------------------------------------------------------------------
    def route(self, features=None, *, sequence=None, instances=None) -> dict:
        """One routing decision (features as a dict or list, or a sequence), or a batch."""
        return self._request(
            "POST", "/v1/route", json=_one_of(features=features, sequence=sequence, instances=instances)
        )

    def encode(
        self,
        concept: str | None = None,
        unit: str | None = None,
        value: float | None = None,
        *,
        instances: list[dict] | None = None,
    ) -> dict:
        body = (
            {"instances": instances}
            if instances is not None
            else {"concept": concept, "unit": unit, "value": value}
        )
        return self._request("POST", "/v1/encode", json=body)

    # -- models ---------------------------------------------------------------------------------
    def models(self) -> dict:
        return self._request("GET", "/v1/models")

    def model(self, family: str) -> dict:
        return self._request("GET", f"/v1/models/{family}")

    def promote(self, family: str, version: str) -> dict:
        return self._request(
            "POST", f"/v1/models/{family}/promote", json={"version": version}, idempotent=False
        )

    def rollback(self, family: str) -> dict:
        return self._request("POST", f"/v1/models/{family}/rollback", idempotent=False)

    # -- training jobs ----------------------------------------------------------------------------
    def submit_job(self, config: str, *, promote: bool = False, overrides: list[str] | None = None) -> dict:
        """Submit `tunestack tune --config CONFIG` ("tune_configs/FILE.yaml") as a Ray job (sent once)."""
        return self._request(
            "POST",
            "/v1/jobs",
            json={"config": config, "promote": promote, "overrides": list(overrides or [])},
            idempotent=False,
        )

    def job(self, job_id: str) -> dict:
        """A job's status and, once it SUCCEEDED, the version it registered."""
        return self._request("GET", f"/v1/jobs/{job_id}")

    # -- health ---------------------------------------------------------------------------------
    def healthz(self) -> dict:
        return self._request("GET", "/healthz")

    def readyz(self) -> dict:
        """The readiness report; raises TunestackError(503, …) while not ready (after retries)."""
        return self._request("GET", "/readyz")

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.session.get(self.base_url + "/readyz", timeout=self.timeout)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TunestackError(None, f"{self.base_url} not ready after {timeout:.0f}s")
            time.sleep(interval)


def _one_of(**kwargs) -> dict:
    given = {k: v for k, v in kwargs.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of {sorted(kwargs)}")
    return given
