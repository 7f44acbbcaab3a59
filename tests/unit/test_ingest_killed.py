"""A `tunestack ingest` killed (SIGKILL) in the middle of its work leaves the live store as it was:
the manifest, every file it names and every kept record byte-identical, `store verify` clean (it
notes the leftovers); the next writer removes what the killed one left, under the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.ingest import ingest
from pipeline.store.integrity import verify_store
from pipeline.synth_companyfacts import synth_companyfacts
from tests.support import tree_digest

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_ingest_leaves_the_store_as_it_was(tmp_path):
    store = tmp_path / "s"
    small = synth_companyfacts(str(tmp_path / "small.zip"), 3, seed=1)["out"]
    ingest([small], str(store), embedder="hashed", progress=False)
    before = {k: v for k, v in tree_digest(store).items() if k != ".lock"}
    bulk = synth_companyfacts(str(tmp_path / "bulk.zip"), 40, seed=2)["out"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ingest", bulk, "--store", str(store), "--workers", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(store.glob(".staging-*/raw/*/*.arrow")):  # mid-way: parsing has written rows
            assert proc.poll() is None, "the ingest finished before it could be killed"
            assert time.monotonic() < deadline, "the ingest never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    after = tree_digest(store)
    assert {k: after[k] for k in before} == before  # the live version, its records, its features
    leftovers = set(after) - set(before) - {".lock"}
    assert leftovers and all(k.startswith((".staging-", "v000002/")) for k in leftovers), leftovers
    check = verify_store(str(store))
    assert check.ok and any("interrupted writer" in n for n in check.notes), check.lines()
    # The next writer (here: one that adds nothing) removes the leftovers under the lock.
    ingest([small], str(store), embedder="hashed", progress=False)
    assert not list(store.glob(".staging-*")) and verify_store(str(store)).ok
