"""Ingest throughput into object storage (s3://, moto's S3 server over HTTP on loopback) against a
local disk: the same documents, the same ingest, in the same run.

    python -m bench.storage [--quick] [--out-dir bench/results]

Documents: generated SEC companyfacts (pipeline.synth.write_companyfacts_json; 24 companies,
--quick 8), ingested with the hashed embedder (no model download) into a fresh store each time:
once into a local folder, once into `s3://…` on a moto server this benchmark starts (a real HTTP
S3 endpoint, not an in-process patch), alternating, three rounds (--quick two); the figure is the
median of facts read per second. No goal: moto is a single Python process on this machine, not
S3's speed; the ratio says what the object-storage path (one PUT per file, no renames, the
manifest as a pointer object) costs on top of the same work, with the network taken out.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from bench.report import bench_cli


def _documents(folder: str, n: int) -> list[str]:
    from pipeline.synth import write_companyfacts_json

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"CIK{1000 + i:010d}.json")
        write_companyfacts_json(path, cik=1000 + i, name=f"Company {i}", facts_per_concept=24, seed=i)
        paths.append(path)
    return paths


def _ingest_seconds(docs: list[str], store: str) -> tuple[float, int]:
    from pipeline.ingest import ingest

    t0 = time.perf_counter()
    report = ingest(docs, store, embedder="hashed", progress=False)
    return time.perf_counter() - t0, int(report.rows_read)


def measure(companies: int, rounds: int) -> dict:
    from pipeline.store.integrity import verify_store
    from tests.support.s3server import start_s3_server

    server = start_s3_server()
    os.environ.update(server.env)  # this process (and anything it starts) reaches the server
    tmp = tempfile.mkdtemp(prefix="bench-storage-")
    try:
        docs = _documents(os.path.join(tmp, "docs"), companies)
        runs = {"local": [], "s3": []}
        facts = None
        for r in range(rounds):
            for backend in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                store = (
                    os.path.join(tmp, f"store-{r}")
                    if backend == "local"
                    else server.uri(server.fresh_prefix(f"store-{r}"))
                )
                seconds, facts = _ingest_seconds(docs, store)
                check = verify_store(store)
                if not check.ok:
                    raise RuntimeError(f"{backend} store failed verification: {check.lines()}")
                runs[backend].append(seconds)
        out = {
            "companies": companies,
            "facts_read": facts,
            "rounds": rounds,
            "seconds": runs,
            "endpoint": server.endpoint,
        }
        for backend, secs in runs.items():
            out[f"{backend}_facts_per_s"] = facts / statistics.median(secs)
        return out
    finally:
        server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t0 = time.perf_counter()
    companies, rounds = (8, 2) if quick else (24, 3)
    m = measure(companies, rounds)
    ratio = m["s3_facts_per_s"] / m["local_facts_per_s"]
    result = {
        "name": "storage",
        "title": "Ingest into object storage (s3:// on moto) vs a local disk: facts/s",
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "figures": [
            {
                "figure": f"ingest facts/s into s3:// (moto's S3 server over HTTP, {companies} companies)",
                "value": m["s3_facts_per_s"],
                "unit": "facts/s",
                "baseline": "the same ingest into a local folder",
                "baseline_value": m["local_facts_per_s"],
                "ratio": ratio,
                "goal": None,
                "pass": None,
            }
        ],
        "plots": [],
        "method": (
            f"{companies} generated companyfacts documents ({m['facts_read']:,} facts read), ingested with the "
            f"hashed embedder into a fresh store per run: a local folder, and a prefix of a bucket on moto's "
            f"S3 server (python -m moto.server on a loopback port, started by the benchmark), alternating "
            f"backends over {rounds} rounds; median wall seconds per backend; each store passes "
            "`store verify` afterwards. No goal: moto is one Python process on the same machine, not S3."
        ),
        "details": m,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "storage.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def render(result: dict) -> str:
    f = result["figures"][0]
    d = result["details"]
    return "\n".join(
        [
            result["title"] + (" (quick)" if result["quick"] else ""),
            f"{f['figure']}: {f['value']:,.0f} {f['unit']} vs {f['baseline_value']:,.0f} ({f['baseline']}) "
            f"= {f['ratio']:.2f}x",
            f"seconds per run: local {d['seconds']['local']}, s3 {d['seconds']['s3']}",
        ]
    )


def main(argv=None) -> int:
    return bench_cli("storage", __doc__, run, render, "8 companies x 2 rounds instead of 24 x 3", argv)


if __name__ == "__main__":
    sys.exit(main())
