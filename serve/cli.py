"""`tunestack serve`: deploy serve/config.yaml (or --config) on Ray Serve and keep it up.

It does what `serve run CONFIG` does — start Serve with the config's HTTP options, deploy its
applications, block until Ctrl-C — with four additions: it refuses to listen beyond loopback
while the management endpoints are open (no TUNESTACK_ADMIN_TOKEN; --insecure-no-admin-token
insists), --host/--port override the config,
every application's `registry_root` is pinned to this process's $TUNESTACK_HOME/registry (the app
is built inside the cluster, whose working directory and environment may differ), and the admin
token's sha256 (never the token) is passed the same way when TUNESTACK_ADMIN_TOKEN is set.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


def add_serve_parser(subparsers) -> None:
    """Add the `serve` subcommand to the main CLI's subparsers."""
    s = subparsers.add_parser(
        "serve",
        help="serve the registry's production models over HTTP (Ray Serve + FastAPI)",
        description="Deploy the Ray Serve application of a Serve config (default serve/config.yaml): "
        "POST /v1/route, POST /v1/encode, /v1/models, /healthz, /readyz, /metrics, /docs. "
        "Blocks until Ctrl-C, then shuts Serve down.",
    )
    s.add_argument("--host", default=None, help="interface to bind (default: the config's, 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    s.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    s.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to deploy on (default: $RAY_ADDRESS, else a new local Ray)",
    )
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the app to be running")
    s.add_argument(
        "--insecure-no-admin-token",
        action="store_true",
        help="listen on a non-loopback interface without TUNESTACK_ADMIN_TOKEN (anyone who reaches the "
        "port can promote, roll back and submit jobs)",
    )
    s.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": only this machine can connect."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def exposure_refusal(config: dict) -> str | None:
    """Why serving `config` would be unsafe (None: it is not): listening beyond loopback while the
    management endpoints (promote, rollback, POST /v1/jobs: code run on the cluster) need no token."""
    host = config["http_options"]["host"]
    tokenless = [
        a.get("name", "?")
        for a in config.get("applications", [])
        if a.get("import_path", "").startswith("serve.app:")
        and not (a.get("args") or {}).get("admin_token_sha256")
    ]
    if is_loopback(host) or not tokenless:
        return None
    from serve.schemas import TOKEN_ENV

    return (
        f"refusing to listen on {host} without an admin token: anyone who reaches the port could promote "
        f"or roll back models and submit jobs that run code on the cluster (application(s) {tokenless}). "
        f"Set one first, e.g. `export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')` "
        "(clients send it as `Authorization: Bearer <token>`), or pass --insecure-no-admin-token to serve "
        "without one."
    )


def serve_config_dict(path: str, host: str | None = None, port: int | None = None) -> dict:
    """The Serve config at `path` as a dict, with CLI overrides and the pinned registry root / token hash."""
    from pipeline.home import registry_dir
    from pipeline.storage import absolute
    from serve.config import load_serve_config
    from serve.gateway import token_sha256
    from serve.schemas import TOKEN_ENV

    raw = load_serve_config(path)  # every key checked, Ray's and the app's args: ConfigError
    raw["http_options"] = dict(raw.get("http_options") or {})
    raw["http_options"]["host"] = host or raw["http_options"].get("host") or "127.0.0.1"
    if port is not None:
        raw["http_options"]["port"] = port
    for app in raw.get("applications", []):
        if app.get("import_path", "").startswith("serve.app:"):
            args = dict(app.get("args") or {})
            if not args.get("registry_root"):
                args["registry_root"] = absolute(registry_dir())
            if os.environ.get(TOKEN_ENV) and not args.get("admin_token_sha256"):
                args["admin_token_sha256"] = token_sha256(os.environ[TOKEN_ENV])
            app["args"] = args
    return raw


def serving(app_states: dict, proxy_states: dict) -> bool:
    """Every application RUNNING and no HTTP proxy still STARTING or UNHEALTHY (being replaced).
    A DRAINING or DRAINED proxy is settled: Serve drains the proxy of a node that holds no replica."""
    return all(s == "RUNNING" for s in app_states.values()) and not any(
        p in ("STARTING", "UNHEALTHY") for p in proxy_states.values()
    )


def deploy(config: dict, timeout: float = 300.0) -> None:
    """Start Serve with the config's HTTP options and deploy its applications (as `serve run
    CONFIG` does); return once all are `serving`. RuntimeError when one fails or time runs out."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run CONFIG` deploys a config with
    from ray.serve.schema import ServeDeploySchema

    from serve.schemas import AppArgs

    schema = ServeDeploySchema.model_validate(config)
    for app in schema.applications:  # fail here, naming the key, not later inside the cluster
        if app.import_path.startswith("serve.app:"):
            AppArgs(**(app.args or {}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = serve_api.serve_start(
                http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
            )
            break
        except (ray.exceptions.RayActorError, TimeoutError) as e:
            # On a loaded machine an HTTP proxy can miss the controller's readiness checks (3 x 5 s):
            # the controller replaces it, and serve_start's wait on the first one fails. The
            # controller lives on; starting again connects to it, and the loop below waits for the
            # replacement proxy to be up (`serving`).
            if time.monotonic() > deadline:
                raise RuntimeError(f"Serve's HTTP proxy did not start: {type(e).__name__}: {e}") from None
            time.sleep(0.5)
    client.deploy_apps(schema, _blocking=False)
    names = [a.name for a in schema.applications]
    while True:
        status = serve.status()
        apps, proxies = status.applications, status.proxies
        states = {n: (apps[n].status if n in apps else "NOT_STARTED") for n in names}
        if serving(states, proxies):
            return
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"deployment failed: {failed}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not running after {timeout:.0f}s: {states}, HTTP proxies {proxies}")
        time.sleep(0.5)


def run_serve(args) -> int:
    from pydantic import ValidationError
    from ray import serve

    from pipeline.runtime import ensure_ray

    config = serve_config_dict(args.config, args.host, args.port)  # a bad file: ConfigError, before Ray
    refusal = exposure_refusal(config)
    if refusal and not args.insecure_no_admin_token:
        print(f"tunestack serve: {refusal}", file=sys.stderr)
        return 2
    if refusal:
        print(
            f"tunestack serve: WARNING: {config['http_options']['host']} without an admin token",
            file=sys.stderr,
        )
    ensure_ray(args.address, namespace="serve", include_dashboard=False, log_to_driver=True)

    try:
        deploy(config, args.timeout)
    except ValidationError as e:
        print(f"tunestack serve: {args.config}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"tunestack serve: {e}", file=sys.stderr)
        serve.shutdown()
        return 1
    h = config["http_options"]
    names = ", ".join(a["name"] for a in config.get("applications", []))
    print(
        f"tunestack serve: {names} running at http://{h['host']}:{h.get('port', 8000)}/ "
        "(docs at /docs); Ctrl-C to stop",
        flush=True,
    )
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `serve` on its own (python -m serve.cli …) until the main CLI wires it in."""
    import argparse

    parser = argparse.ArgumentParser(prog="tunestack")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    return ns.func(ns) or 0


if __name__ == "__main__":
    sys.exit(main())
