"""The one place that knows the store's layout on disk.

    STORE/
      manifest.json                    # points at the live version (+ size/sha256/rows of its files); swapped atomically
      v000003/
        triplets/bucket-00.parquet ... # triplets, hash-partitioned by entity, in row groups
        pairs.parquet                  # pair id, concept, unit, label, scaler numbers, embedding

A writer stages a whole new version beside the live one and only then swaps `manifest.json`, so a
failed or interrupted ingest leaves the live store exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import Location, resolve
from pipeline.store.scaler import PairScaler

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_BUCKETS = 16
DEFAULT_ROW_GROUP = 65_536
VAL_FOLDS = 100  # `fold` = crc32(accession) % 100: a filing's facts share one fold

RAW_FIELDS = [
    pa.field("entity_id", pa.string(), nullable=False),  # zero-padded CIK, or "ticker:XYZ" (CSV)
    pa.field("entity_name", pa.string()),
    pa.field("taxonomy", pa.string()),  # us-gaap, dei, … (null for narrative CSV columns)
    pa.field("concept", pa.string(), nullable=False),
    pa.field("unit", pa.string(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
    pa.field("period_start", pa.date32()),
    pa.field("period_end", pa.date32()),
    pa.field("fy", pa.int32()),
    pa.field("fp", pa.string()),
    pa.field("form", pa.string()),
    pa.field("filed", pa.date32()),
    pa.field("accn", pa.string()),
]
RAW_SCHEMA = pa.schema(RAW_FIELDS)
TRIPLET_SCHEMA = pa.schema(
    RAW_FIELDS
    + [
        pa.field("scaled_value", pa.float64(), nullable=False),
        pa.field("pair_id", pa.int32(), nullable=False),
        pa.field("fold", pa.int16(), nullable=False),
    ]
)


def pairs_schema(embed_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.int32(), nullable=False),
            pa.field("concept", pa.string(), nullable=False),
            pa.field("unit", pa.string(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("description", pa.string()),
            pa.field("count", pa.int64()),
            pa.field("scaler_kind", pa.string()),
            pa.field("scaler_x", pa.list_(pa.float64())),
            pa.field("scaler_z", pa.list_(pa.float64())),
            pa.field("scaler_mean", pa.float64()),
            pa.field("scaler_std", pa.float64()),
            pa.field("embedding", pa.list_(pa.float32(), embed_dim)),
        ]
    )


class StoreError(Exception):
    """A store that cannot be read or written as asked."""


class TripletStore:
    """Read access to a store's live version, and the staging/swap protocol for writers."""

    def __init__(self, uri: str):
        self.loc: Location = resolve(uri)
        self.uri = uri
        self.manifest: dict | None = None
        if self.loc.exists(MANIFEST):
            try:
                self.manifest = json.loads(self.loc.read_bytes(MANIFEST))
            except ValueError as e:
                raise StoreError(f"{self.loc.join(MANIFEST)}: manifest is not valid JSON ({e})") from e
            if self.manifest.get("schema_version") != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.loc.join(MANIFEST)}: schema_version {self.manifest.get('schema_version')!r}, "
                    f"this tunestack reads {SCHEMA_VERSION}"
                )

    # ---- reading -------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.manifest is not None

    def require(self) -> dict:
        if self.manifest is None:
            raise StoreError(
                f"no triplet store at {self.uri} (run `tunestack ingest` or `tunestack synth gaap`)"
            )
        return self.manifest

    @property
    def version_dir(self) -> str:
        return self.require()["data_dir"]

    def triplet_files(self) -> list[str]:
        """Absolute (filesystem) paths of the live triplet Parquet files."""
        m = self.require()
        return [self.loc.join(m["data_dir"], f) for f in m["triplet_files"]]

    def read_pairs(self) -> pa.Table:
        return pq.read_table(self.loc.join(self.version_dir, "pairs.parquet"), filesystem=self.loc.fs)

    def scalers(self, pairs: pa.Table | None = None) -> dict[int, PairScaler]:
        pairs = pairs if pairs is not None else self.read_pairs()
        return {row["pair_id"]: PairScaler.from_row(row) for row in pairs.to_pylist()}

    def embeddings(self, pairs: pa.Table | None = None) -> np.ndarray:
        """Embedding matrix indexed by pair id: row i is pair i's embedding."""
        pairs = pairs if pairs is not None else self.read_pairs()
        ids = pairs.column("pair_id").to_numpy()
        emb = np.asarray(pairs.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32)
        emb = emb.reshape(len(ids), -1)
        out = np.zeros((int(ids.max()) + 1 if len(ids) else 0, emb.shape[1]), dtype=np.float32)
        out[ids] = emb
        return out

    def pair_lookup(self, pairs: pa.Table | None = None) -> dict[tuple[str, str], int]:
        pairs = pairs if pairs is not None else self.read_pairs()
        return {
            (c, u): int(i)
            for c, u, i in zip(
                pairs.column("concept").to_pylist(),
                pairs.column("unit").to_pylist(),
                pairs.column("pair_id").to_pylist(),
            )
        }

    # ---- writing -------------------------------------------------------------------------
    def stage(self) -> StagedVersion:
        self.loc.fs.create_dir(self.loc.path, recursive=True)
        self.clean_orphans()
        return StagedVersion(self)

    def clean_orphans(self) -> None:
        """Remove version/staging folders the manifest does not point at (left by a killed writer)."""
        live = self.manifest["data_dir"] if self.manifest else None
        for info in self.loc.fs.get_file_info(_selector(self.loc.path)):
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            if (
                info.type.name == "Directory"
                and (name.startswith(".staging-") or name.startswith("v"))
                and name != live
            ):
                self.loc.fs.delete_dir(info.path)


class StagedVersion:
    """A new store version being written beside the live one; `commit` swaps it in."""

    def __init__(self, store: TripletStore):
        self.store = store
        self.name = f".staging-{uuid.uuid4().hex[:12]}"
        self.loc = store.loc
        self.path = self.loc.join(self.name)
        for sub in ("raw", "dedup", "triplets"):
            self.loc.fs.create_dir(self.join(sub), recursive=True)

    def join(self, *parts: str) -> str:
        return self.loc.join(self.name, *parts)

    def commit(self, manifest: dict) -> dict:
        """Rename the staged folder to the next version and atomically point the manifest at it."""
        from pipeline.store.integrity import inventory

        old = self.store.manifest
        version = (old["version"] + 1) if old else 1
        data_dir = f"v{version:06d}"
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "data_dir": data_dir,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "files": inventory(self.loc, self.name),  # size, sha256, rows: what `store verify` checks
        }
        self.loc.fs.move(self.path, self.loc.join(data_dir))
        try:
            self.loc.write_bytes_atomic(MANIFEST, json.dumps(manifest, indent=2).encode())
        except BaseException:
            self.loc.delete_dir(data_dir)  # the manifest still names the old version: drop the new one
            raise
        self.store.manifest = manifest
        if old:
            self.loc.delete_dir(old["data_dir"])
        return manifest

    def abort(self) -> None:
        self.loc.delete_dir(self.name)


def write_pairs(path: str, rows: list[dict], embed_dim: int, fs) -> None:
    table = pa.Table.from_pylist(rows, schema=pairs_schema(embed_dim))
    pq.write_table(table, path, filesystem=fs)


def _selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=False)
