"""`tunestack demo`: the main job end to end on a laptop, with nothing but this checkout.

ingest (real SEC data beside the checkout, else generated companyfacts documents)
→ one Ray Data streaming pass over the store
→ tune the autoencoder (on the store) and the router (on generated routing logs) with ASHA
→ register each best trial and promote it
→ serve both on Ray Serve and send real HTTP requests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline import home

REPO = Path(__file__).resolve().parents[1]
# Small budgets so the demo finishes in minutes on 2 cores; the configs' own budgets are larger.
DEMO_TUNES = {
    "autoencoder": ["train.epochs=4", "train.patience=0", "tune.asha.grace_period=2", "tune.asha.max_t=4"],
    "router": ["train.epochs=6", "tune.asha.max_t=6"],
}


def _say(step: str, msg: str) -> None:
    print(f"[demo] {step:<8} {msg}", flush=True)


def demo_inputs(workdir: Path) -> list[str]:
    """Real SEC companyfacts when available (TUNESTACK_DEMO_DATA or ../shared/data/us-gaap),
    otherwise three generated companyfacts documents in the same format."""
    for candidate in (
        os.environ.get("TUNESTACK_DEMO_DATA"),
        Path.cwd().parent / "shared" / "data" / "us-gaap",
    ):
        if candidate and Path(candidate).is_dir():
            files = sorted(str(p) for p in Path(candidate).glob("*_companyfacts.json*"))
            if files:
                return files
    from pipeline.synth import write_companyfacts_json

    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(["Acme Corp", "Globex Inc", "Initech LLC"]):
        path = workdir / f"CIK{1000 + i:010d}.json.gz"
        write_companyfacts_json(str(path), cik=1000 + i, name=name, facts_per_concept=24, seed=i)
        out.append(str(path))
    return out


def run_demo() -> int:
    import requests
    from ray import serve

    from pipeline.data import triplet_dataset
    from pipeline.ingest import ingest
    from pipeline.runtime import ensure_ray, free_port
    from pipeline.synth import synth_routing
    from pipeline.tune.run import run_tune
    from serve.cli import deploy, serve_config_dict

    root = Path(home.home())
    store = home.default_store_uri()
    t0 = time.perf_counter()

    inputs = demo_inputs(root / "demo-input")
    _say("ingest", f"{len(inputs)} companyfacts document(s): {', '.join(Path(p).name for p in inputs)}")
    r = ingest(inputs, store, progress=False)
    _say(
        "ingest",
        f"{r.rows_read} facts read, {r.duplicates_dropped} duplicates dropped, {r.rows_after} in the "
        f"store ({r.pairs} pairs, {r.entities} entities, embedder {r.embedder}) at {store}",
    )

    ensure_ray()
    t = time.perf_counter()
    n = sum(
        len(b["pair_id"])
        for b in triplet_dataset(store, split=None).iter_batches(batch_size=8192, batch_format="numpy")
    )
    _say("stream", f"{n} rows streamed through Ray Data in {time.perf_counter() - t:.2f}s")
    if n != r.rows_after:
        _say("stream", f"FAILED: streamed {n} rows, the store holds {r.rows_after}")
        return 1

    info = synth_routing(str(root / "routing"), rows=20_000, seed=0)
    _say(
        "synth",
        f"20000 routing-log rows at {root / 'routing'} (labels drawn from a feature-dependent "
        f"P(lightweight suffices); the oracle router's APGR {info['oracle_apgr']:.3f})",
    )
    for family, overrides in DEMO_TUNES.items():
        t = time.perf_counter()
        out = run_tune(str(REPO / "tune_configs" / f"{family}.yaml"), promote=True, overrides=overrides)
        if not out.registered:
            _say("tune", f"FAILED: {family}: no trial produced a checkpoint ({out.path})")
            return 1
        stopped = sum(t_["stopped_early"] for t_ in out.trials)
        _say(
            "tune",
            f"{family}: {len(out.trials)} trials, {stopped} stopped early by ASHA, best "
            f"{out.best['metric']:.4f} → registered {family} {out.registered['version']} (production) "
            f"in {time.perf_counter() - t:.0f}s; report {out.report['table']}",
        )
        cal = out.best.get("route_calibration")
        if cal:
            _say(
                "calibrate",
                f"{family}: threshold {cal['threshold']:.3f} routes {cal['share_lightweight']:.1%} of the "
                f"validation requests lightweight, {cal['error_among_lightweight']:.2%} of them wrong "
                f"(target {cal['max_lightweight_error']:.0%}); APGR {cal['apgr']:.3f}",
            )

    port = free_port()
    deploy(serve_config_dict(str(REPO / "serve" / "config.yaml"), "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    try:
        _say("serve", f"Ray Serve running at {base} (OpenAPI at {base}/docs)")
        body = {
            "features": {
                "similarity": 0.92,
                "recency": 0.8,
                "frequency": 12.0,
                "success_rate": 0.97,
                "metadata_match": 1.0,
            }
        }
        resp = requests.post(f"{base}/v1/route", json=body, timeout=30)
        _say("query", f"POST /v1/route {json.dumps(body)} → {resp.status_code} {resp.text}")
        pair = _a_known_pair(store)
        enc = requests.post(f"{base}/v1/encode", json=pair, timeout=30)
        shown = {k: v for k, v in enc.json().items() if k != "latent"} if enc.ok else enc.text
        _say("query", f"POST /v1/encode {json.dumps(pair)} → {enc.status_code} {json.dumps(shown)}")
        ok = resp.status_code == 200 and enc.status_code == 200
    finally:
        serve.shutdown()
    _say("done" if ok else "FAILED", f"in {time.perf_counter() - t0:.0f}s; everything is under {root}")
    return 0 if ok else 1


def _a_known_pair(store_uri: str) -> dict:
    """One real (concept, unit, value) from the store to encode."""
    import pyarrow.parquet as pq

    from pipeline.store import TripletStore

    store = TripletStore(store_uri)
    row = (
        pq.ParquetFile(store.triplet_files()[0], filesystem=store.loc.fs)
        .read_row_group(0, columns=["concept", "unit", "value"])
        .slice(0, 1)
        .to_pylist()[0]
    )
    return {"concept": row["concept"], "unit": row["unit"], "value": row["value"]}
