"""Ray Data streaming over the real store: every row once, float32 features, split by filing."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.data import TripletCollate, triplet_dataset
from pipeline.store import TripletStore

pytestmark = pytest.mark.ray


def _rows(ds, embeddings):
    xs, ids = [], []
    for b in ds.iter_torch_batches(batch_size=4096, collate_fn=TripletCollate(embeddings)):
        xs.append(b["x"].numpy())
        ids.append(b["pair_id"].numpy())
    return np.concatenate(xs), np.concatenate(ids)


def test_one_pass_returns_every_row_exactly_once(ray_cluster, us_gaap_store):
    store = TripletStore(us_gaap_store)
    ds = triplet_dataset(us_gaap_store, split=None)
    x, ids = _rows(ds, store.embeddings())
    assert x.dtype == np.float32 and x.shape == (store.manifest["counts"]["triplets"], 65)
    # Each streamed row equals a stored row: embedding of its pair ‖ its scaled value.
    np.testing.assert_array_equal(x[:, :64], store.embeddings()[ids])
    t = pa.concat_tables(pq.read_table(f, columns=["pair_id", "scaled_value"]) for f in store.triplet_files())
    expected = np.stack([t["pair_id"].to_numpy().astype(np.float64), t["scaled_value"].to_numpy().astype(np.float32)], 1)
    got = np.stack([ids.astype(np.float64), x[:, 64].astype(np.float64)], 1)
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(order(got), order(expected.astype(np.float64)))


def test_train_and_val_partition_the_store_by_filing(ray_cluster, us_gaap_store):
    store = TripletStore(us_gaap_store)
    n_train = triplet_dataset(us_gaap_store, "train").count()
    n_val = triplet_dataset(us_gaap_store, "val").count()
    assert n_train + n_val == store.manifest["counts"]["triplets"]
    assert 0.03 < n_val / (n_train + n_val) < 0.25
    t = pa.concat_tables(pq.read_table(f, columns=["accn", "fold"]) for f in store.triplet_files())
    per_filing = t.group_by("accn").aggregate([("fold", "count_distinct")])
    assert pc.max(per_filing["fold_count_distinct"]).as_py() == 1  # no filing on both sides
