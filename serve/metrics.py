"""Prometheus metrics of one ingress replica (text at GET /metrics)."""

import re

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
    """One CollectorRegistry per ingress replica: requests, latency, decisions, fallbacks, breaker."""

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
