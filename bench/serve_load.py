"""The load generator of bench/serve.py, run as its own process (never inside the server's).

    python -m bench.serve_load --url http://127.0.0.1:PORT/v1/route --body-file BODY.json \
        --concurrency 16 --warmup 1 --duration 5

`concurrency` asyncio workers each send one POST at a time over their own keep-alive connection
(aiohttp), the next as soon as the answer arrives (a closed loop). Requests that start during the
warm-up are not counted. Prints one JSON line: requests, errors, requests/s, latency percentiles
in ms (client-side: request written → whole answer read), every status code seen, and how many
requests were answered in all, warm-up included (what the server worked for over the whole run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np


async def _load(url: str, body: bytes, concurrency: int, warmup: float, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    answered = 0  # every request answered, warm-up included (the server's work over the whole run)
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)

    async def worker():
        nonlocal answered
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    status = 0
                    if len(errors) < 5:
                        errors.append(f"{type(e).__name__}: {e}")
                t1 = time.perf_counter()
                answered += 1
                if t0 >= t_measure:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_measure
    lat_ms = np.asarray(latencies) * 1e3
    n_err = sum(v for k, v in statuses.items() if k != 200)

    def pct(q):
        return float(np.percentile(lat_ms, q)) if len(lat_ms) else None

    return {
        "concurrency": concurrency,
        "requests": int(len(lat_ms)),
        "answered_with_warmup": answered,
        "errors": int(n_err),
        "seconds": elapsed,
        "rps": len(lat_ms) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": float(lat_ms.mean()) if len(lat_ms) else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "error_samples": errors,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True, help="the JSON body every request sends")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not counted")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    a = p.parse_args(argv)
    with open(a.body_file, "rb") as f:
        body = f.read()
    out = asyncio.run(_load(a.url, body, a.concurrency, a.warmup, a.duration))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
