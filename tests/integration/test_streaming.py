"""Ray Data streaming over the real store: every row once, float32 features, split by filing."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.data import TripletCollate, iter_triplet_batches, triplet_dataset
from pipeline.store import TripletStore

pytestmark = pytest.mark.ray


def _rows(batches):
    xs, ids, sizes = [], [], []
    for b in batches:
        xs.append(b["x"].numpy())
        ids.append(b["pair_id"].numpy())
        sizes.append(len(ids[-1]))
    assert all(n == 4096 for n in sizes[:-1]) and 0 < sizes[-1] <= 4096
    return np.concatenate(xs), np.concatenate(ids)


@pytest.mark.parametrize("how", ["blocks", "shuffled", "iter_torch_batches"])
def test_one_pass_returns_every_row_exactly_once(ray_cluster, us_gaap_store, how):
    store = TripletStore(us_gaap_store)
    ds = triplet_dataset(us_gaap_store, split=None)
    emb = store.embeddings()
    if how == "iter_torch_batches":
        x, ids = _rows(ds.iter_torch_batches(batch_size=4096, collate_fn=TripletCollate(emb)))
    else:  # how training reads it: whole blocks, batches cut (and shuffled) in this process
        x, ids = _rows(
            iter_triplet_batches(ds, emb, 4096, shuffle_rows=20_000, seed=0 if how == "shuffled" else None)
        )
    assert x.dtype == np.float32 and x.shape == (store.manifest["counts"]["triplets"], 65)
    # Each streamed row equals a stored row: embedding of its pair ‖ its scaled value.
    np.testing.assert_array_equal(x[:, :64], store.embeddings()[ids])
    t = pa.concat_tables(pq.read_table(f, columns=["pair_id", "scaled_value"]) for f in store.triplet_files())
    expected = np.stack(
        [t["pair_id"].to_numpy().astype(np.float64), t["scaled_value"].to_numpy().astype(np.float32)], 1
    )
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
