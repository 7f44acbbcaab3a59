"""One partition's de-duplication and final write (pipeline/ingest/partition.py): the same rows
whether a partition is processed whole or in chunks of whole entities, and the old one-pass rule
(latest filing, then greatest accession, then first read) for which duplicate survives."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.companyfacts import parse_companyfacts
from pipeline.ingest.partition import dedupe_partition, latest_per_fact, write_partition
from pipeline.storage import resolve
from pipeline.store.scaler import fit_scaler
from pipeline.synth_companyfacts import company_document

ORDER = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn", "filed", "value"]


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([(c, "ascending") for c in ORDER])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Raw rows of 6 synthetic companies in 3 files, plus a 'live' file re-reporting two of them."""
    import json

    root = tmp_path_factory.mktemp("part")
    tables = [parse_companyfacts(json.dumps(company_document(i, seed=2)), f"c{i}").table for i in range(6)]
    for k in range(3):
        pq.write_table(pa.concat_tables(tables[2 * k : 2 * k + 2]), root / f"raw-{k}.parquet")
    pq.write_table(pa.concat_tables(tables[:2]), root / "old.parquet")
    return root, pa.concat_tables(tables + tables[:2])


@pytest.mark.parametrize("chunk_rows", [10**9, 5_000, 1])
def test_chunks_of_whole_entities_give_the_same_rows(raw, chunk_rows):
    root, everything = raw
    loc = resolve(str(root))
    r = dedupe_partition(loc, "", 3, [f"raw-{k}.parquet" for k in range(3)], "old.parquet", "dedup.parquet",
                         chunk_rows)  # fmt: skip
    got = pq.read_table(root / "dedup.parquet")
    want = latest_per_fact(everything)
    assert _sorted(got).equals(_sorted(want)) and r.rows_after == want.num_rows
    assert r.rows_old == pq.read_metadata(root / "old.parquet").num_rows
    entities = len(set(everything["entity_id"].to_pylist()))
    assert r.entities == entities and sum(r.counts.values()) == r.rows_after
    assert r.chunks == {10**9: 1, 5_000: r.chunks, 1: entities}[chunk_rows] and 1 <= r.chunks <= entities
    assert pq.ParquetFile(root / "dedup.parquet").metadata.num_row_groups == r.chunks  # one per chunk
    # Phase D reads those chunks back one at a time and writes one sorted file.
    keys = sorted(r.counts)
    ids = {k: i for i, k in enumerate(keys)}
    scalers = {i: fit_scaler(pa.array([1.0, 2.0, float(i + 3)]).to_numpy()) for i in range(len(keys))}
    rec = write_partition(loc, "", "dedup.parquet", "final.parquet", ids, scalers, 4096)
    final = pq.read_table(root / "final.parquet")
    assert rec["rows"] == final.num_rows == r.rows_after
    order = final.select(["entity_id", "pair_id", "period_end"]).to_pylist()
    assert order == sorted(order, key=lambda x: (x["entity_id"], x["pair_id"], x["period_end"] or ""))


def test_the_latest_filing_then_the_greatest_accession_then_the_first_read_wins():
    def row(val, filed, accn):
        return {"entity_id": "e", "entity_name": None, "taxonomy": "t", "concept": "c", "unit": "u",
                "value": val, "period_start": None, "period_end": 0, "fy": None, "fp": None,
                "form": None, "filed": filed, "accn": accn}  # fmt: skip

    from pipeline.store.layout import RAW_SCHEMA

    t = pa.Table.from_pylist(
        [row(1.0, 10, "a"), row(2.0, 12, "a"), row(3.0, 12, "b"), row(4.0, 12, "b"), row(5.0, 11, "z")],
        schema=RAW_SCHEMA,
    )
    assert latest_per_fact(t)["value"].to_pylist() == [3.0]
