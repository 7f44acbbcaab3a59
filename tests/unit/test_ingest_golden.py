"""A first ingest of the provided SEC documents gives exactly the store contents the original
single-process ingest gave (recorded in tests/unit/data/ingest_golden.json before the engine was
replaced): the same rows, raw and scaled values, pair ids, folds, pairs and scalers, bit for bit,
whatever the partitioning, the parser or the number of workers.

    python -m tests.unit.test_ingest_golden --write    # re-record (only for an intended change)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.support import COMPANIES, require_us_gaap
from tests.support.golden import GOLDEN, store_digest

CASES = {"AAPL": ["AAPL"], "all": sorted(COMPANIES)}


def _ingest_case(case: str, store: str) -> None:
    from pipeline.ingest import ingest

    data = require_us_gaap()
    paths = [str(data / f"{t}_companyfacts.json.gz") for t in CASES[case]]
    ingest(paths, store, embedder="hashed", progress=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_ingest_matches_the_recorded_store(case, tmp_path, us_gaap_store):
    golden = json.loads(GOLDEN.read_text())[case]
    if case == "all":
        store = us_gaap_store  # the session's store: the three documents ingested at once
    else:
        store = str(tmp_path / "s")
        _ingest_case(case, store)
    got = store_digest(store)
    assert got["rows"] == golden["rows"] == sum(COMPANIES[t] for t in CASES[case])
    assert got["columns"] == golden["columns"]
    assert got["pairs"] == golden["pairs"]
    # Embeddings: PCA of float32 vectors; a different (equally valid) summation order moves them in
    # the 6th decimal, never more than 1e-4 on these unit-scale numbers.
    np.testing.assert_allclose(got["embedding_norms"], golden["embedding_norms"], atol=1e-4)
    np.testing.assert_allclose(got["embedding_probes"], golden["embedding_probes"], atol=1e-4)


def _write() -> None:
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            store = f"{tmp}/{case}"
            _ingest_case(case, store)
            out[case] = store_digest(store)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    _write()


def test_units_of_work_do_not_change_the_store(tmp_path, monkeypatch):
    from pipeline.ingest import run as ingest_run

    monkeypatch.setattr(ingest_run, "UNIT_BYTES", 1)  # one unit of parsing work per document
    store = str(tmp_path / "s")
    _ingest_case("all", store)
    got, golden = store_digest(store), json.loads(GOLDEN.read_text())["all"]
    assert (got["rows"], got["columns"], got["pairs"]) == (golden["rows"], golden["columns"], golden["pairs"])
