"""bench/streaming.py's baselines on a tiny store (no Ray): they read every row once."""

import pytest

from bench import streaming
from pipeline.synth import synth_gaap


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("bench") / "store")
    synth_gaap(uri, 20_000, seed=1, row_group_size=4_096)
    return uri


def test_raw_scan_reads_every_row(store):
    r = streaming.raw_scan(store, batch_size=1_000)
    assert r["rows"] == 20_000 and r["rows_per_s"] > 0


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_per_index_reads_the_rows_it_times(store, order):
    ds = streaming.PerIndexTriplets(store)
    assert len(ds) == 20_000 and ds[19_999].shape == (65,)
    r = streaming.per_index(store, sample=500, batch_size=100, order=order)
    assert r["sample"] == 500 and r["us_per_triplet"] > 0
