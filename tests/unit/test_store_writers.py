"""Store writers (issue 12): one at a time (a lock per store, real processes), previous versions
kept for readers until `gc`, files fsynced before the manifest names them, and the resume guard
of triplet runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.ingest import ingest
from pipeline.storage import resolve
from pipeline.store import files as files_module
from pipeline.store.integrity import verify_store
from pipeline.store.layout import TripletStore, feature_files
from pipeline.store.lock import StoreLock, StoreLocked
from pipeline.train.run import same_training_data, triplet_fingerprint
from tests.support import tree_digest
from tests.support.store_docs import make_docs

ROOT = Path(__file__).resolve().parents[2]
ROWS_PER_DOC = 27  # make_docs: 3 concepts x 9 years per company
INGEST = """
import json, sys
from pipeline.ingest import ingest
r = ingest(json.loads(sys.argv[1]), sys.argv[2], embedder="hashed", embed_dim=8, progress=False, lock_wait=600)
print(json.dumps({"version": r.store_version, "rows_after": r.rows_after}))
"""


def _ingest(paths, uri, **kw):
    return ingest(paths, str(uri), embedder="hashed", embed_dim=8, progress=False, **kw)


def _listing(uri) -> list[str]:
    return sorted(p.name for p in Path(uri).iterdir())


def _records(uri) -> list[str]:
    return sorted(p.name for p in (Path(uri) / "versions").iterdir())


def _spawn(docs, uri, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", INGEST, json.dumps(docs), str(uri)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_concurrent_ingests_in_real_processes_land_one_after_the_other(tmp_path):
    uri = tmp_path / "s"
    a, b = make_docs(tmp_path / "a", 1, 3), make_docs(tmp_path / "b", 100, 4)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # Hold the lock while both start, so they truly overlap: each must find it taken and wait.
    with StoreLock(resolve(str(uri)), wait=0):
        procs = [_spawn(a, uri, logs[0]), _spawn(b, uri, logs[1])]
        try:
            _wait_for(
                lambda: (
                    all("is being written by another process" in log.read_text() for log in logs)
                    or any(p.poll() is not None for p in procs)
                ),
                300,  # two fresh interpreters importing pyarrow and pandas on a loaded machine
                "both ingests to wait for the lock",
            )
        except BaseException:
            for p in procs:
                p.kill()
            raise
        assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
        assert f"pid {os.getpid()}" in logs[0].read_text()  # the waiting message names the holder
    out = []
    for p, log in zip(procs, logs):
        stdout, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log.read_text()[-3000:]
        out.append(json.loads(stdout))
    assert sorted(o["version"] for o in out) == [1, 2]  # one after the other, the second on the first
    store = TripletStore(str(uri))
    assert store.manifest["counts"]["triplets"] == 7 * ROWS_PER_DOC  # no facts lost
    assert store.manifest["counts"]["entities"] == 7
    check = verify_store(str(uri))
    assert check.ok and not check.notes, check.lines()
    assert (uri / ".lock").read_bytes() == b""  # released: it names no holder


def test_a_writer_that_will_not_wait_fails_cleanly_and_leaves_the_holders_staging(tmp_path, capsys):
    uri = tmp_path / "s"
    _ingest(make_docs(tmp_path / "a", 1, 2), uri)
    store = TripletStore(str(uri))
    with store.writing(wait=0):
        holders = store.stage()  # another writer's work in progress
        before = tree_digest(uri)
        with pytest.raises(StoreLocked, match=r"being written by another process \(pid \d+ on .*waited 0 s"):
            _ingest(make_docs(tmp_path / "b", 50, 1), uri, lock_wait=0)
        assert main(["ingest", *make_docs(tmp_path / "b", 50, 1), "--store", str(uri), "--wait", "0.2"]) == 2
        err = capsys.readouterr().err
        assert "waited 0.2 s" in err and "nothing was written; the store is as it was" in err, err
        assert tree_digest(uri) == before and Path(holders.path).is_dir()
        holders.abort()
    assert _ingest(make_docs(tmp_path / "b", 50, 1), uri).rows_after == 3 * ROWS_PER_DOC


def test_a_killed_writers_leftovers_are_removed_under_the_lock(tmp_path):
    uri = tmp_path / "s"
    _ingest(make_docs(tmp_path / "a", 1, 2), uri)
    (uri / ".staging-0123456789ab" / "triplets").mkdir(parents=True)
    (uri / "v000007").mkdir()  # renamed, but the manifest swap never happened
    (uri / feature_files(5)[1]).write_text("{}")  # a feature version no manifest names
    (uri / ".manifest.json.tmp-1").write_text("{")
    assert len(verify_store(str(uri)).notes) == 3
    _ingest(make_docs(tmp_path / "b", 50, 1), uri)
    assert _listing(uri) == [".lock", "features", "manifest.json", "v000001", "v000002", "versions"]
    assert sorted(p.name for p in (uri / "features").iterdir()) == ["f000001.json", "f000001.safetensors"]


def test_previous_versions_stay_for_readers_until_gc(tmp_path, capsys):
    uri = tmp_path / "s"
    _ingest(make_docs(tmp_path / "a", 1, 1), uri)
    reader = TripletStore(str(uri))  # a reader that planned its reads on version 1
    for i in range(2):
        _ingest(make_docs(tmp_path / f"b{i}", 10 + i, 1), uri)
    assert _listing(uri) == [
        ".lock",
        "features",
        "manifest.json",
        "v000001",
        "v000002",
        "v000003",
        "versions",
    ]
    assert pq.read_table(reader.triplet_files()).num_rows == ROWS_PER_DOC  # still readable
    _ingest(make_docs(tmp_path / "c", 20, 1), uri)  # a third previous version: the oldest goes
    assert TripletStore(str(uri)).previous_versions() == [2, 3]
    assert _records(uri) == ["v000002.json", "v000003.json", "v000004.json"]
    _ingest(make_docs(tmp_path / "d", 30, 1), uri, keep=0)
    assert TripletStore(str(uri)).previous_versions() == [] and _records(uri) == ["v000005.json"]
    live = TripletStore(str(uri)).manifest  # what remains of older folders: files v5 reuses, no more
    assert {str(p.relative_to(uri)) for p in uri.glob("v0*/**/*") if p.is_file()} == set(live["files"])
    _ingest(make_docs(tmp_path / "e", 40, 1), uri, keep=5)
    assert main(["store", "gc", "--store", str(uri), "--keep", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"live": 6, "removed": ["v000005"], "kept": []}
    assert main(["store", "gc", "--store", str(uri), "--keep", "-1"]) == 2
    assert "keep must be 0 or more" in capsys.readouterr().err
    check = verify_store(str(uri))
    assert check.ok and not check.notes and check.version == 6
    assert TripletStore(str(uri)).manifest["counts"]["triplets"] == 6 * ROWS_PER_DOC


def test_every_file_is_fsynced_before_the_manifest_names_it(tmp_path, monkeypatch):
    uri = tmp_path / "s"
    _ingest(make_docs(tmp_path / "a", 1, 1), uri)
    synced: list[str] = []
    real = files_module._fsync
    monkeypatch.setattr(files_module, "_fsync", lambda path, flags: (synced.append(path), real(path, flags)))
    _ingest(make_docs(tmp_path / "b", 10, 1), uri)
    swap = next(i for i, p in enumerate(synced) if os.path.basename(p).startswith(".manifest.json.tmp-"))
    before = set(synced[:swap])
    store = TripletStore(str(uri))
    new = [name for name in store.manifest["files"] if name.startswith("v000002/")]
    assert new and all(os.path.join(str(uri), name) in before for name in new)  # each file it wrote
    assert os.path.join(str(uri), "versions", ".v000002.json.tmp-" + str(os.getpid())) in before  # its record
    assert str(uri) in synced[swap:]  # the folder, after the rename over manifest.json


def test_lease_lock_on_an_object_store(s3_prefix):
    """S3 has no flock: the lock is a lease object, created or taken over by a conditional write."""
    loc = resolve(s3_prefix)
    assert not loc.local and loc.conditional_writes
    with StoreLock(loc, wait=0):
        lease = json.loads(loc.read_bytes(".lock"))
        assert lease["pid"] == os.getpid() and lease["expires"] > time.time()
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            StoreLock(loc, wait=0.1, announce=False).acquire()
    assert not loc.exists(".lock")  # released: the lease is gone
    loc.write_bytes_atomic(".lock", json.dumps({"owner": "crashed", "expires": time.time() - 1}).encode())
    with StoreLock(loc, wait=0) as lock:  # an expired lease is taken over
        assert lock.held and json.loads(loc.read_bytes(".lock"))["owner"] != "crashed"


def test_resume_guard_compares_the_triplet_stores_digest(tmp_path):
    uri = tmp_path / "s"
    _ingest(make_docs(tmp_path / "a", 1, 1), uri)
    saved = triplet_fingerprint(TripletStore(str(uri)), 0.1)
    assert saved["manifest_sha256"] and same_training_data(
        saved, triplet_fingerprint(TripletStore(str(uri)), 0.1)
    )
    _ingest(make_docs(tmp_path / "b", 10, 1), uri)
    now = triplet_fingerprint(TripletStore(str(uri)), 0.1)
    assert not same_training_data(saved, now)
    # The digest alone decides, not the version number (a store rebuilt at the same version).
    assert not same_training_data(saved, {**now, "version": saved["version"]})
    seq = {"kind": "sequences", "sha256": "ab", "path": "/x"}
    assert same_training_data(seq, {**seq, "path": "/y"}) and not same_training_data(
        seq, {**seq, "sha256": "cd"}
    )
