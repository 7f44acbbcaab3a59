"""`tunestack demo`: the main job end to end on a laptop, with nothing but this checkout.

ingest (real SEC data beside the checkout, else generated companyfacts documents)
→ one Ray Data streaming pass over the store.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline import home


def _say(step: str, msg: str) -> None:
    print(f"[demo] {step:<8} {msg}", flush=True)


def demo_inputs(workdir: Path) -> list[str]:
    """Real SEC companyfacts when available (TUNESTACK_DEMO_DATA or ../shared/data/us-gaap),
    otherwise three generated companyfacts documents in the same format."""
    for candidate in (os.environ.get("TUNESTACK_DEMO_DATA"), Path.cwd().parent / "shared" / "data" / "us-gaap"):
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


def run_demo(keep: bool = False) -> int:
    import ray

    from pipeline.data import triplet_dataset
    from pipeline.ingest import ingest

    root = Path(home.home())
    store = home.default_store_uri()
    t0 = time.perf_counter()

    inputs = demo_inputs(root / "demo-input")
    _say("ingest", f"{len(inputs)} companyfacts document(s): {', '.join(Path(p).name for p in inputs)}")
    r = ingest(inputs, store, progress=False)
    _say("ingest", f"{r.rows_read} facts read, {r.duplicates_dropped} duplicates dropped, {r.rows_after} in the "
                   f"store ({r.pairs} pairs, {r.entities} entities, embedder {r.embedder}) at {store}")

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    ds = triplet_dataset(store, split=None)
    t = time.perf_counter()
    n = sum(len(b["x"]) for b in ds.iter_batches(batch_size=8192, batch_format="numpy"))
    dt = time.perf_counter() - t
    _say("stream", f"{n} rows streamed through Ray Data in {dt:.2f}s ({n / dt:,.0f} triplets/s)")
    if n != r.rows_after:
        _say("stream", f"FAILED: streamed {n} rows, the store holds {r.rows_after}")
        return 1
    _say("done", f"in {time.perf_counter() - t0:.1f}s; everything is under {root}")
    return 0
