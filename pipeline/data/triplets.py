"""Stream the triplet store through Ray Data in row-group blocks.

The store's Parquet row groups are the blocks: `TripletDatasource` plans read tasks that each
decode a run of row groups (only `pair_id`, `scaled_value` and `fold`), keep the rows of the
requested split and emit one compact block per row group — `pair_id` int32 and `value` float32,
8 bytes a row. Memory therefore stays flat as the store grows (the executor holds a bounded number
of 0.5 MB blocks), and there are only as many read tasks as the cluster runs at once, so task
start-up does not dominate (bench/streaming.py measures both).

The 64-d pair embedding is joined where the batch is consumed: `TripletCollate` turns a batch into
`{"x": float32 [n, dim+1] = embedding ‖ scaled value, "pair_id"}` tensors from the small
embedding matrix it holds, instead of shipping 260 bytes a row through the object store.

The train/validation split is by filing: a row's `fold` is crc32(accession) % 100, so a filing
never lands on both sides.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline.home import default_store_uri
from pipeline.store.layout import TripletStore

READ_COLUMNS = ["pair_id", "scaled_value", "fold"]
ROW_BYTES = 8  # int32 pair_id + float32 value


def split_folds(split: str | None, val_fraction: float) -> tuple[int, int]:
    """Fold range [lo, hi) of a split: validation is the first val_fraction of the 100 folds."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = max(1, round(val_fraction * 100))
    return {"train": (cut, 100), "val": (0, cut), None: (0, 100), "all": (0, 100)}[split]


def compact_rows(table: pa.Table, folds: tuple[int, int]) -> pa.Table:
    """The rows of `table` whose fold lies in [lo, hi), as {pair_id int32, value float32}."""
    fold = table.column("fold").to_numpy()
    keep = (fold >= folds[0]) & (fold < folds[1])
    return pa.table({"pair_id": table.column("pair_id").to_numpy()[keep].astype(np.int32),
                     "value": table.column("scaled_value").to_numpy()[keep].astype(np.float32)})


class TripletDatasource(Datasource):
    """The live store version's triplets, one block per Parquet row group, for one fold range."""

    def __init__(self, store: TripletStore, folds: tuple[int, int]):
        super().__init__()
        self.fs, self.folds = store.loc.fs, folds
        self.units: list[tuple[str, int, int]] = []  # (file, row group, rows)
        for path in store.triplet_files():
            meta = pq.ParquetFile(path, filesystem=self.fs).metadata
            self.units += [(path, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups)]

    def estimate_inmemory_data_size(self) -> int:
        return sum(rows for _, _, rows in self.units) * ROW_BYTES

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        if not self.units:
            return []
        fs, folds = self.fs, self.folds
        tasks = []
        for chunk in np.array_split(np.arange(len(self.units)), max(1, min(parallelism, len(self.units)))):
            units = [self.units[i] for i in chunk]

            def read(units=units):
                opened: dict[str, pq.ParquetFile] = {}
                for path, rg, _ in units:
                    f = opened.get(path) or opened.setdefault(path, pq.ParquetFile(path, filesystem=fs))
                    yield compact_rows(f.read_row_group(rg, columns=READ_COLUMNS), folds)

            rows = sum(r for _, _, r in units)
            files = tuple(dict.fromkeys(p for p, _, _ in units))
            tasks.append(ReadTask(read, BlockMetadata(num_rows=None, size_bytes=rows * ROW_BYTES,
                                                      input_files=files, exec_stats=None)))
        return tasks


def default_read_tasks(num_cpus: float) -> int:
    """One read task per slot the cluster can run at once: enough to keep every CPU busy, few
    enough that starting tasks does not cost more than reading (a task per row group does)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    return max(2, int(cpus / max(num_cpus, 1e-3)))


def triplet_dataset(store_uri: str | None = None, split: str | None = "train", val_fraction: float = 0.1,
                    num_cpus: float = 0.25, read_tasks: int | None = None):
    """A lazy Ray Dataset of {"pair_id", "value"} rows of the live store version for `split`
    ("train", "val" or None = all); join embeddings with `TripletCollate`.

    Read tasks ask for `num_cpus` each (a fraction by default): inside Ray Train or Tune the
    workers hold most CPUs, and data tasks that wanted a whole CPU would never start."""
    import ray.data

    store = TripletStore(store_uri or default_store_uri())
    store.require()
    source = TripletDatasource(store, split_folds(split, val_fraction))
    return ray.data.read_datasource(source, num_cpus=num_cpus,
                                    override_num_blocks=read_tasks or default_read_tasks(num_cpus))


def triplet_features(embeddings: np.ndarray, pair_id: np.ndarray, value: np.ndarray) -> np.ndarray:
    """float32 [n, dim+1]: each row's pair embedding ‖ its scaled value."""
    x = np.empty((len(pair_id), embeddings.shape[1] + 1), dtype=np.float32)
    x[:, :-1] = embeddings[pair_id]
    x[:, -1] = value
    return x


class TripletCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=...)`: a numpy batch → {"x", "pair_id"} tensors."""

    def __init__(self, embeddings: np.ndarray):
        super().__init__()
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        pair_id = batch["pair_id"].astype(np.int64)
        return {"x": torch.from_numpy(triplet_features(self.embeddings, pair_id, batch["value"])),
                "pair_id": torch.from_numpy(pair_id)}
