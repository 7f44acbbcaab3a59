"""Sequence-classification sources → train/val/test splits → Ray Datasets.

Sources (small enough to read on the driver; the triplet store is the one that streams):
  - routing logs: a folder holding `routing.parquet` (or the file itself) with float columns
    ROUTING_FEATURES and an int `label` (1 = the lightweight model suffices); rows are [D] vectors;
  - `.npz`: arrays `X` [N, T, D] (or [N, D]) float, `y` [N] int, optional `split` [N]
    (0 = train, 1 = test);
  - Parquet: a column `x` (lists, [T·D] or [T][D]) or plain numeric feature columns, a label
    column `y` (or `label`) and optional `split`.

Without a `split`, a stratified `test_fraction` is held out (fixed seed). A stratified
`val_fraction` of the train part is held out for early stopping. Features are z-scored with
statistics fitted on the train split only; the statistics are returned so they are saved with the
checkpoint and applied unchanged at evaluation and inference time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import DataError

ROUTING_FEATURES = ["similarity", "recency", "frequency", "success_rate", "metadata_match"]
ROUTING_FILE = "routing.parquet"
LABEL_COLUMNS = ("y", "label")


@dataclass
class Normalization:
    """Per-feature input transform: log1p on the `log1p` feature indices (heavy-tailed counts),
    then the z-score (x − mean) / std over the last axis. Saved in checkpoints; inference applies
    exactly this (`Normalization.from_dict(meta["normalization"]).apply(x)`)."""

    mean: list[float]
    std: list[float]
    features: list[str] | None = None
    log1p: list[int] = field(default_factory=list)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=np.float32)
        if self.log1p:
            x[..., self.log1p] = np.log1p(np.maximum(x[..., self.log1p], 0.0))
        return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "kind": "zscore",
            "mean": self.mean,
            "std": self.std,
            "features": self.features,
            "log1p": self.log1p,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> Normalization | None:
        if not d:
            return None
        return cls(
            mean=list(d["mean"]),
            std=list(d["std"]),
            features=d.get("features"),
            log1p=list(d.get("log1p") or []),
        )


def fit_zscore(x: np.ndarray, features: list[str] | None = None, log1p: list[int] = ()) -> Normalization:
    """Mean/std of each feature (last axis, after log1p of the `log1p` indices) over every example
    and step of `x`."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if log1p:
        flat[:, list(log1p)] = np.log1p(np.maximum(flat[:, list(log1p)], 0.0))
    std = flat.std(axis=0)
    std[std < 1e-8] = 1.0  # a constant feature stays as it is, shifted to 0
    return Normalization(
        mean=flat.mean(axis=0).tolist(), std=std.tolist(), features=features, log1p=[int(i) for i in log1p]
    )


@dataclass
class Split:
    x: np.ndarray  # float32 [N, T, D] or [N, D]
    y: np.ndarray  # int64 [N]
    rows: np.ndarray | None = None  # the examples' row numbers in the source

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class SequenceData:
    train: Split
    val: Split | None
    test: Split
    normalization: Normalization | None
    fingerprint: dict
    input_size: int
    num_classes: int
    features: list[str] | None = field(default=None)


# ---------------------------------------------------------------------------------------------
# Reading


def read_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str] | None]:
    """(X float32, y int64, split or None, feature names or None) from routing logs, .npz or Parquet."""
    if os.path.isdir(path):
        path = os.path.join(path, ROUTING_FILE)
    if not os.path.exists(path):
        raise DataError(
            f"no sequence data at {path} (write some with `tunestack synth digits` or `synth routing`)"
        )
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            missing = {"X", "y"} - set(z.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {sorted(missing)} (need X [N, T, D], y [N])")
            split = z["split"] if "split" in z.files else None
            return z["X"].astype(np.float32), z["y"].astype(np.int64), split, None
    if path.endswith(".parquet"):
        return _read_parquet(path)
    raise DataError(f"{path}: sequence data must be .npz, .parquet or a folder with {ROUTING_FILE}")


def _read_parquet(path: str):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = table.column_names
    label = next((c for c in LABEL_COLUMNS if c in names), None)
    if label is None:
        raise DataError(f"{path}: needs a label column named one of {LABEL_COLUMNS}")
    y = table.column(label).to_numpy().astype(np.int64)
    split = table.column("split").to_numpy() if "split" in names else None
    if "x" in names:
        x = np.asarray(table.column("x").to_pylist(), dtype=np.float32)
        return x, y, split, None
    if all(f in names for f in ROUTING_FEATURES):
        features = list(ROUTING_FEATURES)  # the router's fixed input order
    else:
        features = [c for c in names if c not in (label, "split")]
    x = np.stack([table.column(f).to_numpy().astype(np.float32) for f in features], axis=1)
    return x, y, split, features


def file_fingerprint(path: str) -> dict:
    """sha256 and size of the data file, so a checkpoint names exactly what it was trained on."""
    if os.path.isdir(path):
        path = os.path.join(path, ROUTING_FILE)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest(), "bytes": os.path.getsize(path)}


# ---------------------------------------------------------------------------------------------
# Splitting and normalizing


def load_sequence_data(
    path: str,
    *,
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    log1p: list[str] = (),
    normalization: Normalization | None = None,
) -> SequenceData:
    """Read `path`, split train/val/test (stratified, seeded) and z-score with train statistics
    (after log1p of the named `log1p` features).

    Pass `normalization` (from a checkpoint) to apply it instead of fitting a new one."""
    from sklearn.model_selection import train_test_split

    x, y, split, features = read_arrays(path)
    if x.ndim not in (2, 3) or len(x) != len(y):
        raise DataError(f"{path}: X must be [N, D] or [N, T, D] with len(y) rows, got {x.shape}, {y.shape}")
    idx = np.arange(len(y))
    if split is not None:
        train_idx, test_idx = idx[split == 0], idx[split == 1]
    else:
        train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    val_idx = None
    if val_fraction > 0:
        train_idx, val_idx = train_test_split(
            train_idx, test_size=val_fraction, random_state=seed, stratify=y[train_idx]
        )
    if normalization is None and normalize:
        unknown = [f for f in log1p if f not in (features or [])]
        if unknown:
            raise DataError(f"{path}: log1p feature(s) {unknown} not among the named features {features}")
        normalization = fit_zscore(x[train_idx], features, [features.index(f) for f in log1p])
    if normalization is not None:
        x = normalization.apply(x)

    def take(rows):
        return Split(np.ascontiguousarray(x[rows], dtype=np.float32), y[rows], rows)

    return SequenceData(
        train=take(train_idx),
        val=take(val_idx) if val_idx is not None else None,
        test=take(test_idx),
        normalization=normalization,
        fingerprint={
            **file_fingerprint(path),
            "rows": int(len(y)),
            "split": "column"
            if split is not None
            else f"stratified test_fraction={test_fraction} seed={seed}",
            "val_fraction": val_fraction,
        },
        input_size=int(x.shape[-1]),
        num_classes=int(y.max()) + 1,
        features=features,
    )


def to_dataset(split: Split):
    """A Ray Dataset with columns "x" (float32 [T, D] or [D] per row) and "y" (int64)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({"x": ArrowTensorArray.from_numpy(split.x), "y": pa.array(split.y, pa.int64())})
    return ray.data.from_arrow(table)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits as a sequence task


def write_digits_npz(path: str, seed: int = 0, test_fraction: float = 0.25) -> str:
    """Write load_digits as `X` [1797, 8, 8] (8 rows read as 8 steps × 8 features), `y`, and a
    stratified `split` (0 = train, 1 = test). Returns `path`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)  # [N, 8, 8], pixel values 0..16
    y = digits.target.astype(np.int64)
    _, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    split = np.zeros(len(y), dtype=np.int8)
    split[test_idx] = 1
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, X=x, y=y, split=split)
    return path
