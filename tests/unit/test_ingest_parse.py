"""The two companyfacts parsers (whole document, and streamed one concept at a time) give the same
rows, pair texts, skipped facts and errors; the streamed one is used past STREAM_BYTES."""

from __future__ import annotations

import copy
import gzip
import io
import json

import pytest

from pipeline.ingest import companyfacts, sources
from pipeline.ingest.companyfacts import IngestError, parse_companyfacts, parse_companyfacts_stream
from tests.support import require_us_gaap


def _stream(data: bytes, source="doc", skip_bad=False):
    return parse_companyfacts_stream(io.BufferedReader(io.BytesIO(data)), source, skip_bad)


def _both(doc, skip_bad=False):
    """(whole, streamed) results of one document: each a Document or the IngestError message."""
    data = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    out = []
    for parse in (lambda: parse_companyfacts(data, "doc", skip_bad), lambda: _stream(data, "doc", skip_bad)):
        try:
            out.append(parse())
        except IngestError as e:
            out.append(str(e))
    return out


@pytest.mark.parametrize("ticker", ["AAPL", "GOOG", "MSFT"])
def test_streamed_and_whole_parses_agree_on_the_sec_documents(ticker, monkeypatch):
    raw = gzip.open(require_us_gaap() / f"{ticker}_companyfacts.json.gz").read()
    monkeypatch.setattr(companyfacts, "BATCH_ROWS", 5_000)  # several Arrow batches per document
    whole, streamed = parse_companyfacts(raw, ticker), _stream(raw, ticker)
    assert whole.table.num_rows > 19_000
    assert streamed.table.equals(whole.table) and streamed.pair_meta == whole.pair_meta
    assert _stream(raw.decode().encode("utf-16"), ticker).table.equals(whole.table)  # transcoded


FACT = {"start": "2020-01-01", "end": "2020-12-31", "val": 5, "accn": "a", "fy": 2020, "fp": "FY",
        "form": "10-K", "filed": "2021-02-01"}  # fmt: skip
GOOD = {
    "cik": 7,
    "entityName": "Seven",
    "facts": {
        "us-gaap": {
            "Revenues": {
                "label": "Revenues",
                "description": "d",
                "units": {"USD": [FACT, dict(FACT, val=6.5)]},
            }
        },
        "dei": {"Shares": {"label": "S", "units": {"shares": [dict(FACT, val=9)]}}},
    },
}


def _bad(path, value):
    doc = copy.deepcopy(GOOD)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


FACTS = ("facts", "us-gaap", "Revenues", "units", "USD")
BAD = {
    "no val": _bad((*FACTS, 1), {"end": "2020-12-31"}),
    "text val": _bad((*FACTS, 1), dict(FACT, val="12")),
    "bool val": _bad((*FACTS, 0), dict(FACT, val=True)),
    "fact not an object": _bad((*FACTS, 1), [1, 2]),
    "facts not a list": _bad(FACTS, {"a": 1}),
    "no units": _bad(("facts", "us-gaap", "Revenues", "units"), KeyError),
    "taxonomy not an object": _bad(("facts", "dei"), [1]),
    "no cik": _bad(("cik",), KeyError),
    "facts a list": _bad(("facts",), []),
    "cik not a number": _bad(("cik",), "seven"),
    "name not text": _bad(("entityName",), 5),
    "bad date": _bad((*FACTS, 0), dict(FACT, end="2020-13-45")),
    "bad fy": _bad((*FACTS, 0), dict(FACT, fy="twenty")),
    "unit not text": {"cik": 1, "facts": {"us-gaap": {"R": {"units": {"USD": []}, "label": ["x"]}}}},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_streamed_and_whole_parses_fail_alike(case):
    whole, streamed = _both(BAD[case])
    assert isinstance(whole, str) and whole == streamed
    skip_whole, skip_streamed = _both(BAD[case], skip_bad=True)
    if isinstance(skip_whole, str):  # the document itself is bad: --skip-bad drops it whole, in both
        assert skip_whole == skip_streamed
    else:  # bad facts: both skip the same ones and keep the rest
        assert skip_whole.table.equals(skip_streamed.table)
        assert [str(e) for e in skip_whole.skipped] == [str(e) for e in skip_streamed.skipped] != []


def test_streamed_parse_refuses_deep_nesting_and_endless_tokens_early():
    assert "nested too deeply" in _both(b"[" * 100_000)[1]
    endless = b'{"cik": 1, "facts": {"us-gaap": {"R": {"label": "' + b"a" * (4 << 20)
    assert "over the 65536-character limit" in _both(endless)[1]
    assert "trailing garbage" in _both(json.dumps(GOOD).encode() + b" x")[1]


def test_large_documents_are_streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STREAM_BYTES", 64)
    streamed = []
    real = sources.parse_companyfacts_stream
    monkeypatch.setattr(sources, "parse_companyfacts_stream", lambda *a: streamed.append(a[1]) or real(*a))
    p = tmp_path / "doc.json.gz"
    with gzip.open(p, "wb") as f:
        f.write(json.dumps(GOOD).encode())
    (doc,) = sources.iter_documents(str(p), skip_bad=False)
    assert streamed == [str(p)] and doc.table.num_rows == 3
    assert doc.table.equals(parse_companyfacts(json.dumps(GOOD), str(p)).table)


EDGES = {
    **BAD,
    "null end": _bad((*FACTS, 1), dict(FACT, end=None)),
    "NaN val": json.dumps(_bad((*FACTS, 1), dict(FACT, val=float("nan")))).encode(),
    "val past a double": json.dumps(GOOD).replace('"val": 9', '"val": 1e999').encode(),
    "val past int64": _bad((*FACTS, 0), dict(FACT, val=2**70)),
    "val at 2**53 + 1": _bad((*FACTS, 0), dict(FACT, val=2**53 + 1)),
    "null val": _bad((*FACTS, 0), dict(FACT, val=None)),
    "extra and missing fields": _bad((*FACTS, 0), {"end": "2020-12-31", "val": 1, "frame": "CY2020"}),
    "no facts": _bad(FACTS, []),
    "fy as a float": _bad((*FACTS, 0), dict(FACT, fy=2020.5)),
    "bad label after a bad fact": _bad(("facts", "dei", "Shares", "label"), 5) | {},
    "lone surrogate": json.dumps(GOOD).replace('"Seven"', '"\\ud800"').encode(),
    "BOM": b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),
}
EDGES["bad label after a bad fact"]["facts"]["us-gaap"]["Revenues"]["units"]["USD"][0]["val"] = "x"


@pytest.mark.parametrize("case", sorted(EDGES))
@pytest.mark.parametrize("skip_bad", [False, True])
def test_batch_conversion_agrees_with_fact_by_fact(case, skip_bad, monkeypatch):
    """The fast path (a batch's facts to Arrow at once) gives exactly the slow path's rows, skipped
    facts and first error, whatever is wrong with a fact."""
    fast = _both(EDGES[case], skip_bad)
    monkeypatch.setattr(companyfacts.FactColumns, "_fast_batch", lambda self: None)
    slow = _both(EDGES[case], skip_bad)
    for f, s in zip(fast, slow):
        assert type(f) is type(s)
        if isinstance(s, str):
            assert f == s
        else:
            assert f.table.equals(s.table) and f.pair_meta == s.pair_meta
            assert [str(e) for e in f.skipped] == [str(e) for e in s.skipped]


def test_sec_documents_take_the_batch_conversion(monkeypatch):
    """Real SEC documents are clean enough that no batch falls back to fact-by-fact."""
    raw = gzip.open(require_us_gaap() / "AAPL_companyfacts.json.gz").read()
    expected = parse_companyfacts(raw, "AAPL").table
    slow = []
    monkeypatch.setattr(companyfacts.FactColumns, "_slow_batch", lambda self: slow.append(1))
    assert parse_companyfacts(raw, "AAPL").table.equals(expected) and slow == []
