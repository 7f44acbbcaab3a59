"""The store on a real S3-protocol server (moto's, over HTTP): ingest, append and gc work without a
single rename, `store verify` checks every file's sha256 there, and a failure between writing a
version and its pointer leaves the previous version live with nothing else changed."""

from __future__ import annotations

import pytest

from pipeline.ingest import ingest
from pipeline.storage import resolve
from pipeline.store import TripletStore, layout
from pipeline.store.integrity import verify_store
from tests.support.store_docs import store_rows as _rows
from tests.support.store_docs import synth_docs as _docs


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    return _docs(d / "bulk", 0, 6), _docs(d / "more", 6, 1)


def _ingest(paths, uri, **kw):
    return ingest(paths, uri, embedder="hashed", progress=False, **kw)


def _objects(uri: str) -> dict[str, bytes]:
    loc = resolve(uri)
    return {rel: loc.read_bytes(rel) for rel in loc.list_files()}


def test_ingest_append_verify_and_gc_on_s3(s3_prefix, docs, tmp_path):
    bulk, more = docs
    uri = f"{s3_prefix}/store"
    _ingest(bulk, uri)
    first = TripletStore(uri).bucket_files()
    _ingest(more, uri, keep=0)
    store = TripletStore(uri)
    assert store.manifest["version"] == 2
    new = [f for b, f in store.bucket_files().items() if f != first.get(b)]
    assert len(new) == 1 and new[0].startswith("v000002/")  # one bucket written, the rest are v1's objects
    check = verify_store(uri)
    assert check.ok and check.files_checked >= len(store.bucket_files()) + 1, check.lines()
    assert {r for r in _objects(uri) if r.startswith("v0")} == set(store.manifest["files"])  # gc'd
    local = tmp_path / "local"
    _ingest(bulk, str(local))
    _ingest(more, str(local))
    assert _rows(uri).equals(_rows(local))  # the same facts as on a local disk

    # Damage is found on S3 as locally: one object rewritten with other bytes.
    loc = resolve(uri)
    victim = store.manifest["triplet_files"][0]
    loc.write_bytes_atomic(victim, loc.read_bytes(victim)[:-1] + b"\0")
    assert any("sha256" in what or "bytes" in what for _, what in verify_store(uri).damage)


def test_a_failure_before_the_pointer_leaves_the_previous_version_live_on_s3(s3_prefix, docs, monkeypatch):
    bulk, more = docs
    uri = f"{s3_prefix}/store"
    _ingest(bulk, uri)
    before = _objects(uri)
    real = layout.write_atomic

    def fail_at_the_pointer(loc, rel, data):
        if rel == layout.MANIFEST:
            raise OSError("injected: the connection dropped before the pointer was written")
        return real(loc, rel, data)

    monkeypatch.setattr(layout, "write_atomic", fail_at_the_pointer)
    with pytest.raises(OSError, match="injected"):
        _ingest(more, uri)
    after = _objects(uri)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    assert TripletStore(uri).manifest["version"] == 1 and verify_store(uri).ok
