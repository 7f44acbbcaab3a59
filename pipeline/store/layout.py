"""The one place that knows the store's layout on disk (or in a bucket).

    STORE/
      manifest.json                    # the pointer: the live version's record (its files with size, sha256
                                       # and rows; counts; feature version). Replaced whole: one PUT on an
                                       # object store, a temporary file renamed over it on a local disk
      .lock                            # the writers' lock (pipeline/store/lock.py); names its holder while held
      versions/v000003.json            # the record of every kept version (what manifest.json held while live)
      features/
        f000001.safetensors            # feature version 1: mean [raw_dim], components [raw_dim, embed_dim]
        f000001.json                   # its embedder (name, raw_dim, ...) and how it was fitted
      v000003/                         # the files version 3 wrote, never modified afterwards:
        triplets/bucket-07.parquet ... #   the buckets it changed (triplets hash-partitioned by entity, in row groups)
        pairs.parquet                  #   pair id, concept, unit, label, scaler numbers, embedding
      v000002/triplets/bucket-01.parquet  # a bucket version 3 left as it was: its record names this file

A version is the list of files its record names, wherever they were first written: an append
rewrites only the buckets it adds rows to and reuses every other bucket file as it is. Nothing is
ever renamed: a writer takes the lock, writes the new version's files under its own fresh prefix
(`v000003/`), fsyncs them (local disks), writes the version's record, and only then replaces
`manifest.json`, which readers follow and nothing else. A failed or interrupted write leaves the
live store exactly as it was (its leftovers, under a prefix no record names, are removed by the
next writer under the lock). The previous versions stay (readers such as a Ray Data pipeline open
their files lazily, long after they read the manifest) until more than `keep` (default 2) are
older than the live one: each commit then drops the oldest records and deletes every file no kept
version names, as does `tunestack store gc`. Feature versions are never rewritten or deleted:
appends reuse the live one, `tunestack store refit` adds the next.

Schema 2 names files relative to the store; schema 1 (before reuse) named them relative to its
version's folder, and is still read.
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
from pipeline.store.files import file_record, fsync_tree, write_atomic
from pipeline.store.lock import DEFAULT_WAIT, LOCK_FILE, StoreLock
from pipeline.store.scaler import PairScaler, scalers_of

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: file names relative to the version's folder, no version records
MANIFEST = "manifest.json"
VERSIONS_DIR = "versions"
PAIRS_FILE = "pairs.parquet"
FEATURES_DIR = "features"
STAGING_PREFIX = ".staging-"
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


def bucket_file(bucket: int) -> str:
    """A bucket's Parquet file inside a version (staging's own files: ingest/scratch.py)."""
    return f"triplets/bucket-{bucket:02d}.parquet"


def bucket_of_file(path: str) -> int:
    """The bucket a triplets file holds (from its name, `…/bucket-XX.parquet`)."""
    m = re.search(r"bucket-(\d+)\.parquet$", path)
    if m is None:
        raise StoreError(f"{path}: not a bucket file")
    return int(m.group(1))


def version_record(version: int) -> str:
    """A kept version's record, relative to the store."""
    return f"{VERSIONS_DIR}/{version_dir_name(version)}.json"


def manifest_triplet_files(m: dict) -> list[str]:
    """A version's triplet files, relative to the store (whatever its schema)."""
    if m.get("schema_version", 1) == 1:
        return [f"{m['data_dir']}/{f}" for f in m["triplet_files"]]
    return list(m["triplet_files"])


def manifest_files(m: dict) -> dict[str, dict | None]:
    """Every file of a version, relative to the store, with its record (None: not recorded)."""
    records = m.get("files") or {}
    if m.get("schema_version", 1) == 1:
        names = set(m["triplet_files"]) | {PAIRS_FILE} | set(records)
        return {f"{m['data_dir']}/{n}": records.get(n) for n in sorted(names)}
    names = set(m["triplet_files"]) | {f"{m['data_dir']}/{PAIRS_FILE}"} | set(records)
    return {n: records.get(n) for n in sorted(names)}


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
            if self.manifest.get("schema_version") not in READABLE_SCHEMAS:
                raise StoreError(
                    f"{self.loc.join(MANIFEST)}: schema_version {self.manifest.get('schema_version')!r}, "
                    f"this tunestack reads {', '.join(map(str, READABLE_SCHEMAS))}"
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
        return [self.loc.join(f) for f in manifest_triplet_files(self.require())]

    def bucket_files(self) -> dict[int, str]:
        """The live version's file of each bucket (relative to the store)."""
        return {bucket_of_file(f): f for f in manifest_triplet_files(self.require())}

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
        return scalers_of(pairs)

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
        for version, rel in self._records().items():
            if version > live:  # a record written, but the manifest swap never happened
                self.loc.delete_file(rel)
        for rel in self.loc.list_files(VERSIONS_DIR):
            if posixpath.basename(rel).startswith("."):
                self.loc.delete_file(rel)

    def _records(self) -> dict[int, str]:
        """The version records kept in the store: {version: path relative to the store}."""
        out = {}
        for rel in self.loc.list_files(VERSIONS_DIR):
            m = re.fullmatch(r"v(\d{6})\.json", posixpath.basename(rel))
            if m:
                out[int(m.group(1))] = rel
        return out

    def previous_versions(self) -> list[int]:
        """Versions older than the live one still in the store, oldest first: those with a record,
        and (schema 1) folders holding their own pairs table. A dropped version's folder may still
        hold bucket files a kept version reuses, never its pairs table."""
        live = self.require()["version"]
        found = set(self._records())
        for info in self._top():
            v = parse_version_dir(posixpath.basename(info.path.rstrip("/")))
            if v is not None and self.loc.exists(f"{version_dir_name(v)}/{PAIRS_FILE}"):
                found.add(v)
        return sorted(v for v in found if v < live)

    def gc(self, keep: int = DEFAULT_KEEP) -> list[str]:
        """Drop previous versions but the newest `keep` (under `writing()`): their records, and every
        file under a version folder that no kept version names. Returns the dropped versions' names."""
        if self._lock is None:
            raise StoreError(f"store {self.uri}: gc() outside `with store.writing():`")
        if keep < 0:
            raise StoreError(f"keep must be 0 or more, got {keep}")
        live = self.require()
        old = self.previous_versions()
        kept, doomed = old[max(0, len(old) - keep) :], old[: max(0, len(old) - keep)]
        records = self._records()
        named = set(manifest_files(live))
        for v in kept:  # a kept version's files: its record's, or (schema 1) its whole folder
            if v in records:
                named |= set(manifest_files(json.loads(self.loc.read_bytes(records[v]))))
            else:
                named |= set(self.loc.list_files(version_dir_name(v)))
        for v in doomed:
            if v in records:
                self.loc.delete_file(records[v])
        for info in self._top():
            folder = posixpath.basename(info.path.rstrip("/"))
            if parse_version_dir(folder) is None or parse_version_dir(folder) > live["version"]:
                continue
            files = self.loc.list_files(folder)
            unnamed = [f for f in files if f not in named]
            if len(unnamed) == len(files):
                self.loc.delete_dir(folder)
            else:
                for rel in unnamed:
                    self.loc.delete_file(rel)
        return [version_dir_name(v) for v in doomed]

    def _top(self):
        return self.loc.fs.get_file_info(_selector(self.loc.path))


class StagedVersion:
    """A new store version being written under its own fresh prefix; `commit` makes it live.

    `join(...)` is a path inside the new version's folder (`vNNNNNN/`, its final content);
    `scratch(...)` a path inside a staging folder for the writer's intermediate files (raw and
    de-duplicated buckets), deleted by `drop_scratch` or `abort`."""

    def __init__(self, store: TripletStore):
        self.store = store
        old = store.manifest
        self.version = (old["version"] + 1) if old else 1
        self.data_dir = version_dir_name(self.version)
        self.name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.loc = store.loc
        self.path = self.loc.join(self.name)
        self.loc.fs.create_dir(self.path, recursive=True)  # its scratch files' folders: ingest/scratch.py
        self.loc.fs.create_dir(self.join("triplets"), recursive=True)

    def join(self, *parts: str) -> str:
        """A path inside the new version's folder."""
        return self.loc.join(self.data_dir, *parts)

    def scratch(self, *parts: str) -> str:
        """A path inside this writer's staging folder (never part of a version)."""
        return self.loc.join(self.name, *parts)

    def exists(self, rel: str) -> bool:
        return self.loc.exists(f"{self.name}/{rel}")

    def drop_scratch(self) -> None:
        """Delete the staging folder (raw, dedup): what remains is the version's content."""
        self.loc.delete_dir(self.name)

    def commit(
        self, manifest: dict, features: FeatureSpace, keep: int = DEFAULT_KEEP, reused: dict | None = None
    ) -> dict:
        """Make the staged version live: record its files (`manifest["triplet_files"]`: the files it
        wrote, relative to its folder; `reused`: {store-relative path: record} of earlier versions'
        bucket files it keeps; `manifest["files"]`, optional: records taken at write, relative to its
        folder), write its record, then replace `manifest.json` (the one write readers see); then
        drop previous versions but the newest `keep`. `features` is the version's feature space: the
        live one (appends), or a new one, whose files are written here, before the swap."""
        old = self.store.manifest
        new_features = features.version != (self.store.feature_version if old else None)
        reused = dict(reused or {})
        written = []
        try:
            if new_features:
                for rel, data in zip(feature_files(features.version), features.to_bytes()):
                    self.loc.fs.create_dir(self.loc.join(FEATURES_DIR), recursive=True)
                    write_atomic(self.loc, rel, data)
                    written.append(rel)
            at_write = manifest.pop("files", None) or {}
            files = {f"{self.data_dir}/{rel}": at_write.get(rel) for rel in self.loc_files()}
            files = {
                rel: rec or file_record(self.loc.fs, self.loc.join(rel)) for rel, rec in files.items()
            }  # size, sha256, rows: what `store verify` checks (hashed now only if not at write)
            for rel, rec in reused.items():
                files[rel] = rec or file_record(self.loc.fs, self.loc.join(rel))
            triplets = [f"{self.data_dir}/{f}" for f in manifest.pop("triplet_files")] + list(reused)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "version": self.version,
                "data_dir": self.data_dir,
                "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest,
                "triplet_files": sorted(triplets, key=bucket_of_file),
                "features": {
                    "version": features.version,
                    "files": {
                        rel: file_record(self.loc.fs, self.loc.join(rel))
                        for rel in feature_files(features.version)
                    },
                },
                "files": dict(sorted(files.items())),
            }
            data = json.dumps(manifest, indent=2).encode()
            fsync_tree(self.loc, self.data_dir)  # every file of the version on disk before a record names it
            self.loc.fs.create_dir(self.loc.join(VERSIONS_DIR), recursive=True)
            write_atomic(self.loc, version_record(self.version), data)
            written.append(version_record(self.version))
            write_atomic(self.loc, MANIFEST, data)  # the pointer: the version is live from here on
        except BaseException:
            self.loc.delete_dir(self.data_dir)  # the manifest still names the old version: drop the new one
            for rel in written:  # so are a record and a feature version no manifest names
                self.loc.delete_file(rel)
            raise
        self.store.manifest = manifest
        self.store.gc(keep)
        return manifest

    def loc_files(self) -> list[str]:
        """The files written so far under the new version's folder, relative to it."""
        return [posixpath.relpath(f, self.data_dir) for f in self.loc.list_files(self.data_dir)]

    def abort(self) -> None:
        self.loc.delete_dir(self.name)
        self.loc.delete_dir(self.data_dir)


def write_pairs(path: str, rows: list[dict], embed_dim: int, fs) -> None:
    table = pa.Table.from_pylist(rows, schema=pairs_schema(embed_dim))
    text = [f.name for f in table.schema if pa.types.is_string(f.type)]
    # Dictionaries for the text columns only: over the embeddings and scaler knots they cost
    # 4x the write (about 50 ms for 500 pairs) and save nothing.
    pq.write_table(table, path, filesystem=fs, use_dictionary=text)


def _selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=False)
