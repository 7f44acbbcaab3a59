"""Appends cost what they add: a new company rewrites only the bucket it lands in, every other
bucket file of the live version is reused as it is (same file, same bytes), the facts are those of
one ingest of everything, known pairs keep their scaled values, and garbage collection deletes
only what no kept version names."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import ingest
from pipeline.store import TripletStore
from pipeline.store.integrity import verify_store
from pipeline.store.layout import bucket_of
from tests.support import tree_digest
from tests.support.store_docs import store_rows as _rows
from tests.support.store_docs import synth_docs as _docs


def _ingest(paths, uri, **kw):
    return ingest(paths, str(uri), embedder="hashed", progress=False, **kw)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    return _docs(d / "bulk", 0, 8), _docs(d / "more", 8, 1)


def test_an_append_rewrites_only_the_buckets_it_adds_to(docs, tmp_path):
    bulk, more = docs
    uri = tmp_path / "s"
    _ingest(bulk, uri)
    before = TripletStore(str(uri))
    old_files = before.bucket_files()
    old_bytes = {b: (uri / f).read_bytes() for b, f in old_files.items()}
    scaled_before = _rows(
        uri, ["entity_id", "concept", "unit", "period_start", "period_end", "accn", "scaled_value"]
    )

    r = _ingest(more, uri)
    after = TripletStore(str(uri))
    new_entity = f"{json.loads(open(more[0]).read())['cik']:010d}"
    target = bucket_of(new_entity, after.manifest["buckets"])
    for b, f in after.bucket_files().items():
        if b == target:
            assert f.startswith("v000002/") and (b not in old_files or f != old_files[b])
        else:  # not rewritten: the same file of version 1, byte for byte
            assert f == old_files[b] and (uri / f).read_bytes() == old_bytes[b]
    assert r.rows_after == after.manifest["counts"]["triplets"] == len(_rows(uri))
    assert r.rows_before == before.manifest["counts"]["triplets"]
    assert after.manifest["counts"]["entities"] == 9
    assert verify_store(str(uri)).ok

    # The same facts as one ingest of everything (pair ids and scalers differ: fitted on other data).
    once = tmp_path / "once"
    _ingest(bulk + more, once)
    assert _rows(uri).equals(_rows(once))
    # Known facts keep their scaled values bit for bit (the feature contract).
    scaled_after = _rows(uri, scaled_before.column_names)
    kept = scaled_after.filter(pc.not_equal(scaled_after["entity_id"], new_entity))
    assert kept.equals(scaled_before)

    # Counts per pair are those of the whole store.
    pairs = after.read_pairs().to_pylist()
    rows = pq.read_table(after.triplet_files(), columns=["pair_id"])["pair_id"].value_counts().to_pylist()
    assert {p["pair_id"]: p["count"] for p in pairs} == {r["values"]: r["counts"] for r in rows}


def test_gc_deletes_only_files_no_kept_version_names(docs, tmp_path):
    bulk, more = docs
    uri = tmp_path / "s"
    _ingest(bulk[:4], uri)
    _ingest(bulk[4:6], uri)
    _ingest(bulk[6:], uri, keep=0)  # v3 live, v1 and v2 dropped: only files v3 names remain
    store = TripletStore(str(uri))
    named = {f for f in store.manifest["files"]}
    on_disk = {str(p.relative_to(uri)) for p in uri.rglob("*") if p.is_file()}
    version_files = {f for f in on_disk if f.startswith("v0")}
    assert version_files == named  # reused files of v1/v2 stayed, the rest went
    assert sorted(p.name for p in (uri / "versions").iterdir()) == ["v000003.json"]
    assert verify_store(str(uri)).ok and _rows(uri).num_rows == store.manifest["counts"]["triplets"]


def test_a_failed_append_leaves_the_store_byte_identical(docs, tmp_path):
    bulk, more = docs
    uri = tmp_path / "s"
    _ingest(bulk, uri)
    before = tree_digest(uri)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"cik": 99, "facts": {"us-gaap": {"X": {"units": {"USD": [{"end": "2020-01-01"}]}}}}})
    )
    with pytest.raises(Exception, match="fact needs 'end' and 'val'"):
        _ingest([*more, str(bad)], uri)
    assert tree_digest(uri) == before
