"""The digest of a store's contents that ingest's golden test records and compares (what a first
ingest decides, independent of how the files are laid out), shared by the unit and cluster tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import TripletStore

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "data" / "ingest_golden.json"
ROW_ORDER = [
    "entity_id",
    "taxonomy",
    "concept",
    "unit",
    "period_start",
    "period_end",
    "accn",
    "filed",
    "value",
]
PAIR_COLUMNS = ["pair_id", "concept", "unit", "label", "description", "count", "scaler_kind", "scaler_x",
                "scaler_z", "scaler_mean", "scaler_std"]  # fmt: skip
PROBES = 4  # embeddings are checked through their norms and projections on fixed random directions


def _column_digest(col: pa.ChunkedArray) -> str:
    return hashlib.sha256(json.dumps(col.to_pylist(), default=str).encode()).hexdigest()


def store_digest(uri: str) -> dict:
    """Everything a first ingest decides, independent of file layout: a sha256 per column of the
    rows in a total order and of the pairs table by pair id; embeddings as norms and projections."""
    store = TripletStore(uri)
    rows = pq.read_table(store.triplet_files(), filesystem=store.loc.fs)
    rows = rows.sort_by([(c, "ascending") for c in ROW_ORDER])
    pairs = store.read_pairs().sort_by("pair_id")
    emb = np.asarray(pairs.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float64)
    emb = emb.reshape(pairs.num_rows, -1)
    probes = np.random.default_rng(0).standard_normal((emb.shape[1], PROBES))
    return {
        "rows": rows.num_rows,
        "columns": {name: _column_digest(rows.column(name)) for name in sorted(rows.column_names)},
        "pairs": {name: _column_digest(pairs.column(name)) for name in PAIR_COLUMNS},
        "embedding_norms": np.linalg.norm(emb, axis=1).round(6).tolist(),
        "embedding_probes": (emb @ probes).round(6).tolist(),
    }
