"""Serve benchmark: POST /v1/route over real HTTP in one hop, against Ray Serve's own floor.

    python -m bench.serve [--quick] [--out-dir bench/results]

A small router (the FastGRNN of tune_configs/router.yaml, trained for a few hundred steps on the
synthetic routing rule, its threshold calibrated as training does) is registered and promoted in a
temporary registry, and the app of serve/config.yaml is deployed on a fresh local Ray (2 CPUs):

  - one hop (the shipped default): the HTTP proxy and ONE Gateway replica that validates, checks
    the breaker, gathers concurrent requests with @serve.batch and runs the model itself;
  - two hops (model_deployments: [router], the option for a GPU family or a heavy model): the
    Gateway gathers requests and sends each batch to a model-router replica;
  - Ray Serve's floor: a constant-answer FastAPI app (no validation, no model, no second hop)
    behind the same proxy, deployed beside the app — what any Serve app can reach here.

The load comes from a separate process (bench/serve_load.py: aiohttp, a closed loop of
`concurrency` workers with keep-alive connections) on loopback, at concurrency 1, 16 and 64; each
point has a warm-up that is not counted, and the app's and the floor's points alternate (5 rounds,
1 with --quick) so that a change in the machine's load hits both alike: the figures are the median
round's, and the ratio to the floor is the median of the rounds' own ratios (on this shared
machine the floor alone moved by 15% between two runs while the app's throughput did not); which
of the two goes first is swapped every round. During every point the CPU time of the proxy and of
the replica answering (the Gateway, or the floor's) is read from their processes: the proxy's
share of the server's CPU, and the server's CPU per request, app against floor (a figure the
machine's other load barely moves, unlike throughput).

In-process, in this process, one thread: the embedded router (serve.embedded.EmbeddedRouter.route:
the same request schema, model, threshold and answer format as /v1/route) per decision, and the
bare predictor (serve.models.ModelHost.predict) per call of 1, 16 and 64 instances.
Goals (relative to the floor, measured in the same run): one-hop p50 at concurrency 1 <= 1.15x the
floor's; one-hop throughput at concurrency 16 and 64 >= 0.95x the floor's; 0 errors.
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
GOALS = {"p50_c1_over_floor_max": 1.15, "rps_over_floor_min": 0.95}
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
    from pipeline.router_metrics import calibrate
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
        xv = routing_features(4096, 1)  # held out: the calibration, as training does it
        pv = torch.softmax(model(torch.from_numpy(norm.apply(xv))), -1)[:, 1].numpy()
    yv = routing_rule({k: xv[:, i] for i, k in enumerate(FEATURES)})
    ckpt = os.path.join(home, "router-ckpt")
    meta = {"config": cfg, "normalization": norm.to_dict(), "metrics": {"val_accuracy": acc}, "epoch": 0}
    meta["route_calibration"] = {**calibrate(pv, yv, 0.02), "split": "val", "rows": len(yv)}
    save_checkpoint(ckpt, model, meta=meta)
    rec = Registry(os.path.join(home, "registry")).register(
        "router", ckpt, config=cfg, metrics={"val_accuracy": acc}, promote=True
    )
    return rec["version"]


# ---------------------------------------------------------------------------------------------
# The in-process baseline


def in_process(registry_root: str, calls: int) -> dict:
    """In this process, one thread: the embedded router per decision (as /v1/route decides), and
    the bare predictor per call of 1, 16 and 64 instances."""
    import torch

    from serve.embedded import EmbeddedRouter
    from serve.models import ModelHost

    torch.set_num_threads(1)  # as in the Serve replica
    host = ModelHost("router", "route", registry_root)
    host.sync()

    def timed(fn, n: int) -> tuple[np.ndarray, float]:
        for _ in range(50):
            fn()
        lat = np.empty(n)
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            fn()
            lat[i] = time.perf_counter() - t0
        return lat, time.perf_counter() - t_all

    out = {}
    for size in (1,) + CONCURRENCY[1:]:
        batch = [ONE_REQUEST] * size
        n = max(20, calls // size)
        lat, elapsed = timed(lambda batch=batch: host.predict(batch), n)
        out[size] = {
            "instances_per_call": size,
            "calls": n,
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "instances_per_s": n * size / elapsed,
        }
    with EmbeddedRouter(registry_root, follow=False) as router:
        lat, elapsed = timed(lambda: router.route(ONE_REQUEST), calls)
        embedded = {
            "decisions": calls,
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "decisions_per_s": calls / elapsed,
            "answer": router.route(ONE_REQUEST),
        }
    return {"answer": host.predict([ONE_REQUEST])[0], "by_size": out, "embedded": embedded}


# ---------------------------------------------------------------------------------------------
# The served app


def _deploy(registry_root: str, port: int, two_hops: bool, overrides: dict | None = None) -> dict:
    """serve/config.yaml's app (router only, one replica per deployment); `two_hops`: the router in
    its own deployment (model_deployments)."""
    import requests

    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict

    config = serve_config_dict(str(DEFAULT_CONFIG), "127.0.0.1", port)
    app = config["applications"][0]
    args = app["args"]
    args.update(registry_root=registry_root, families={"router": "route"}, **(overrides or {}))
    args["model_deployments"] = ["router"] if two_hops else []
    cpus = (app["deployments"][0].get("ray_actor_options") or {}).get("num_cpus", 0.25)
    app["deployments"] = [{"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": cpus}}]
    if two_hops:
        app["deployments"].append(
            {"name": "model-router", "num_replicas": 1, "ray_actor_options": {"num_cpus": cpus}}
        )
    deploy(config, timeout=300)
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


def _server_pids() -> dict[str, int]:
    """{"proxy": pid, "gateway": pid, "floor": pid, ...} of this Serve instance's processes (asked of
    each actor)."""
    import ray

    def pid(_actor) -> int:
        return os.getpid()

    roles = {
        "SERVE_PROXY_ACTOR": "proxy",
        "tunestack#Gateway#": "gateway",
        "tunestack#model-router#": "model",
        "floor#floor#": "floor",
    }
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        role = next((r for key, r in roles.items() if key in name), None)
        if role:
            actor = ray.get_actor(name, namespace=a["namespace"])
            out[role] = ray.get(actor.__ray_call__.remote(pid), timeout=60)
    return out


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    import psutil

    out = {}
    for role, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[role] = t.user + t.system
    return out


def _batching(two_hops: bool) -> dict:
    """The router's @serve.batch counters (the Gateway's gathering, one replica)."""
    from ray import serve

    h = serve.get_deployment_handle("Gateway", app_name="tunestack")
    info = h.serving_info.remote().result(timeout_s=30)["families"]["router"]
    return info.get("gateway_batching" if two_hops else "batching", {})


def _median_round(rounds: list[dict]) -> dict:
    """The round with the median throughput (its latencies and counts travel with it)."""
    return sorted(rounds, key=lambda p: p["rps"])[len(rounds) // 2]


def _paired(app_rounds: list[dict], floor_rounds: list[dict]) -> dict:
    """The app against the floor round by round (each round runs the two points back to back, so a
    change in the machine's load between rounds cancels out): the median of the per-round ratios."""
    ratios = {
        key: [a[key] / f[key] for a, f in zip(app_rounds, floor_rounds) if f[key]]
        for key in ("rps", "p50_ms")
    }
    return {f"{k}_ratio": float(np.median(v)) if v else None for k, v in ratios.items()} | {
        "rounds": [{"app": a, "floor": f} for a, f in zip(app_rounds, floor_rounds)]
    }


def served(registry_root: str, body_file: str, warmup: float, duration: float, rounds: int) -> dict:
    """One hop (with the floor beside it, alternating), then two hops, on one fresh local Ray."""
    import ray
    import requests
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    port = free_port()  # Serve's proxy keeps the port it started with
    try:
        app = _deploy(registry_root, port, two_hops=False)
        answer = requests.post(app["url"] + "/v1/route", json=ONE_REQUEST, timeout=30).json()
        serve.run(_floor_app(answer), name="floor", route_prefix="/floor")
        floor_url = f"http://127.0.0.1:{port}/floor"
        pids = _server_pids()
        sides = {"app": (app["url"], "gateway"), "floor": (floor_url, "floor")}  # URL, replica's role
        one, floor, cpu, paired = {}, {}, {}, {}
        before = _batching(False)
        for c in CONCURRENCY:
            app_rounds, floor_rounds, shares, per_request = [], [], [], []
            for r in range(rounds):
                # the order alternates round by round, so that a drift of the machine's load (or of
                # the load generator's) within a round favours neither side
                order = ("app", "floor") if r % 2 == 0 else ("floor", "app")
                point, used = {}, {}
                for side in order:
                    url, replica = sides[side]
                    t0 = _cpu_seconds(pids)
                    point[side] = _load(url, body_file, c, warmup, duration)
                    t1 = _cpu_seconds(pids)
                    used[side] = {"proxy": t1["proxy"] - t0["proxy"], "replica": t1[replica] - t0[replica]}
                app_rounds.append(point["app"])
                floor_rounds.append(point["floor"])
                shares.append(used["app"]["proxy"] / max(sum(used["app"].values()), 1e-9))
                per_request.append(
                    {
                        side: 1e3 * sum(used[side].values()) / max(point[side]["answered_with_warmup"], 1)
                        for side in order
                    }
                )
            one[c], floor[c] = _median_round(app_rounds), _median_round(floor_rounds)
            paired[c] = _paired(app_rounds, floor_rounds)
            cpu[c] = {
                "proxy_share_of_server_cpu": float(np.median(shares)),
                "rounds": shares,
                "server_cpu_ms_per_request": {
                    side: float(np.median([p[side] for p in per_request])) for side in ("app", "floor")
                },
                "server_cpu_per_request_ratio": float(
                    np.median([p["app"] / p["floor"] for p in per_request])
                ),
                "per_request_rounds": per_request,
            }
        after = _batching(False)
        results["one_hop"] = {
            "settings": app["args"],
            "answer": answer,
            "points": one,
            "cpu": cpu,
            "vs_floor": paired,
            **_batch_summary(before, after),
        }
        results["floor"] = {"points": floor}
        serve.delete("floor")
        serve.delete("tunestack")
        app = _deploy(registry_root, port, two_hops=True)
        answer = requests.post(app["url"] + "/v1/route", json=ONE_REQUEST, timeout=30).json()
        before = _batching(True)
        two = {c: _load(app["url"], body_file, c, warmup, duration) for c in CONCURRENCY}
        results["two_hops"] = {
            "settings": app["args"],
            "answer": answer,
            "points": two,
            **_batch_summary(before, _batching(True)),
        }
        serve.delete("tunestack")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def _batch_summary(before: dict, after: dict) -> dict:
    calls = after.get("batches", 0) - before.get("batches", 0)
    reqs = after.get("requests", 0) - before.get("requests", 0)
    return {
        "model_calls": calls,
        "requests_batched": reqs,
        "mean_batch": reqs / calls if calls else None,
        "largest_batch": after.get("largest"),
    }


# ---------------------------------------------------------------------------------------------
# Report


def _figures(srv: dict, local: dict) -> list[dict]:
    one, two, fl = srv["one_hop"]["points"], srv["two_hops"]["points"], srv["floor"]["points"]
    figs = []
    paired = srv["one_hop"]["vs_floor"]
    for c in CONCURRENCY:
        ratio = paired[c]["p50_ms_ratio"]
        goal = GOALS["p50_c1_over_floor_max"] if c == 1 else None
        figs.append(
            _fig(
                f"one-hop p50 latency, concurrency {c}",
                one[c]["p50_ms"],
                "ms",
                f"Ray Serve floor p50, c={c}",
                fl[c]["p50_ms"],
                f"<= {goal}x" if goal else None,
                (ratio is not None and ratio <= goal) if goal else None,
                ratio=ratio,
            )
        )
        figs.append(
            _fig(
                f"one-hop p99 latency, concurrency {c}",
                one[c]["p99_ms"],
                "ms",
                f"Ray Serve floor p99, c={c}",
                fl[c]["p99_ms"],
            )
        )
        ratio = paired[c]["rps_ratio"]
        goal = GOALS["rps_over_floor_min"] if c > 1 else None
        figs.append(
            _fig(
                f"one-hop throughput, concurrency {c}",
                one[c]["rps"],
                "requests/s",
                f"Ray Serve floor, c={c}",
                fl[c]["rps"],
                f">= {goal}x" if goal else None,
                (ratio is not None and ratio >= goal) if goal else None,
                ratio=ratio,
            )
        )
    for c in CONCURRENCY:
        figs.append(
            _fig(
                f"two-hop p50 latency, concurrency {c}",
                two[c]["p50_ms"],
                "ms",
                f"one-hop p50, c={c}",
                one[c]["p50_ms"],
            )
        )
        figs.append(
            _fig(
                f"two-hop throughput, concurrency {c}",
                two[c]["rps"],
                "requests/s",
                f"one-hop, c={c}",
                one[c]["rps"],
            )
        )
    for c in CONCURRENCY:
        cpu = srv["one_hop"]["cpu"][c]
        figs.append(
            _fig(
                f"server CPU per request (proxy + replica), one hop, concurrency {c}",
                cpu["server_cpu_ms_per_request"]["app"],
                "ms",
                f"Ray Serve floor (proxy + its replica), c={c}",
                cpu["server_cpu_ms_per_request"]["floor"],
                ratio=cpu["server_cpu_per_request_ratio"],
            )
        )
    for c in CONCURRENCY[1:]:
        share = srv["one_hop"]["cpu"][c]["proxy_share_of_server_cpu"]
        figs.append(
            _fig(
                f"proxy's share of the server's CPU, one hop, concurrency {c}",
                100.0 * share,
                "%",
                "the Gateway replica's share",
                100.0 * (1.0 - share),
            )
        )
    emb = local["embedded"]
    figs.append(
        _fig(
            "embedded router p50 per decision (in-process)",
            emb["p50_ms"],
            "ms",
            "one-hop HTTP p50, c=1",
            one[1]["p50_ms"],
        )
    )
    figs.append(
        _fig(
            "embedded router decisions/s (one thread)",
            emb["decisions_per_s"],
            "decisions/s",
            "bare predictor call, 1 instance, calls/s",
            local["by_size"][1]["instances_per_s"],
        )
    )
    best = max(CONCURRENCY, key=lambda c: one[c]["rps"])
    figs.append(
        _fig(
            f"HTTP throughput, best (one hop, c={best})",
            one[best]["rps"],
            "requests/s",
            "in-process predictor, 64 instances per call",
            local["by_size"][64]["instances_per_s"],
        )
    )
    errors = sum(p["errors"] for m in ("one_hop", "two_hops") for p in srv[m]["points"].values())
    figs.append(
        _fig(
            "HTTP errors (non-200 or dropped) over all app points",
            float(errors),
            "requests",
            None,
            None,
            "== 0",
            errors == 0,
        )
    )
    return figs


def _plot(srv: dict, local: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, color in (("one_hop", "tab:blue"), ("two_hops", "tab:orange"), ("floor", "tab:gray")):
        pts = srv[mode]["points"]
        label = mode.replace("_", " ")
        for q, style in (("p50_ms", "-o"), ("p99_ms", "--s")):
            ax.plot(
                CONCURRENCY,
                [pts[c][q] for c in CONCURRENCY],
                style,
                color=color,
                label=f"{label} {q.split('_')[0]}",
            )
        ax2.plot(CONCURRENCY, [pts[c]["rps"] for c in CONCURRENCY], "-o", color=color, label=label)
    ax.axhline(local["embedded"]["p50_ms"], color="tab:green", lw=1, ls=":", label="embedded router p50")
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
    warmup, duration, rounds = (1.0, 3.0, 1) if quick else (2.0, 8.0, 5)
    os.makedirs(out_dir, exist_ok=True)
    home = tempfile.mkdtemp(prefix="tunestack-bench-serve-")
    try:
        version = register_router(home, steps=100 if quick else 300)
        root = os.path.join(home, "registry")
        local = in_process(root, calls=3000 if quick else 20000)
        body_file = os.path.join(home, "body.json")
        with open(body_file, "w") as f:
            json.dump(ONE_REQUEST, f)
        srv = served(root, body_file, warmup, duration, rounds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    want = {k: v for k, v in local["embedded"]["answer"].items() if k != "latency_us"}
    mismatch = [
        m
        for m in ("one_hop", "two_hops")
        if {k: v for k, v in srv[m]["answer"].items() if k != "latency_us"} != want
        or abs(srv[m]["answer"]["probability"] - local["answer"]["probability"]) > 1e-6
    ]
    if mismatch:
        raise RuntimeError(f"served answers differ from the embedded router's: {mismatch}")
    plot = os.path.join(out_dir, "serve_latency.png")
    _plot(srv, local, plot)
    result = {
        "name": NAME,
        "title": "Ray Serve POST /v1/route in one hop: latency and throughput over HTTP vs Serve's floor",
        "seconds": time.perf_counter() - t_start,
        "quick": quick,
        "figures": _figures(srv, local),
        "plots": [plot],
        "method": (
            f"Router {version} (FastGRNN, tune_configs/router.yaml, threshold calibrated) in a temporary "
            "registry; serve/config.yaml's app on a fresh local Ray with 2 CPUs: one hop (HTTP proxy, 1 "
            "Gateway replica holding the model, @serve.batch) and, deployed after it, two hops "
            "(model_deployments: [router]: 1 Gateway + 1 model-router replica). Floor: a constant-answer "
            "FastAPI Serve app behind the same proxy, deployed beside the one-hop app; their points "
            f"alternate, {rounds} round(s) each: values are the median round's, the ratio to the floor is the "
            "median of the rounds' own ratios (app and floor back to back in each round, which goes first "
            "swapped every round). Load from a separate process "
            "(bench/serve_load.py, aiohttp, closed loop, keep-alive) on loopback, one single-instance "
            f"request per call; each point {warmup:g}s warm-up then {duration:g}s measured, at concurrency "
            f"{', '.join(map(str, CONCURRENCY))}. Latency is client-side (request sent to answer read). CPU "
            "share: user+system CPU seconds of the proxy and the Gateway replica processes over each "
            "one-hop point. Server CPU per request: the proxy's and the replica's (the Gateway's, or the "
            "floor's own) CPU seconds over a point divided by the requests answered in it, warm-up "
            "included; the ratio is the median of the rounds' own ratios. Embedded = "
            "serve.embedded.EmbeddedRouter.route (validation, model, threshold, answer) in the benchmark "
            "process, one thread; predictor = ModelHost.predict. The load "
            "generator shares the 2 cores with the server."
        ),
        "details": {
            "served": {
                m: {**r, "points": {str(c): p for c, p in r["points"].items()}} for m, r in srv.items()
            },
            "in_process": {str(k): v for k, v in local["by_size"].items()},
            "embedded": {k: v for k, v in local["embedded"].items() if k != "answer"},
            "goals": GOALS,
            "cpu_count": os.cpu_count(),
        },
    }
    return write_result(result, out_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short points (about 2 minutes in all)")
    p.add_argument("--out-dir", default="bench/results")
    a = p.parse_args(argv)
    _print(run(quick=a.quick, out_dir=a.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
