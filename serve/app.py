"""The Ray Serve deployments. By default ONE hop: the ingress replica holds the models.

    HTTP ─► proxy ─► Gateway replica (FastAPI: serve.api; logic: serve.gateway)
                        ├── router       InProcessBackend: ModelHost + @serve.batch (serve.hosting)
                        └── autoencoder  InProcessBackend
                        └── (opt-in, `model_deployments: [family]`) HandleBackend ─► model-FAMILY
                                                          ModelServer replicas (a GPU family, …)

Run it with `tunestack serve`, `serve run serve/config.yaml` or `serve run serve.app:build_app`.

Whoever holds a family's ModelHost (the Gateway replica, or a ModelServer replica) follows its
production pointer in the registry and swaps to a newly promoted version in place (see
serve.models.ModelHost), so a promotion from the CLI reaches a running app within about
`poll_interval_s` plus the load time. The HTTP promote/rollback first has the host load the
version (sha256 + load + smoke test), moves the pointer only if that worked, then waits until
the host answers with it.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from ray import serve

from serve.api import make_api
from serve.gateway import TOKEN_ENV, GatewayService, token_sha256
from serve.hosting import HandleBackend, InProcessBackend, new_batch_stats, predict_many
from serve.models import ModelHost
from serve.schemas import AppArgs, ModelSettings


def _in_process(a: AppArgs, family: str, task: str) -> InProcessBackend:
    host = ModelHost(family, task, a.registry_root, a.store_uri, a.model_settings())
    return InProcessBackend(host, a.max_batch_size, a.batch_wait_timeout_s, a.breaker.call_timeout_s)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Gateway:
    """The HTTP ingress: the FastAPI app (built per replica by make_api) and, unless a family is
    in `model_deployments`, that family's model itself."""

    async def __init__(self, args: dict, handles: dict):
        import torch

        torch.set_num_threads(1)  # the models are tiny; replicas share the node's cores
        a = AppArgs(**args)
        backends = {}
        for family, task in a.families.items():
            if family in handles:
                backends[family] = HandleBackend(
                    family,
                    handles[family],
                    a.max_batch_size,
                    a.batch_wait_timeout_s,
                    a.breaker.call_timeout_s,
                )
            else:
                backend = backends[family] = _in_process(a, family, task)
                await asyncio.to_thread(backend.host.sync)  # serve production from the first request
                backend.follow()
        self.service = GatewayService(a, backends)

    def __serve_build_asgi_app__(self):
        return make_api(self.service)

    async def serving_info(self) -> dict:
        """{"replica", "families": {family: what this replica serves}} (tests and drills ask each
        replica through a DeploymentHandle)."""
        families = {f: await b.info() for f, b in self.service.backends.items()}
        return {"replica": serve.get_replica_context().replica_id.unique_id, "families": families}

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`: a canary prediction through each model
        this replica holds. One that raises (or answers NaN) fails it, and Serve replaces the replica."""
        for backend in self.service.backends.values():
            if isinstance(backend, InProcessBackend):
                backend.check_health()


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
class ModelServer:
    """One family's own replicas (opt-in: `model_deployments`): the production predictor,
    hot-swapped when the pointer moves; the ingress sends it gathered requests (`predict_many`)."""

    async def __init__(self, family: str, task: str, registry_root: str, store_uri: str | None = None):
        import torch

        torch.set_num_threads(1)
        self.local = InProcessBackend(ModelHost(family, task, registry_root, store_uri))
        self.host = self.local.host
        self.batches = new_batch_stats()
        await asyncio.to_thread(self.host.sync)  # serve the production version from the first request
        self.local.follow()

    def reconfigure(self, config: dict) -> None:
        self.host.settings = ModelSettings(**(config or {}))

    async def predict_many(self, requests: list[list[dict]]) -> list[dict]:
        """Requests an ingress gathered: one model call for all of them, an answer (or error) each."""
        return predict_many(self.host, requests, self.batches)

    async def check_health(self) -> None:
        self.local.check_health()

    async def info(self) -> dict:
        return {
            **self.host.info(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batching": dict(self.batches),
        }

    async def stage(self, version: str) -> dict:
        return await self.local.stage(version)


def resolve_args(args: dict | None) -> AppArgs:
    """Validated args with absolute paths and the admin token's hash filled in from the environment."""
    from pipeline.home import registry_dir
    from pipeline.storage import absolute

    a = AppArgs(**(args or {}))
    return a.model_copy(
        update={
            "registry_root": absolute(a.registry_root or registry_dir()),
            "store_uri": a.store_uri and absolute(a.store_uri),
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
        if family in a.model_deployments
    }
    return Gateway.options(ray_actor_options={"num_cpus": a.gateway_num_cpus}).bind(a.model_dump(), handles)


def make_local_api(args: dict | None = None) -> FastAPI:
    """The same API over in-process models (no Ray cluster): for tests and notebooks."""
    a = resolve_args(args)
    backends = {f: _in_process(a, f, t) for f, t in a.families.items()}
    for b in backends.values():
        b.host.sync()
    return make_api(GatewayService(a, backends))
