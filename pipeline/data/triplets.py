"""Stream the triplet store through Ray Data as float32 `[embedding ‖ scaled value]` batches.

Only `pair_id`, `scaled_value` and `fold` are read, and each block is turned into features by a
task holding the (small) pair-embedding matrix. Known gap (bench/streaming.py): Ray 2.60's default
Parquet reader packs all files into one read task with ~9M-row blocks, so peak memory still grows
with the store (4.2x from 1M to 10M triplets) and throughput is ~0.05x a raw pyarrow scan. The train/validation split is by filing: a row's
`fold` is crc32(accession) % 100, so a filing never lands on both sides.
"""

from __future__ import annotations

import numpy as np

from pipeline.home import default_store_uri
from pipeline.store.layout import TripletStore

READ_COLUMNS = ["pair_id", "scaled_value", "fold"]


def split_folds(split: str | None, val_fraction: float) -> tuple[int, int]:
    """Fold range [lo, hi) of a split: validation is the first val_fraction of the 100 folds."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = max(1, round(val_fraction * 100))
    return {"train": (cut, 100), "val": (0, cut), None: (0, 100), "all": (0, 100)}[split]


class _Features:
    """Block → {"x": float32 [n, dim+1], "pair_id": int32 [n]} for rows in the fold range."""

    def __init__(self, embeddings: np.ndarray, folds: tuple[int, int]):
        self.embeddings, self.folds = embeddings, folds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = (batch["fold"] >= self.folds[0]) & (batch["fold"] < self.folds[1])
        pair_id = batch["pair_id"][keep].astype(np.int32)
        x = np.empty((len(pair_id), self.embeddings.shape[1] + 1), dtype=np.float32)
        x[:, :-1] = self.embeddings[pair_id]
        x[:, -1] = batch["scaled_value"][keep]
        return {"x": x, "pair_id": pair_id}


def triplet_dataset(store_uri: str | None = None, split: str | None = "train", val_fraction: float = 0.1,
                    num_cpus: float = 0.25):
    """A lazy Ray Dataset over the live store version for `split` ("train", "val" or None = all).

    Read and feature tasks ask for `num_cpus` each (a fraction by default): inside Ray Train or
    Tune the workers hold most CPUs, and data tasks that wanted a whole CPU would never start."""
    import ray.data

    store = TripletStore(store_uri or default_store_uri())
    store.require()
    features = _Features(store.embeddings(), split_folds(split, val_fraction))
    ds = ray.data.read_parquet(store.triplet_files(), filesystem=store.loc.fs,
                               ray_remote_args={"num_cpus": num_cpus}).select_columns(READ_COLUMNS)
    return ds.map_batches(features, batch_format="numpy", zero_copy_batch=True, num_cpus=num_cpus)
