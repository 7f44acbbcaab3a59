"""One partition's de-duplication and final write (pipeline/ingest/partition.py): the same rows
whether a partition is processed whole or in chunks of whole entities, and the old one-pass rule
(latest filing, then greatest accession, then first read) for which duplicate survives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import scratch
from pipeline.ingest.companyfacts import parse_companyfacts
from pipeline.ingest.partition import dedupe_partition, latest_per_fact, pair_ids_of, write_partition
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
    fs = resolve(str(root)).fs
    tables = [parse_companyfacts(json.dumps(company_document(i, seed=2)), f"c{i}").table for i in range(6)]
    raw_files = {}
    for k in range(3):  # as phase A writes them: a scratch file of a few record batches
        with scratch.writer(fs, str(root / f"raw-{k}.arrow")) as out:
            for t in tables[2 * k : 2 * k + 2]:
                out.write_table(t)
        raw_files[f"raw-{k}.arrow"] = sum(t.num_rows for t in tables[2 * k : 2 * k + 2])
    pq.write_table(pa.concat_tables(tables[:2]), root / "old.parquet")
    return root, raw_files, pa.concat_tables(tables + tables[:2])


@pytest.mark.parametrize("chunk_rows", [10**9, 5_000, 1])
def test_chunks_of_whole_entities_give_the_same_rows(raw, chunk_rows):
    root, raw_files, everything = raw
    loc = resolve(str(root))
    r = dedupe_partition(loc, "", 3, raw_files, "old.parquet", "dedup.arrow", chunk_rows)
    chunks = list(scratch.batches(loc.fs, str(root / "dedup.arrow")))
    got = pa.concat_tables(chunks)
    want = latest_per_fact(everything)
    assert _sorted(got).equals(_sorted(want)) and r.rows_after == want.num_rows
    assert r.rows_old == pq.read_metadata(root / "old.parquet").num_rows
    entities = len(set(everything["entity_id"].to_pylist()))
    assert r.entities == entities and sum(r.counts.values()) == r.rows_after
    assert r.chunks == {10**9: 1, 5_000: r.chunks, 1: entities}[chunk_rows] and 1 <= r.chunks <= entities
    assert len(chunks) == r.chunks  # one record batch per chunk
    assert all(set(a["entity_id"].to_pylist()).isdisjoint(b["entity_id"].to_pylist())
               for i, a in enumerate(chunks) for b in chunks[i + 1 :])  # fmt: skip
    # Phase D reads those chunks back one at a time and writes one sorted file.
    keys = sorted(r.counts)
    ids = {k: i for i, k in enumerate(keys)}
    scalers = {i: fit_scaler(pa.array([1.0, 2.0, float(i + 3)]).to_numpy()) for i in range(len(keys))}
    rec = write_partition(loc, "", "dedup.arrow", "final.parquet", ids, scalers, 4096)
    final = pq.read_table(root / "final.parquet")
    assert rec["rows"] == final.num_rows == r.rows_after
    order = final.select(["entity_id", "pair_id", "period_end"]).to_pylist()
    assert order == sorted(order, key=lambda x: (x["entity_id"], x["pair_id"], x["period_end"] or ""))
    # The same rows in another order (a hash join there once returned them in an order that varied
    # from run to run) give the same bytes: rows that tie on entity, pair and period (durations
    # ending on one day) are ordered by the rest of their key.
    assert len({tuple(o.values()) for o in order}) < len(order)  # there are such ties here
    with scratch.writer(loc.fs, str(root / "dedup-reversed.arrow")) as out:
        for c in chunks:
            scratch.write_chunk(out, c.take(pa.array(range(c.num_rows - 1, -1, -1))))
    again = write_partition(loc, "", "dedup-reversed.arrow", "final-2.parquet", ids, scalers, 4096)
    assert again["sha256"] == rec["sha256"]


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


def test_pair_ids_of_every_row_and_minus_one_for_pairs_not_given():
    rng = np.random.default_rng(0)
    pairs = [(f"C{i}", u) for i in range(40) for u in ("USD", "shares", "USD/shares") if rng.random() < 0.6]
    given = {p: int(i) for p, i in zip(pairs[::2], rng.permutation(1000)[: len(pairs[::2])])}
    rows = [pairs[i] for i in rng.integers(0, len(pairs), 5_000)] + [("C999", "USD"), ("C0", "pure")]
    t = pa.table({"concept": [c for c, _ in rows], "unit": [u for _, u in rows]})
    assert pair_ids_of(t, given).tolist() == [given.get(r, -1) for r in rows]
    assert pair_ids_of(t, {}).tolist() == [-1] * len(rows)


def test_latest_per_fact_matches_a_one_pass_reference_with_nulls_in_every_key():
    from pipeline.store.layout import RAW_SCHEMA

    rng = np.random.default_rng(7)

    def pick(options):
        return options[rng.integers(len(options))]

    rows = [
        {"entity_id": pick(["e1", "e2"]), "entity_name": None, "taxonomy": pick(["us-gaap", "dei", None]),
         "concept": pick(["A", "B"]), "unit": pick(["USD", "shares"]), "value": float(i),
         "period_start": pick([None, 100, 200]), "period_end": pick([None, 300, 400]), "fy": None,
         "fp": None, "form": None, "filed": pick([None, 10, 11, 12]), "accn": pick([None, "a1", "a2", "a3"])}
        for i in range(3_000)
    ]  # fmt: skip
    best: dict = {}  # the rule in one pass: latest filing, then greatest accession (nulls last), then first read
    for i, r in enumerate(rows):
        key = (r["entity_id"], r["taxonomy"], r["concept"], r["unit"], r["period_start"], r["period_end"],
               (r["accn"] or "") if r["period_end"] is None else "")  # fmt: skip
        score = (r["filed"] is not None, r["filed"] or 0, r["accn"] is not None, r["accn"] or "")
        if key not in best or score > best[key][0]:
            best[key] = (score, i)
    want = sorted(i for _, i in best.values())
    got = latest_per_fact(pa.Table.from_pylist(rows, schema=RAW_SCHEMA))
    assert got["value"].to_pylist() == [float(i) for i in want]
