"""`tunestack synth companyfacts`: a bulk zip in the format of SEC's companyfacts.zip, whose
re-reported facts ingest de-duplicates, the same companies whatever the archive's size."""

from __future__ import annotations

import json
import zipfile

import pytest

from pipeline.cli import main
from pipeline.ingest import ingest
from pipeline.ingest.companyfacts import parse_companyfacts
from pipeline.synth_companyfacts import synth_companyfacts


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    path = tmp_path_factory.mktemp("bulk") / "companyfacts.zip"
    return synth_companyfacts(str(path), 12, seed=4)


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_members_are_companyfacts_documents(bulk):
    members = _members(bulk["out"])
    assert len(members) == 12 and all(n.startswith("CIK") and n.endswith(".json") for n in members)
    rows = 0
    for name, data in members.items():
        doc = json.loads(data)
        assert name == f"CIK{doc['cik']:010d}.json" and doc["entityName"]
        if not doc["facts"]:
            continue  # the real archive has companies without facts too
        assert set(doc["facts"]) <= {"us-gaap", "dei"} and "us-gaap" in doc["facts"]
        for concepts in doc["facts"].values():
            for body in concepts.values():
                assert body["label"] and body["description"]
                for facts in body["units"].values():
                    for f in facts:
                        assert {"end", "val", "accn", "fy", "fp", "form", "filed"} <= f.keys()
                        assert f["form"] in ("10-Q", "10-K", "10-K/A") and f["fp"] in ("Q1", "Q2", "Q3", "FY")
        rows += parse_companyfacts(data, name).table.num_rows
    assert rows == bulk["fact_rows"]
    assert 2_000 * 12 < rows < 12_000 * 12  # about the SEC archive's mean of ~6,000 per company


def test_facts_are_rereported_and_the_latest_report_framed(bulk):
    doc = next(json.loads(d) for d in _members(bulk["out"]).values() if json.loads(d)["facts"])
    periods: dict = {}
    for concepts in doc["facts"].values():
        for concept, body in concepts.items():
            for unit, facts in body["units"].items():
                for f in facts:
                    periods.setdefault((concept, unit, f.get("start"), f["end"]), []).append(f)
    again = [fs for fs in periods.values() if len(fs) > 1]
    assert len(again) > len(periods) / 3  # comparatives in next year's filing
    for fs in again:
        latest = max(fs, key=lambda f: f["filed"])
        assert all(("frame" in f) == (f is latest) for f in fs if "frame" in latest)


def test_ingest_deduplicates_and_a_small_archive_is_a_prefix(bulk, tmp_path):
    r = ingest([bulk["out"]], str(tmp_path / "s"), embedder="hashed", progress=False)
    assert r.rows_read == bulk["fact_rows"] and 0 < r.rows_after < r.rows_read
    small = synth_companyfacts(str(tmp_path / "small.zip"), 5, seed=4)
    big = _members(bulk["out"])
    assert list(_members(small["out"]).items()) == list(big.items())[:5]


def test_cli_writes_the_zip_and_refuses_a_bad_count(tmp_path, capsys):
    out = tmp_path / "b.zip"
    assert main(["synth", "companyfacts", "--companies", "2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["companies"] == 2 and len(_members(out)) == 2
    with pytest.raises(SystemExit) as e:
        main(["synth", "companyfacts", "--companies", "0", "--out", str(out)])
    assert e.value.code == 2 and "0 is not a positive integer" in capsys.readouterr().err
