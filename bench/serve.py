"""Serve benchmark: POST /v1/route over real HTTP, batched vs unbatched, vs the predictor in-process.

    python -m bench.serve [--quick] [--out-dir bench/results]

A small router (the FastGRNN of tune_configs/router.yaml, trained for a few hundred steps on the
synthetic routing rule) is registered and promoted in a temporary registry, and the app of
serve/config.yaml is deployed on a fresh local Ray (2 CPUs): the HTTP proxy, one Gateway replica
(FastAPI: validation, breaker, metrics) and one model-router replica, with the config's settings
except the one under test:

  - batched:   max_batch_size from serve/config.yaml: the Gateway gathers concurrent requests
               (@serve.batch, the config's wait timeout) into one call of the model replica;
  - unbatched: max_batch_size = 1 (every request is its own gateway -> model call).

Ray Serve's floor: a constant-answer FastAPI app (no validation, no model, no second hop) behind
the same proxy, loaded the same way — what any Serve app can reach on this machine.

The load comes from a separate process (bench/serve_load.py: aiohttp, a closed loop of
`concurrency` workers with keep-alive connections) on loopback, at concurrency 1, 16 and 64; each
point has a warm-up that is not counted. The in-process baseline calls the same predictor
(serve.models.ModelHost.predict: prepare → model → route decision) directly in this process, one
thread, one instance per call, and in calls of 16 and 64 instances (the best batching can do).
Goals (2-core machine): batched p50 <= 5 ms and p99 <= 25 ms at concurrency 16; batched
throughput >= 3x unbatched at concurrency 64.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.report import figure as _fig
from bench.report import write_result
from pipeline.data.sequences import ROUTING_FEATURES
from pipeline.runtime import free_port

NAME = "serve"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCURRENCY = (1, 16, 64)
GOALS = {"p50_ms_c16_max": 5.0, "p99_ms_c16_max": 25.0, "batched_over_unbatched_c64_min": 3.0}
FEATURES = ROUTING_FEATURES  # the router's input order
ONE_REQUEST = {
    "features": {
        "similarity": 0.6,
        "recency": 0.5,
        "frequency": 3.0,
        "success_rate": 0.7,
        "metadata_match": 0.5,
    }
}


# ---------------------------------------------------------------------------------------------
# A real router in a real registry


def routing_features(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.beta(2, 2, n),
            np.exp(-rng.exponential(72.0, n) / 168.0),
            np.floor(rng.lognormal(math.log(3.0), 1.2, n)),
            rng.beta(6, 2, n),
            rng.binomial(4, 0.5, n) / 4.0,
        ],
        axis=1,
    ).astype(np.float32)


def register_router(home: str, steps: int = 300) -> str:
    """Train the router of tune_configs/router.yaml briefly; register and promote it; its version."""
    import torch

    from pipeline.config import load_config
    from pipeline.data.sequences import fit_zscore
    from pipeline.models import build_model
    from pipeline.registry import Registry
    from pipeline.synth import routing_rule
    from pipeline.train.checkpoint import save_checkpoint

    cfg = load_config(os.path.join(REPO, "tune_configs", "router.yaml")).to_dict()
    x = routing_features(4096, 0)
    y = torch.from_numpy(routing_rule({k: x[:, i] for i, k in enumerate(FEATURES)}).astype(np.int64))
    norm = fit_zscore(x, FEATURES, log1p=[FEATURES.index("frequency")])
    xt = torch.from_numpy(norm.apply(x).astype(np.float32))
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box trains much faster on one thread
    model = build_model("sequence_classifier", **{k: v for k, v in cfg["model"].items() if k != "arch"})
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (256,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == y).float().mean())
    ckpt = os.path.join(home, "router-ckpt")
    save_checkpoint(
        ckpt,
        model,
        meta={"config": cfg, "normalization": norm.to_dict(), "metrics": {"val_accuracy": acc}, "epoch": 0},
    )
    rec = Registry(os.path.join(home, "registry")).register(
        "router", ckpt, config=cfg, metrics={"val_accuracy": acc}, promote=True
    )
    return rec["version"]


# ---------------------------------------------------------------------------------------------
# The in-process baseline


def in_process(registry_root: str, calls: int) -> dict:
    """The served predictor called directly: latency per call of 1 instance; instances/s in calls of 16, 64."""
    import torch

    from serve.models import ModelHost

    torch.set_num_threads(1)  # as in the model replica
    host = ModelHost("router", "route", registry_root)
    host.sync()
    out = {}
    for size in (1,) + CONCURRENCY[1:]:
        batch = [ONE_REQUEST] * size
        for _ in range(50):
            host.predict(batch)
        n = max(20, calls // size)
        lat = np.empty(n)
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            host.predict(batch)
            lat[i] = time.perf_counter() - t0
        elapsed = time.perf_counter() - t_all
        out[size] = {
            "instances_per_call": size,
            "calls": n,
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "instances_per_s": n * size / elapsed,
        }
    return {"answer": host.predict([ONE_REQUEST])[0], "by_size": out}


# ---------------------------------------------------------------------------------------------
# The served app


def _deploy(registry_root: str, port: int, max_batch_size: int | None, overrides: dict | None = None) -> dict:
    """serve/config.yaml's app (router only, one replica per deployment), max_batch_size set when given."""
    import requests

    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict

    config = serve_config_dict(str(DEFAULT_CONFIG), "127.0.0.1", port)
    app = config["applications"][0]
    args = app["args"]
    args.update(registry_root=registry_root, families={"router": "route"}, **(overrides or {}))
    if max_batch_size is not None:
        args["max_batch_size"] = max_batch_size
    cpus = {
        d["name"]: (d.get("ray_actor_options") or {}).get("num_cpus", 0.25)
        for d in app.get("deployments", [])
    }
    app["deployments"] = [
        {"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": cpus.get("Gateway", 0.25)}},
        {
            "name": "model-router",
            "num_replicas": 1,
            "ray_actor_options": {"num_cpus": cpus.get("model-router", 0.25)},
        },
    ]
    deploy(config, timeout=240)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while requests.get(url + "/readyz", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready: {requests.get(url + '/readyz', timeout=30).text}")
        time.sleep(0.5)
    return {"url": url, "args": {k: args[k] for k in ("max_batch_size", "batch_wait_timeout_s")}}


def _load(url: str, body_file: str, concurrency: int, warmup: float, duration: float) -> dict:
    """One load point, generated by a separate process."""
    cmd = [
        sys.executable,
        "-m",
        "bench.serve_load",
        "--url",
        url + "/v1/route",
        "--body-file",
        body_file,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=warmup + duration + 120)
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _floor_app(answer: dict):
    """Ray Serve's own floor on this machine: a FastAPI ingress that validates nothing, calls no
    model and returns a constant answer of the same shape, behind the same proxy."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="floor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(api)
    class Floor:
        @api.post("/v1/route")
        async def route(self, body: dict):
            return answer

    return Floor.bind()


def _batching_stats() -> dict:
    from ray import serve

    info = (
        serve.get_deployment_handle("model-router", app_name="tunestack").info.remote().result(timeout_s=30)
    )
    return info.get("batching", {})


def served(
    registry_root: str,
    body_file: str,
    warmup: float,
    duration: float,
    env: dict | None = None,
    overrides: dict | None = None,
) -> dict:
    """Both modes on one fresh local Ray started with `env` (Serve reads its flags when it starts)."""
    import ray
    import requests
    from ray import serve

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    results = {}
    port = free_port()  # Serve's proxy keeps the port it started with: one for both apps
    try:
        for mode, mbs in (("batched", None), ("unbatched", 1)):
            app = _deploy(registry_root, port, mbs, overrides)
            answer = requests.post(app["url"] + "/v1/route", json=ONE_REQUEST, timeout=30).json()
            before = _batching_stats()
            points = {c: _load(app["url"], body_file, c, warmup, duration) for c in CONCURRENCY}
            after = _batching_stats()
            calls = after.get("batches", 0) - before.get("batches", 0)
            reqs = after.get("requests", 0) - before.get("requests", 0)
            results[mode] = {
                "settings": app["args"],
                "answer": answer,
                "points": points,
                "model_calls": calls,
                "requests_batched": reqs,
                "mean_batch": reqs / calls if calls else None,
                "largest_batch": after.get("largest"),
            }
            serve.delete("tunestack")
        serve.run(_floor_app(results["batched"]["answer"]), name="floor", route_prefix="/floor")
        url = f"http://127.0.0.1:{port}/floor"
        results["floor"] = {"points": {c: _load(url, body_file, c, warmup, duration) for c in CONCURRENCY}}
        serve.delete("floor")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


# ---------------------------------------------------------------------------------------------
# Report


def _figures(srv: dict, local: dict) -> list[dict]:
    b, u, fl = srv["batched"]["points"], srv["unbatched"]["points"], srv["floor"]["points"]
    one = local["by_size"][1]
    figs = []
    for c in CONCURRENCY:
        bp, up = b[c], u[c]
        goal_p50 = GOALS["p50_ms_c16_max"] if c == 16 else None
        goal_p99 = GOALS["p99_ms_c16_max"] if c == 16 else None
        figs.append(
            _fig(
                f"batched p50 latency, concurrency {c}",
                bp["p50_ms"],
                "ms",
                f"unbatched p50, c={c}",
                up["p50_ms"],
                f"<= {goal_p50} ms" if goal_p50 else None,
                bp["p50_ms"] <= goal_p50 if goal_p50 else None,
            )
        )
        figs.append(
            _fig(
                f"batched p99 latency, concurrency {c}",
                bp["p99_ms"],
                "ms",
                f"unbatched p99, c={c}",
                up["p99_ms"],
                f"<= {goal_p99} ms" if goal_p99 else None,
                bp["p99_ms"] <= goal_p99 if goal_p99 else None,
            )
        )
        goal_x = GOALS["batched_over_unbatched_c64_min"] if c == 64 else None
        ratio = _ratio(bp["rps"], up["rps"])
        figs.append(
            _fig(
                f"batched throughput, concurrency {c}",
                bp["rps"],
                "requests/s",
                f"unbatched, c={c}",
                up["rps"],
                f">= {goal_x}x" if goal_x else None,
                (ratio is not None and ratio >= goal_x) if goal_x else None,
            )
        )
    figs.append(
        _fig(
            "HTTP p50 latency, concurrency 1 (batched)",
            b[1]["p50_ms"],
            "ms",
            "in-process predictor call, 1 instance",
            one["p50_ms"],
        )
    )
    for c in CONCURRENCY[1:]:
        figs.append(
            _fig(
                f"Ray Serve floor p50 latency, concurrency {c}",
                fl[c]["p50_ms"],
                "ms",
                "the app's batched p50",
                b[c]["p50_ms"],
            )
        )
        figs.append(
            _fig(
                f"batched throughput vs Ray Serve floor, concurrency {c}",
                b[c]["rps"],
                "requests/s",
                f"constant-answer Serve app, c={c}",
                fl[c]["rps"],
            )
        )
    best = max(CONCURRENCY, key=lambda c: b[c]["rps"])
    inproc = local["by_size"][64]
    figs.append(
        _fig(
            f"HTTP throughput, best (batched, c={best})",
            b[best]["rps"],
            "requests/s",
            "in-process predictor, 64 instances per call",
            inproc["instances_per_s"],
        )
    )
    errors = sum(p["errors"] for m in ("batched", "unbatched") for p in srv[m]["points"].values())
    figs.append(
        _fig(
            "HTTP errors (non-200 or dropped) over all points",
            float(errors),
            "requests",
            None,
            None,
            "== 0",
            errors == 0,
        )
    )
    return figs


def _ratio(a, b):
    return a / b if a is not None and b else None


def _plot(srv: dict, local: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, color in (("batched", "tab:blue"), ("unbatched", "tab:orange"), ("floor", "tab:gray")):
        pts = srv[mode]["points"]
        for q, style in (("p50_ms", "-o"), ("p99_ms", "--s")):
            ax.plot(
                CONCURRENCY,
                [pts[c][q] for c in CONCURRENCY],
                style,
                color=color,
                label=f"{mode} {q.split('_')[0]}",
            )
        ax2.plot(CONCURRENCY, [pts[c]["rps"] for c in CONCURRENCY], "-o", color=color, label=mode)
    ax.axhline(local["by_size"][1]["p50_ms"], color="gray", lw=1, ls=":", label="in-process p50 (1 instance)")
    ax.scatter(
        [16, 16],
        [GOALS["p50_ms_c16_max"], GOALS["p99_ms_c16_max"]],
        marker="x",
        color="red",
        label="goals at c=16",
        zorder=5,
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrency (client workers)",
        ylabel="latency (ms)",
        title="POST /v1/route latency",
    )
    ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax.legend(fontsize=7)
    ax2.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="throughput")
    ax2.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(result: dict) -> None:
    print(f"{result['title']} ({result['seconds']:.0f}s{', quick' if result['quick'] else ''})")
    for f in result["figures"]:
        base = f" vs {f['baseline']} {f['baseline_value']:.3g}" if f["baseline_value"] is not None else ""
        ratio = f" = {f['ratio']:.2f}x" if f["ratio"] is not None else ""
        verdict = "" if f["pass"] is None else (" PASS" if f["pass"] else " FAIL")
        print(
            f"  {f['figure']:<48} {f['value']:>10.3f} {f['unit']:<11}{base}{ratio}"
            f"{' goal ' + f['goal'] if f['goal'] else ''}{verdict}"
        )


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t_start = time.perf_counter()
    warmup, duration = (1.0, 4.0) if quick else (3.0, 15.0)
    os.makedirs(out_dir, exist_ok=True)
    home = tempfile.mkdtemp(prefix="tunestack-bench-serve-")
    try:
        version = register_router(home, steps=100 if quick else 300)
        root = os.path.join(home, "registry")
        local = in_process(root, calls=3000 if quick else 20000)
        body_file = os.path.join(home, "body.json")
        with open(body_file, "w") as f:
            json.dump(ONE_REQUEST, f)
        srv = served(root, body_file, warmup, duration)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    mismatch = [
        m
        for m, r in srv.items()
        if m != "floor"
        if abs(r["answer"].get("probability", math.nan) - local["answer"]["probability"]) > 1e-6
    ]
    if mismatch:
        raise RuntimeError(f"served answers differ from the in-process predictor: {mismatch}")
    plot = os.path.join(out_dir, "serve_latency.png")
    _plot(srv, local, plot)
    result = {
        "name": NAME,
        "title": "Ray Serve POST /v1/route: latency and throughput over HTTP",
        "seconds": time.perf_counter() - t_start,
        "quick": quick,
        "figures": _figures(srv, local),
        "plots": [plot],
        "method": (
            f"Router {version} (FastGRNN, tune_configs/router.yaml) in a temporary registry; serve/config.yaml's "
            "app deployed on a fresh local Ray with 2 CPUs (HTTP proxy, 1 Gateway replica, 1 model-router "
            "replica). Load from a separate process (bench/serve_load.py, aiohttp, closed loop, keep-alive) "
            f"on loopback, one single-instance request per call; each point {warmup:g}s warm-up then "
            f"{duration:g}s measured, at concurrency {', '.join(map(str, CONCURRENCY))}. Batched = the "
            "config's @serve.batch settings; unbatched = max_batch_size 1. Latency is client-side (request "
            "sent to answer read). In-process = ModelHost.predict on the same registered version in the "
            "benchmark process, one thread. The load generator shares the 2 cores with the server."
        ),
        "details": {
            "served": {
                m: {**r, "points": {str(c): p for c, p in r["points"].items()}} for m, r in srv.items()
            },
            "in_process": {str(k): v for k, v in local["by_size"].items()},
            "goals": GOALS,
            "cpu_count": os.cpu_count(),
        },
    }
    return write_result(result, out_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short points (about 1-2 minutes in all)")
    p.add_argument("--out-dir", default="bench/results")
    p.add_argument(
        "--only-served",
        metavar="ENV=VALUE",
        nargs="*",
        help="(profiling) only the HTTP points, on a Ray started with these environment variables",
    )
    p.add_argument("--batch-wait-ms", type=float, help="(profiling, with --only-served) batch_wait_timeout_s")
    a = p.parse_args(argv)
    if a.only_served is not None:
        home = tempfile.mkdtemp(prefix="tunestack-bench-serve-")
        register_router(home, steps=50)
        body = os.path.join(home, "body.json")
        with open(body, "w") as f:
            json.dump(ONE_REQUEST, f)
        env = dict(kv.split("=", 1) for kv in a.only_served)
        over = {} if a.batch_wait_ms is None else {"batch_wait_timeout_s": a.batch_wait_ms / 1e3}
        srv = served(os.path.join(home, "registry"), body, 1.0, 4.0, env, over)
        for m, r in srv.items():
            print(
                m,
                r.get("mean_batch"),
                {
                    c: (round(p["p50_ms"], 2), round(p["p99_ms"], 2), round(p["rps"]))
                    for c, p in r["points"].items()
                },
            )
        return 0
    _print(run(quick=a.quick, out_dir=a.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
