"""The triplet datasource's read tasks, run in this process (no Ray cluster): one compact block per
row group, every row of a split exactly once, train and val disjoint by filing."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data.triplets import TripletCollate, TripletDatasource, split_folds, triplet_features
from pipeline.store.layout import TripletStore
from pipeline.synth import synth_gaap


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("synth") / "store")
    synth_gaap(uri, 50_000, seed=3, row_group_size=4_096)
    return TripletStore(uri)


def _read(source: TripletDatasource, parallelism: int) -> list[pa.Table]:
    return [block for task in source.get_read_tasks(parallelism) for block in task()]


def _stored(store: TripletStore) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(f, columns=["pair_id", "scaled_value", "fold"]) for f in store.triplet_files()
    )


@pytest.mark.parametrize("parallelism", [1, 3, 8, 10_000])
def test_read_tasks_emit_one_compact_block_per_row_group(store, parallelism):
    source = TripletDatasource(store, split_folds(None, 0.1))
    tasks = source.get_read_tasks(parallelism)
    row_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in store.triplet_files())
    assert len(tasks) == min(parallelism, row_groups)
    blocks = _read(source, parallelism)
    assert len(blocks) == row_groups and max(b.num_rows for b in blocks) <= 4_096
    got = pa.concat_tables(blocks)
    assert got.schema.names == ["pair_id", "value"]
    assert got.column("pair_id").type == pa.int32() and got.column("value").type == pa.float32()
    want = _stored(store)
    key = lambda ids, v: np.lexsort((np.asarray(v, np.float32), ids))  # noqa: E731
    w_ids, w_v = want["pair_id"].to_numpy(), want["scaled_value"].to_numpy().astype(np.float32)
    g_ids, g_v = got["pair_id"].to_numpy(), got["value"].to_numpy()
    np.testing.assert_array_equal(g_ids[key(g_ids, g_v)], w_ids[key(w_ids, w_v)])
    np.testing.assert_array_equal(g_v[key(g_ids, g_v)], w_v[key(w_ids, w_v)])


def test_train_and_val_split_every_row_by_fold(store):
    folds = _stored(store)["fold"].to_numpy()
    n = {
        split: sum(b.num_rows for b in _read(TripletDatasource(store, split_folds(split, 0.2)), 4))
        for split in ("train", "val")
    }
    assert n["val"] == int((folds < 20).sum()) > 0
    assert n["train"] == int((folds >= 20).sum()) > 0


def test_collate_joins_each_rows_pair_embedding(store):
    emb = store.embeddings()
    block = _read(TripletDatasource(store, (0, 100)), 1)[0]
    batch = {"pair_id": block["pair_id"].to_numpy(), "value": block["value"].to_numpy()}
    out = TripletCollate(emb)(batch)
    assert out["x"].dtype.is_floating_point and tuple(out["x"].shape) == (block.num_rows, emb.shape[1] + 1)
    np.testing.assert_array_equal(out["x"][:, :-1].numpy(), emb[batch["pair_id"]])
    np.testing.assert_array_equal(out["x"][:, -1].numpy(), batch["value"])
    np.testing.assert_array_equal(out["pair_id"].numpy(), batch["pair_id"])
    assert triplet_features(emb, np.array([], np.int32), np.array([], np.float32)).shape == (
        0,
        emb.shape[1] + 1,
    )


def _blocks(source: TripletDatasource, parallelism: int = 3):
    return ((b["pair_id"].to_numpy(), b["value"].to_numpy()) for b in _read(source, parallelism))


@pytest.mark.parametrize("seed", [None, 5])
def test_rebatched_blocks_give_full_batches_of_every_row_once(store, seed):
    from pipeline.data.triplets import rebatch

    source = TripletDatasource(store, split_folds("train", 0.1))  # fold filtering leaves ragged blocks
    want_ids = np.concatenate([ids for ids, _ in _blocks(source)])
    want_v = np.concatenate([v for _, v in _blocks(source)])
    assert len(want_ids) % 1_000 != 0
    batches = list(rebatch(_blocks(source), 1_000, shuffle_rows=10_000, seed=seed))
    assert [len(i) for i, _ in batches[:-1]] == [1_000] * (len(batches) - 1)
    assert 0 < len(batches[-1][0]) <= 1_000
    ids = np.concatenate([i for i, _ in batches])
    v = np.concatenate([x for _, x in batches])
    if seed is None:  # in order
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(v, want_v)
    else:  # the same rows (pair id and value stay together), shuffled
        assert not np.array_equal(ids, want_ids)
        got, want = np.stack([ids, v], 1), np.stack([want_ids, want_v], 1)
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        np.testing.assert_array_equal(order(got), order(want))


def test_rebatch_shuffle_is_seeded_and_local():
    from pipeline.data.triplets import rebatch

    blocks = [(np.arange(a, b),) for a, b in [(0, 700), (700, 700), (700, 1_500), (1_500, 4_000)]]

    def order(seed):
        return np.concatenate([b[0] for b in rebatch(iter(blocks), 64, shuffle_rows=1_000, seed=seed)])

    a = order(1)
    np.testing.assert_array_equal(a, order(1))
    assert not np.array_equal(a, order(2))
    assert sorted(a.tolist()) == list(range(4_000))
    # a window: blocks are pooled to >= 1,000 rows (here 1,500), so early rows stay early
    assert a[:1_472].max() < 1_500
    with pytest.raises(ValueError, match="batch_size"):
        list(rebatch(iter(blocks), 0))


def test_triplet_batch_tensors(store):
    from pipeline.data.triplets import triplet_batch

    emb = store.embeddings()
    ids, v = np.array([3, 0, 3], np.int32), np.array([0.5, -1.0, 2.0], np.float32)
    b = triplet_batch(emb, ids, v, device="cpu")
    assert b["x"].dtype == torch.float32 and tuple(b["x"].shape) == (3, emb.shape[1] + 1)
    assert b["pair_id"].dtype == torch.int64 and b["pair_id"].tolist() == [3, 0, 3]
    np.testing.assert_array_equal(b["x"][:, :-1].numpy(), emb[ids])
    np.testing.assert_array_equal(b["x"][:, -1].numpy(), v)


def test_one_read_task_per_2m_rows_and_per_two_cpus(monkeypatch):
    import ray

    from pipeline.data.triplets import default_read_tasks

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # no cluster (whatever ran before): 1 CPU
    assert [default_read_tasks(n) for n in (0, 10_000_000)] == [1, 1]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert [default_read_tasks(n) for n in (0, 40_000, 2_000_000, 2_000_001, 6_000_001, 100_000_000)] == [
        1,
        1,
        1,
        2,
        4,
        4,
    ]
