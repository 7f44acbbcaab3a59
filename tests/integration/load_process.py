"""Constant open-loop load on a tunestack server, from its own process, through serve.client.

    python -m tests.integration.load_process --url http://127.0.0.1:PORT --rate 60 --duration 30 \
        --out load.json [--pairs pairs.json] [--started started.flag]

Request i is due at start + i / rate whatever happened to the earlier ones (open loop: a slow or
failing server does not slow the offered load down); a pool of threads, one TunestackClient
each, sends them. Every 5th request is POST /v1/encode when --pairs lists (concept, unit, value)
triplets, the rest POST /v1/route. The client retries (connection errors, 502/503/504, with
backoff); a request counts as lost when it still failed after its retries. --out gets a JSON
summary and one record per request: its offset, endpoint, ok, HTTP status of the failure, whether
the router's fallback answered, the model version, latency and the error.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.data.sequences import ROUTING_FEATURES
from serve.client import TunestackClient, TunestackError

FEATURES = ROUTING_FEATURES  # the router's input order


def run(
    url: str,
    rate: float,
    duration: float,
    workers: int = 16,
    pairs: list | None = None,
    started: str | None = None,
    retries: int = 4,
) -> dict:
    local = threading.local()
    clients: list[TunestackClient] = []
    lock = threading.Lock()
    records: list[dict] = []

    def client() -> TunestackClient:
        if not hasattr(local, "c"):
            local.c = TunestackClient(url, timeout=10.0, retries=retries, backoff_s=0.1, max_backoff_s=2.0)
            with lock:
                clients.append(local.c)
        return local.c

    def one(i: int, due: float, t0: float) -> None:
        c = client()
        rng = random.Random(i)
        encode = bool(pairs) and i % 5 == 4
        rec = {
            "i": i,
            "t": round(due - t0, 4),
            "endpoint": "/v1/encode" if encode else "/v1/route",
            "ok": False,
            "status": None,
            "fallback": False,
            "version": None,
            "error": None,
        }
        t = time.perf_counter()
        try:
            if encode:
                concept, unit, value = pairs[i % len(pairs)]
                out = c.encode(concept, unit, value * (0.5 + rng.random()))
            else:
                out = c.route({f: rng.random() for f in FEATURES})
                rec["fallback"] = bool(out.get("fallback"))
            rec.update(ok=True, version=out.get("model_version"))
        except TunestackError as e:
            rec.update(status=e.status, error=str(e)[:300])
        except Exception as e:
            rec.update(error=f"{type(e).__name__}: {e}"[:300])
        rec["latency_s"] = round(time.perf_counter() - t, 5)
        with lock:
            records.append(rec)
        if started and i == 0:
            Path(started).write_text("started")

    t0 = time.perf_counter()
    n = int(rate * duration)
    with ThreadPoolExecutor(workers) as pool:
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, due, t0)
        offered_s = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    records.sort(key=lambda r: r["i"])
    lost = [r for r in records if not r["ok"]]
    stats = {k: sum(c.stats[k] for c in clients) for k in ("requests", "retries", "failed")}
    return {
        "url": url,
        "rate": rate,
        "duration_s": duration,
        "requests": len(records),
        "offered_s": offered_s,
        "wall_s": wall,
        "achieved_rate": len(records) / offered_s if offered_s else 0.0,
        "ok": len(records) - len(lost),
        "lost": len(lost),
        "success_rate": (len(records) - len(lost)) / len(records) if records else 0.0,
        "fallbacks": sum(r["fallback"] for r in records),
        "client": stats,
        "records": records,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, default=60.0, help="requests per second offered")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--pairs", help="JSON file: [[concept, unit, value], ...] for /v1/encode")
    ap.add_argument("--started", help="file written once the first request is answered")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    pairs = json.loads(Path(a.pairs).read_text()) if a.pairs else None
    out = run(a.url, a.rate, a.duration, a.workers, pairs, a.started)
    Path(a.out).write_text(json.dumps(out))
    print(
        f"{out['requests']} requests at {out['achieved_rate']:.1f}/s: {out['ok']} ok, {out['lost']} lost, "
        f"{out['fallbacks']} fallbacks, {out['client']['retries']} retries"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
