"""Ingest against the real SEC data and against hostile inputs (no Ray needed)."""

import gzip
import json
import shutil
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import IngestError, ingest
from pipeline.store import TripletStore
from tests.support import COMPANIES, require_us_gaap, tree_digest


@pytest.mark.parametrize("ticker", sorted(COMPANIES))
def test_unique_fact_counts_match_the_data_readme(ticker, tmp_path):
    data = require_us_gaap()
    r = ingest(
        [str(data / f"{ticker}_companyfacts.json.gz")], str(tmp_path / "s"), embedder="hashed", progress=False
    )
    assert r.rows_after == COMPANIES[ticker]
    assert r.duplicates_dropped == r.rows_read - COMPANIES[ticker] > 0


def test_store_contents(us_gaap_store):
    store = TripletStore(us_gaap_store)
    m = store.manifest
    assert m["counts"]["triplets"] == sum(COMPANIES.values())
    assert m["counts"]["entities"] == 3
    assert m["embedder"] == {"name": "hashed-ngram-v1", "source_dim": 1024, "dim": 64, "reduction": "pca"}
    pairs = store.read_pairs()
    assert pairs.num_rows == m["counts"]["pairs"]
    assert len(set(zip(pairs["concept"].to_pylist(), pairs["unit"].to_pylist()))) == pairs.num_rows
    assert store.embeddings().shape == (pairs.num_rows, 64)
    t = pq.read_table(store.triplet_files()[0], filesystem=store.loc.fs)
    assert {"entity_id", "concept", "unit", "value", "scaled_value", "pair_id", "accn", "period_end"} <= set(
        t.column_names
    )
    meta = pq.ParquetFile(store.triplet_files()[0], filesystem=store.loc.fs).metadata
    assert meta.num_row_groups >= 1


def test_scaled_values_invert_to_raw_values(us_gaap_store):
    store = TripletStore(us_gaap_store)
    scalers = store.scalers()
    for f in store.triplet_files():
        t = pq.read_table(f, columns=["pair_id", "value", "scaled_value"])
        ids, raw, z = (t[c].to_numpy() for c in ("pair_id", "value", "scaled_value"))
        for pid in np.unique(ids):
            rows = ids == pid
            np.testing.assert_allclose(scalers[int(pid)].inverse(z[rows]), raw[rows], rtol=1e-6, atol=1e-6)


def test_latest_filing_wins(tmp_path):
    doc = {
        "cik": 1,
        "entityName": "X",
        "facts": {
            "us-gaap": {
                "Revenue": {
                    "label": "Revenue",
                    "description": "d",
                    "units": {
                        "USD": [
                            {
                                "start": "2020-01-01",
                                "end": "2020-12-31",
                                "val": 100,
                                "accn": "a1",
                                "fy": 2020,
                                "fp": "FY",
                                "form": "10-K",
                                "filed": "2021-02-01",
                            },
                            {
                                "start": "2020-01-01",
                                "end": "2020-12-31",
                                "val": 105,
                                "accn": "a2",
                                "fy": 2021,
                                "fp": "FY",
                                "form": "10-K",
                                "filed": "2022-02-01",
                            },
                            {
                                "start": "2021-01-01",
                                "end": "2021-12-31",
                                "val": 200,
                                "accn": "a2",
                                "fy": 2021,
                                "fp": "FY",
                                "form": "10-K",
                                "filed": "2022-02-01",
                            },
                        ]
                    },
                }
            }
        },
    }
    p = tmp_path / "x.json"
    p.write_text(json.dumps(doc))
    r = ingest([str(p)], str(tmp_path / "s"), embedder="hashed", progress=False)
    assert (r.rows_read, r.rows_after, r.duplicates_dropped) == (3, 2, 1)
    t = pq.read_table(TripletStore(str(tmp_path / "s")).triplet_files())
    assert sorted(t["value"].to_pylist()) == [105.0, 200.0]


def test_second_ingest_of_same_files_adds_nothing_and_append_adds_company(tmp_path):
    data = require_us_gaap()
    uri = str(tmp_path / "s")
    ingest([str(data / "AAPL_companyfacts.json.gz")], uri, embedder="hashed", progress=False)
    r = ingest([str(data / "AAPL_companyfacts.json.gz")], uri, embedder="hashed", progress=False)
    assert (r.rows_before, r.rows_after) == (COMPANIES["AAPL"], COMPANIES["AAPL"])
    first_pairs = TripletStore(uri).pair_lookup()
    r = ingest([str(data / "GOOG_companyfacts.json.gz")], uri, embedder="hashed", progress=False)
    assert r.rows_after == COMPANIES["AAPL"] + COMPANIES["GOOG"]
    store = TripletStore(uri)
    assert store.manifest["version"] == 3 and store.manifest["counts"]["entities"] == 2
    lookup = store.pair_lookup()
    assert all(lookup[k] == v for k, v in first_pairs.items())  # pair ids are stable across appends
    assert len(lookup) > len(first_pairs)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        ".lock",
        "features",
        "manifest.json",
        "v000001",
        "v000002",
        "v000003",  # two previous versions kept
        "versions",  # their records
    ]


def test_narrative_csv_dedupes_on_accession(tmp_path):
    data = require_us_gaap()
    uri = str(tmp_path / "s")
    r = ingest([str(data / "AAPL.csv")], uri, embedder="hashed", progress=False)
    assert r.rows_read == r.rows_after > 1000
    r2 = ingest([str(data / "AAPL.csv")], uri, embedder="hashed", progress=False)
    assert r2.rows_after == r.rows_after


# ---- bad input: clear error naming the file, and a byte-identical store --------------------------


def _bad_inputs(tmp_path, data):
    raw = gzip.decompress((data / "AAPL_companyfacts.json.gz").read_bytes())
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(gzip.compress(raw)[:5000])
    invalid = tmp_path / "invalid.json"
    invalid.write_bytes(raw[:100000])
    csv_text = (data / "AAPL.csv").read_text().splitlines()
    header, row = csv_text[0], csv_text[1].split(",")
    first = next(i for i, c in enumerate(row) if "::" in c)
    bad_cell = tmp_path / "BADCELL.csv"
    bad_cell.write_text(header + "\n" + ",".join(row[:first] + ["12345"] + row[first + 1 :]) + "\n")
    doc = json.loads(raw)
    concept = next(iter(doc["facts"]["us-gaap"]))
    unit = next(iter(doc["facts"]["us-gaap"][concept]["units"]))
    for kind, val in (("nonfinite", "NaN"), ("nonnumeric", "12 million")):
        d = json.loads(raw)
        d["facts"]["us-gaap"][concept]["units"][unit][0]["val"] = float(val) if kind == "nonfinite" else val
        (tmp_path / f"{kind}.json").write_text(json.dumps(d))
    return {
        "truncated gzip": (truncated, "truncated.json.gz"),
        "invalid json": (invalid, "invalid JSON"),
        "csv cell": (bad_cell, "is not VALUE::UNIT"),
        "non-finite": (tmp_path / "nonfinite.json", concept),
        "non-numeric": (tmp_path / "nonnumeric.json", "not a number"),
        "unreadable path": (tmp_path / "missing.json", "no such file"),
    }


def test_each_bad_input_fails_cleanly_and_leaves_store_byte_identical(tmp_path):
    data = require_us_gaap()
    uri = tmp_path / "s"
    ingest([str(data / "GOOG_companyfacts.json.gz")], str(uri), embedder="hashed", progress=False)
    before = tree_digest(uri)
    for name, (path, expect) in _bad_inputs(tmp_path, data).items():
        with pytest.raises(IngestError) as e:
            ingest(
                [str(data / "MSFT_companyfacts.json.gz"), str(path)],
                str(uri),
                embedder="hashed",
                progress=False,
            )
        assert path.name in str(e.value) and expect in str(e.value), (name, str(e.value))
        assert tree_digest(uri) == before, f"{name}: store changed"


def test_skip_bad_counts_and_reports(tmp_path):
    data = require_us_gaap()
    bad = _bad_inputs(tmp_path, data)
    r = ingest(
        [
            str(data / "GOOG_companyfacts.json.gz"),
            str(bad["truncated gzip"][0]),
            str(bad["non-numeric"][0]),
            str(bad["csv cell"][0]),
        ],
        str(tmp_path / "s"),
        skip_bad=True,
        embedder="hashed",
        progress=False,
    )
    assert len(r.skipped_documents) == 1 and "truncated.json.gz" in r.skipped_documents[0]
    assert r.skipped_records == 2  # the non-numeric fact and the bad CSV cell
    assert r.rows_after > COMPANIES["GOOG"]


def test_bulk_zip_and_folder(tmp_path):
    data = require_us_gaap()
    zpath = tmp_path / "companyfacts.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for t in ("AAPL", "GOOG"):
            z.writestr(f"CIK{t}.json", gzip.decompress((data / f"{t}_companyfacts.json.gz").read_bytes()))
    r = ingest([str(zpath)], str(tmp_path / "z"), embedder="hashed", progress=False)
    assert r.rows_after == COMPANIES["AAPL"] + COMPANIES["GOOG"] and r.documents == 2
    folder = tmp_path / "dir"
    folder.mkdir()
    shutil.copy(data / "MSFT_companyfacts.json.gz", folder)
    assert (
        ingest([str(folder)], str(tmp_path / "d"), embedder="hashed", progress=False).rows_after
        == COMPANIES["MSFT"]
    )


def test_zip_with_traversal_name_is_refused(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("../../etc/x.json", "{}")
    with pytest.raises(IngestError, match="unsafe member name"):
        ingest([str(zpath)], str(tmp_path / "s"), embedder="hashed", progress=False)
    assert not (tmp_path / "s").exists()
