"""Stream the triplet store through Ray Data in row-group blocks.

The store's Parquet row groups are the blocks: `TripletDatasource` plans read tasks that each
decode a run of row groups (only `pair_id`, `scaled_value` and `fold`), keep the rows of the
requested split and emit one compact block per row group — `pair_id` int32 and `value` float32,
8 bytes a row. Memory therefore stays flat as the store grows (the executor holds a bounded number
of 0.5 MB blocks), and there are few read tasks (one per 2M rows and per two CPUs, see
`default_read_tasks`), so running tasks does not cost more than reading (bench/streaming.py
measures both).

The 64-d pair embedding is joined where the batch is consumed, from the small embedding matrix,
instead of shipping 260 bytes a row through the object store. `iter_triplet_batches` (what training
uses) takes Ray Data's blocks whole — Ray's iterator costs about half a millisecond a batch, so it
is paid once per 65,536-row block instead of once per 4,096-row batch — and cuts the
`{"x": float32 [n, dim+1] = embedding ‖ scaled value, "pair_id"}` batches from them in the
consumer, optionally shuffling within a window of rows. `TripletCollate` does the same join for
`iter_torch_batches(collate_fn=...)`.

The train/validation split is by filing: a row's `fold` is crc32(accession) % 100, so a filing
never lands on both sides.

Values: by default the store's own `scaled_value`, bounded as the model's transform bounds them
(pipeline.data.packed_scalers.VALUE_BOUND). With a `scale` (a model's
pipeline.data.features.ValueScaler), the raw `value` is read and scaled with the model's scalers in
the read task instead — evaluation, batch scoring and fine-tuning on a store whose scalers differ
from the model's. `columns` adds store columns to every block (the fact's key, for scoring; the
entity, for per-company metrics); the raw value comes out as `raw_value`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline.data.packed_scalers import bound_values
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


def read_columns(scale=None, columns: tuple[str, ...] = ()) -> list[str]:
    """The store columns a read with this `scale` and these extra `columns` decodes."""
    base = ["pair_id", "value" if scale is not None else "scaled_value", "fold"]
    return base + [c for c in columns if c not in base]


def compact_rows(
    table: pa.Table, folds: tuple[int, int], scale=None, columns: tuple[str, ...] = ()
) -> pa.Table:
    """The rows of `table` whose fold lies in [lo, hi), as {pair_id int32, value float32} (the
    value scaled by `scale` from the raw one when given), plus the extra `columns` ("value" as
    "raw_value")."""
    fold = table.column("fold").to_numpy()
    keep = (fold >= folds[0]) & (fold < folds[1])
    pair_id = table.column("pair_id").to_numpy()[keep].astype(np.int32)
    if scale is None:
        value = bound_values(table.column("scaled_value").to_numpy()[keep])
    else:
        value = scale(pair_id, table.column("value").to_numpy()[keep])
    out = {"pair_id": pair_id, "value": value.astype(np.float32)}
    if columns:
        mask = pa.array(keep)
        for c in columns:
            out["raw_value" if c == "value" else c] = table.column(c).filter(mask)
    return pa.table(out)


class TripletDatasource(Datasource):
    """The live store version's triplets, one block per Parquet row group, for one fold range
    (values scaled by `scale` when given, extra `columns` carried along)."""

    def __init__(
        self, store: TripletStore, folds: tuple[int, int], scale=None, columns: tuple[str, ...] = ()
    ):
        super().__init__()
        self.fs, self.folds, self.scale, self.columns = store.loc.fs, folds, scale, tuple(columns)
        self.units: list[tuple[str, int, int]] = []  # (file, row group, rows)
        for path in store.triplet_files():
            meta = pq.ParquetFile(path, filesystem=self.fs).metadata
            self.units += [(path, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups)]

    @property
    def rows(self) -> int:
        """Rows in the store version (before the split's fold filter)."""
        return sum(rows for _, _, rows in self.units)

    def estimate_inmemory_data_size(self) -> int:
        return self.rows * ROW_BYTES

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        if not self.units:
            return []
        fs, folds, scale, columns = self.fs, self.folds, self.scale, self.columns
        if scale is not None:  # a model's scalers (MBs of knots): once in the object store, not per task
            import ray

            scale = _Shared(ray.put(scale))
        names = read_columns(scale, columns)
        tasks = []
        for chunk in np.array_split(np.arange(len(self.units)), max(1, min(parallelism, len(self.units)))):
            units = [self.units[i] for i in chunk]

            def read(units=units):
                opened: dict[str, pq.ParquetFile] = {}
                for path, rg, _ in units:
                    f = opened.get(path) or opened.setdefault(path, pq.ParquetFile(path, filesystem=fs))
                    yield compact_rows(f.read_row_group(rg, columns=names), folds, scale, columns)

            rows = sum(r for _, _, r in units)
            files = tuple(dict.fromkeys(p for p, _, _ in units))
            tasks.append(
                ReadTask(
                    read,
                    BlockMetadata(
                        num_rows=None, size_bytes=rows * ROW_BYTES, input_files=files, exec_stats=None
                    ),
                )
            )
        return tasks


class _Shared:
    """A callable held in the object store, fetched (once per worker process) when first called."""

    def __init__(self, ref):
        self.ref, self._fn = ref, None

    def __getstate__(self):
        return {"ref": self.ref}

    def __setstate__(self, state):
        self.ref, self._fn = state["ref"], None

    def __call__(self, *args):
        if self._fn is None:
            import ray

            self._fn = ray.get(self.ref)
        return self._fn(*args)


ROWS_PER_READ_TASK = 2_000_000


def default_read_tasks(rows: int) -> int:
    """One read task per 2M rows, at most one per two CPUs of the cluster (one process decodes
    while another consumes). Ray Data's executor waits (up to 0.1 s a round) for every running task
    to have a block ready, so each extra task delays the stream, and each adds a worker process
    (~250 MB RSS). Measured on 2 CPUs (bench/streaming.py's way): 1 task streamed 1M-2M triplets
    at 0.84-0.87x the raw scan, 2 tasks at 0.67-0.80x, 4 at 0.55-0.73x, 8 (one per 0.25-CPU slot)
    at 0.55x; 4 tasks at 10M ran 1.28x the raw scan but peaked at 1.5x the RSS of 1 task at 1M."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    return max(1, min(-(-rows // ROWS_PER_READ_TASK), int(cpus) // 2))


def triplet_dataset(
    store_uri: str | None = None,
    split: str | None = "train",
    val_fraction: float = 0.1,
    num_cpus: float = 0.25,
    read_tasks: int | str | None = None,
    scale=None,
    columns: tuple[str, ...] = (),
):
    """A lazy Ray Dataset of {"pair_id", "value"} rows of the live store version for `split`
    ("train", "val" or None = all); build feature batches with `iter_triplet_batches`. `scale`:
    scale the raw values with a model's scalers (see the module docstring); `columns`: extra store
    columns in every row. `read_tasks`: how many (default: `default_read_tasks`), or "row_group"
    for one per Parquet row group: many small tasks, which balance a pool of model actors the reads
    are fused into (serve.score).

    Read tasks ask for `num_cpus` each (a fraction by default): inside Ray Train or Tune the
    workers hold most CPUs, and data tasks that wanted a whole CPU would never start."""
    import ray.data

    store = TripletStore(store_uri or default_store_uri())
    store.require()
    source = TripletDatasource(store, split_folds(split, val_fraction), scale, columns)
    if read_tasks == "row_group":
        read_tasks = max(1, len(source.units))  # more would make Ray Data split the blocks
    return ray.data.read_datasource(
        source, num_cpus=num_cpus, override_num_blocks=read_tasks or default_read_tasks(source.rows)
    )


def triplet_features(embeddings: np.ndarray, pair_id: np.ndarray, value: np.ndarray) -> np.ndarray:
    """float32 [n, dim+1]: each row's pair embedding ‖ its scaled value."""
    x = np.empty((len(pair_id), embeddings.shape[1] + 1), dtype=np.float32)
    x[:, :-1] = embeddings[pair_id]
    x[:, -1] = value
    return x


def triplet_batch(embeddings: np.ndarray, pair_id: np.ndarray, value: np.ndarray, device=None) -> dict:
    """{"x": float32 tensor [n, dim+1], "pair_id": int64 tensor} of rows (on `device`, if given)."""
    import torch

    x = torch.from_numpy(triplet_features(embeddings, pair_id, value))
    ids = torch.from_numpy(pair_id.astype(np.int64))
    if device is not None and torch.device(device).type == "cuda":
        # staged in pinned (page-locked) memory, the copy to the GPU runs asynchronously
        x, ids = x.pin_memory().to(device, non_blocking=True), ids.pin_memory().to(device, non_blocking=True)
    elif device is not None and torch.device(device).type != "cpu":
        x, ids = x.to(device), ids.to(device)
    return {"x": x, "pair_id": ids}


def rebatch(blocks, batch_size: int, shuffle_rows: int = 0, seed: int | None = None):
    """Cut runs of aligned column arrays (`blocks`: tuples of equal-length arrays) into tuples of
    exactly `batch_size` rows (the last may be short); every row exactly once.

    With a `seed`, rows are pooled until at least max(batch_size, shuffle_rows) are held (a whole
    block usually is), the pool is permuted and the full batches are emitted; the few rows left
    over join the next pool. So a row moves at most about one pool away — a local shuffle, like
    Ray Data's `local_shuffle_buffer_size`. Without a seed the order is kept and blocks are sliced,
    not copied (only rows left over at a block's end are joined to the next block's)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = None if seed is None else np.random.default_rng(seed)
    fill = max(batch_size, shuffle_rows) if rng is not None else batch_size
    pool: list[tuple] = []
    rows = 0

    def cut(final: bool):
        cols = pool[0] if len(pool) == 1 else tuple(np.concatenate(c) for c in zip(*pool))
        if rng is not None:
            order = rng.permutation(rows)
            cols = tuple(c[order] for c in cols)
        full = rows if final else rows - rows % batch_size
        for start in range(0, full, batch_size):
            yield tuple(c[start : start + batch_size] for c in cols)
        return [tuple(c[full:] for c in cols)] if full < rows else [], rows - full

    for block in blocks:
        if len(block[0]) == 0:
            continue
        pool.append(block)
        rows += len(block[0])
        if rows >= fill:
            pool, rows = yield from cut(final=False)
    if rows:
        yield from cut(final=True)


def iter_triplet_batches(
    source,
    embeddings: np.ndarray,
    batch_size: int,
    shuffle_rows: int = 0,
    seed: int | None = None,
    device=None,
    prefetch_blocks: int = 1,
):
    """Training batches {"x", "pair_id"} (see `triplet_batch`) of a `triplet_dataset` or a Ray
    Train shard of one: Ray Data hands over whole blocks (zero-copy numpy), the batches of
    `batch_size` rows are cut here (`rebatch`: every row once; with a `seed`, shuffled within
    windows of at least `shuffle_rows` rows)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    blocks = (
        (b["pair_id"], b["value"])
        for b in source.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=prefetch_blocks)
    )
    for pair_id, value in rebatch(blocks, batch_size, shuffle_rows, seed):
        yield triplet_batch(emb, pair_id, value, device)


class TripletCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=...)`: a numpy batch → {"x", "pair_id"} tensors."""

    def __init__(self, embeddings: np.ndarray):
        super().__init__()
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return triplet_batch(self.embeddings, batch["pair_id"], batch["value"])
