"""The one place that knows the store's layout on disk.

    STORE/
      manifest.json                    # points at the live version and feature version (+ size/sha256/rows of
                                       # their files); swapped atomically
      .lock                            # the writers' lock (pipeline/store/lock.py); names its holder while held
      features/
        f000001.safetensors            # feature version 1: mean [raw_dim], components [raw_dim, embed_dim]
        f000001.json                   # its embedder (name, raw_dim, ...) and how it was fitted
      v000003/
        triplets/bucket-00.parquet ... # triplets, hash-partitioned by entity, in row groups
        pairs.parquet                  # pair id, concept, unit, label, scaler numbers, embedding
      v000002/, v000001/               # the previous versions, kept for readers still streaming them

A writer takes the lock, stages a whole new version beside the live one, fsyncs it, and only then
swaps `manifest.json`, so a failed or interrupted ingest leaves the live store exactly as it was.
The previous versions stay (readers such as a Ray Data pipeline open their files lazily, long
after they read the manifest) until more than `keep` (default 2) are older than the live one:
each commit then deletes the oldest, as does `tunestack store gc`. Feature versions are never
rewritten or deleted: appends reuse the live one, `tunestack store refit` adds the next.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import posixpath
import re
import uuid
import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import Location, resolve
from pipeline.store.errors import StoreError
from pipeline.store.features import FeatureSpace
from pipeline.store.files import file_record, fsync_dir, fsync_tree, inventory, write_atomic
from pipeline.store.lock import DEFAULT_WAIT, LOCK_FILE, StoreLock
from pipeline.store.scaler import PairScaler

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PAIRS_FILE = "pairs.parquet"
FEATURES_DIR = "features"
STAGING_PREFIX = ".staging-"
SCRATCH_DIRS = ("raw", "dedup")  # inside a staged version only: parsed and de-duplicated buckets
DEFAULT_KEEP = 2  # previous versions kept for readers (`tunestack store gc --keep N`)
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


def version_dir_name(version: int) -> str:
    return f"v{version:06d}"


def parse_version_dir(name: str) -> int | None:
    """The store version a folder name stands for (None: not a version folder)."""
    return int(name[1:]) if re.fullmatch(r"v\d{6}", name) else None


def bucket_of(entity_id: str, buckets: int) -> int:
    """The bucket (triplets/bucket-XX.parquet) an entity's rows live in."""
    return zlib.crc32(entity_id.encode()) % buckets


def fold_of(accn: str | None) -> int:
    """A row's `fold`: crc32(accession) % VAL_FOLDS, so every fact of one filing shares a fold."""
    return zlib.crc32((accn or "").encode()) % VAL_FOLDS


def bucket_file(kind: str, bucket: int) -> str:
    """A bucket's file inside a (staged) version: kind is "triplets", or "raw"/"dedup" while staging."""
    return f"{kind}/bucket-{bucket:02d}.parquet"


def manifest_embedder(space: FeatureSpace) -> dict:
    """The manifest's summary of a version's embedder (what `tunestack store show` prints)."""
    return {
        "name": space.embedder["name"],
        "source_dim": space.raw_dim,
        "dim": space.embed_dim,
        "reduction": "pca",
    }


def feature_files(version: int) -> tuple[str, str]:
    """(tensors, meta) of a feature version, relative to the store."""
    stem = f"{FEATURES_DIR}/f{version:06d}"
    return f"{stem}.safetensors", f"{stem}.json"


class TripletStore:
    """Read access to a store's live version, and the staging/swap protocol for writers."""

    def __init__(self, uri: str):
        self.loc: Location = resolve(uri)
        self.uri = uri
        self._lock: StoreLock | None = None
        self.refresh()

    def refresh(self) -> None:
        """(Re)read the manifest: the live version as of now."""
        self.manifest = None
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
        return pq.read_table(self.loc.join(self.version_dir, PAIRS_FILE), filesystem=self.loc.fs)

    @property
    def feature_version(self) -> int | None:
        """The live version's feature version (None: a store written before feature versions)."""
        return (self.require().get("features") or {}).get("version")

    def feature_versions(self) -> list[int]:
        """Every feature version kept in the store, oldest first."""
        names = (posixpath.basename(f) for f in self.loc.list_files(FEATURES_DIR))
        return sorted(int(n[1:7]) for n in names if re.fullmatch(r"f\d{6}\.json", n))

    def feature_space(self, version: int | None = None) -> FeatureSpace:
        """Feature version `version` (default: the live one's) of this store."""
        if version is None:
            version = self.feature_version
            if version is None:
                raise StoreError(
                    f"store {self.uri} predates feature versions: run `tunestack store refit` to fit one"
                )
        tensors, meta = feature_files(version)
        if not self.loc.exists(meta):
            kept = ", ".join(map(str, self.feature_versions())) or "none"
            raise StoreError(f"store {self.uri} has no feature version {version} (kept: {kept})")
        try:
            return FeatureSpace.from_bytes(self.loc.read_bytes(tensors), self.loc.read_bytes(meta))
        except (StoreError, OSError) as e:
            raise StoreError(f"{self.loc.join(meta)}: {e}") from e

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
    @contextlib.contextmanager
    def writing(self, wait: float = DEFAULT_WAIT) -> Iterator[TripletStore]:
        """Hold the store's writer lock (waiting up to `wait` seconds for another writer), with
        the manifest re-read under it and a killed writer's leftovers removed. A store this writer
        created and did not commit is removed again when the block fails."""
        existed = self.loc.exists()
        with StoreLock(self.loc, wait) as lock:
            self._lock = lock
            try:
                self.refresh()  # another writer may have committed while this one waited
                self.clean_orphans()
                yield self
            except BaseException:
                if not existed and self.manifest is None and self.loc.list_files() in ([], [LOCK_FILE]):
                    self.loc.delete_dir("")  # a store that did not exist before does not exist after
                raise
            finally:
                self._lock = None

    def stage(self) -> StagedVersion:
        """A new version staged beside the live one (under `writing()`)."""
        if self._lock is None:
            raise StoreError(f"store {self.uri}: stage() outside `with store.writing():`")
        return StagedVersion(self)

    def clean_orphans(self) -> None:
        """Remove what a killed writer left (under the lock, so no writer is running): staging
        folders, version folders and feature versions newer than the live ones, temporary files."""
        live = self.manifest["version"] if self.manifest else 0
        live_features = (self.manifest or {}).get("features", {}).get("version") or 0
        for info in self.loc.fs.get_file_info(_selector(self.loc.path)):
            name = posixpath.basename(info.path.rstrip("/"))
            version = parse_version_dir(name)
            if name.startswith(STAGING_PREFIX) or (version is not None and version > live):
                self.loc.fs.delete_dir(info.path)
            elif name.startswith(f".{MANIFEST}.tmp-"):
                self.loc.fs.delete_file(info.path)
        for rel in self.loc.list_files(FEATURES_DIR):
            name = posixpath.basename(rel)
            m = re.fullmatch(r"f(\d{6})\.(json|safetensors)", name)
            if name.startswith(".") or (m and int(m.group(1)) > live_features):
                self.loc.fs.delete_file(self.loc.join(rel))

    def previous_versions(self) -> list[int]:
        """Version folders older than the live one still in the store, oldest first."""
        live = self.require()["version"]
        found = (parse_version_dir(posixpath.basename(i.path.rstrip("/"))) for i in self._top())
        return sorted(v for v in found if v is not None and v < live)

    def gc(self, keep: int = DEFAULT_KEEP) -> list[str]:
        """Delete previous versions but the newest `keep` (under `writing()`); their folder names."""
        if self._lock is None:
            raise StoreError(f"store {self.uri}: gc() outside `with store.writing():`")
        if keep < 0:
            raise StoreError(f"keep must be 0 or more, got {keep}")
        old = self.previous_versions()
        doomed = [version_dir_name(v) for v in old[: max(0, len(old) - keep)]]
        for name in doomed:
            self.loc.delete_dir(name)
        return doomed

    def _top(self):
        return self.loc.fs.get_file_info(_selector(self.loc.path))


class StagedVersion:
    """A new store version being written beside the live one; `commit` swaps it in."""

    def __init__(self, store: TripletStore):
        self.store = store
        self.name = f".staging-{uuid.uuid4().hex[:12]}"
        self.loc = store.loc
        self.path = self.loc.join(self.name)
        for sub in (*SCRATCH_DIRS, "triplets"):
            self.loc.fs.create_dir(self.join(sub), recursive=True)

    def join(self, *parts: str) -> str:
        return self.loc.join(self.name, *parts)

    def exists(self, rel: str) -> bool:
        return self.loc.exists(f"{self.name}/{rel}")

    def drop_scratch(self) -> None:
        """Delete the staging-only folders (raw, dedup): what remains is the version's content."""
        for sub in SCRATCH_DIRS:
            self.loc.delete_dir(f"{self.name}/{sub}")

    def commit(self, manifest: dict, features: FeatureSpace, keep: int = DEFAULT_KEEP) -> dict:
        """Rename the staged folder to the next version and atomically point the manifest at it,
        then delete previous versions but the newest `keep`. `features` is the version's feature
        space: the live one (appends), or a new one, whose files are written here, before the swap."""
        old = self.store.manifest
        version = (old["version"] + 1) if old else 1
        data_dir = version_dir_name(version)
        new_features = features.version != (self.store.feature_version if old else None)
        written = []
        try:
            if new_features:
                for rel, data in zip(feature_files(features.version), features.to_bytes()):
                    self.loc.fs.create_dir(self.loc.join(FEATURES_DIR), recursive=True)
                    write_atomic(self.loc, rel, data)
                    written.append(rel)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "version": version,
                "data_dir": data_dir,
                "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest,
                "features": {
                    "version": features.version,
                    "files": {
                        rel: file_record(self.loc.fs, self.loc.join(rel))
                        for rel in feature_files(features.version)
                    },
                },
                "files": inventory(self.loc, self.name),  # size, sha256, rows: what `store verify` checks
            }
            fsync_tree(self.loc, self.name)  # every file of the version on disk before the swap names it
            self.loc.fs.move(self.path, self.loc.join(data_dir))
            fsync_dir(self.loc)
        except BaseException:
            for rel in written:  # a feature version no manifest names is removed with the failed version
                self.loc.fs.delete_file(self.loc.join(rel))
            raise
        try:
            write_atomic(self.loc, MANIFEST, json.dumps(manifest, indent=2).encode())
        except BaseException:
            self.loc.delete_dir(data_dir)  # the manifest still names the old version: drop the new one
            for rel in written:
                self.loc.fs.delete_file(self.loc.join(rel))
            raise
        self.store.manifest = manifest
        self.store.gc(keep)
        return manifest

    def abort(self) -> None:
        self.loc.delete_dir(self.name)


def write_pairs(path: str, rows: list[dict], embed_dim: int, fs) -> None:
    table = pa.Table.from_pylist(rows, schema=pairs_schema(embed_dim))
    pq.write_table(table, path, filesystem=fs)


def _selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=False)
