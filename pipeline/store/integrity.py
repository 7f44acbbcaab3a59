"""`tunestack store verify`: is the live store version exactly what its writer committed?

A writer records every file of the version it commits in the manifest (`files`: size, sha256 and,
for Parquet, the row count). `verify_store` checks the manifest itself, then each file the live
version names: present, the recorded size and sha256, a readable Parquet footer, the recorded row
counts and the manifest's totals. Manifests written before `files` existed are still read: their
Parquet files are decoded in full instead (that catches most damage, not all of it).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage import Location, resolve
from pipeline.store.errors import StoreError
from pipeline.store.features import FeatureSpace
from pipeline.store.files import sha256_of
from pipeline.store.layout import (
    FEATURES_DIR,
    LOCK_FILE,
    MANIFEST,
    PAIRS_FILE,
    READABLE_SCHEMAS,
    VERSIONS_DIR,
    feature_files,
    manifest_files,
    manifest_triplet_files,
    parse_version_dir,
)


@dataclass
class StoreCheck:
    store: str
    version: int | None = None
    files_checked: int = 0
    damage: list[tuple[str, str]] = field(default_factory=list)  # (file, what is wrong)
    notes: list[str] = field(default_factory=list)  # not damage: leftovers a writer cleans up

    @property
    def ok(self) -> bool:
        return not self.damage

    def lines(self) -> list[str]:
        out = [f"DAMAGE {f}: {what}" for f, what in self.damage] + [f"note: {n}" for n in self.notes]
        if self.ok:
            out.append(
                f"store {self.store}: version {self.version}, {self.files_checked} file(s) match the manifest"
            )
        else:
            out.append(f"store {self.store}: {len(self.damage)} problem(s) found")
        return out


def verify_store(uri: str) -> StoreCheck:
    """Check the store at `uri`. Raises FileNotFoundError when there is no store folder at all."""
    loc = resolve(uri)
    check = StoreCheck(store=uri)
    if not loc.exists():
        raise FileNotFoundError(f"no triplet store at {uri}")
    if not loc.exists(MANIFEST):
        check.damage.append((MANIFEST, "missing (no live version)"))
        return check
    try:
        m = json.loads(loc.read_bytes(MANIFEST))
    except (ValueError, OSError) as e:
        check.damage.append((MANIFEST, f"unreadable or not valid JSON ({e})"))
        return check
    if not isinstance(m, dict):
        check.damage.append((MANIFEST, "not a JSON object"))
        return check
    missing = [k for k in ("schema_version", "version", "data_dir", "triplet_files", "counts") if k not in m]
    if missing:
        check.damage.append((MANIFEST, f"lacks {', '.join(missing)}"))
        return check
    if m["schema_version"] not in READABLE_SCHEMAS:
        check.damage.append(
            (MANIFEST, f"schema_version {m['schema_version']!r}, this tunestack reads "
                       f"{', '.join(map(str, READABLE_SCHEMAS))}")
        )  # fmt: skip
        return check
    check.version = m["version"]
    data_dir = m["data_dir"]
    if not loc.exists(data_dir):
        check.damage.append((data_dir, "the live version's folder is missing"))
        return check

    if m.get("files") is None:
        check.notes.append("manifest predates per-file checksums: Parquet files decoded in full instead")
    records = manifest_files(m)  # every file of the version, wherever it was written
    rows = {rel: _check_file(loc, rel, record, check) for rel, record in records.items()}
    on_disk = set(loc.list_files(data_dir))  # what the version wrote: all of it recorded
    for extra in sorted(on_disk - set(records)) if m.get("files") is not None else []:
        check.damage.append((extra, "file not in the manifest"))

    counts = m["counts"]
    triplet_rows = [rows[n] for n in manifest_triplet_files(m)]
    if None not in triplet_rows and sum(triplet_rows) != counts.get("triplets"):
        check.damage.append(
            (MANIFEST, f"counts.triplets is {counts.get('triplets')}, the files hold {sum(triplet_rows)}")
        )
    pairs = f"{data_dir}/{PAIRS_FILE}"
    if rows.get(pairs) is not None and rows[pairs] != counts.get("pairs"):
        check.damage.append((pairs, f"{rows[pairs]} rows, manifest counts {counts.get('pairs')} pairs"))
    _check_features(loc, m, check)
    for info in loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False)):
        name = posixpath.basename(info.path.rstrip("/"))
        version = parse_version_dir(name)
        if name in (MANIFEST, LOCK_FILE, FEATURES_DIR, VERSIONS_DIR, data_dir) or (
            version is not None and version < m["version"]
        ):
            continue  # the store's own files, and earlier versions kept for readers (`store gc`)
        check.notes.append(f"{name}: left by an interrupted writer; the next ingest removes it")
    return check


def _check_features(loc: Location, m: dict, check: StoreCheck) -> None:
    """The live feature version's files: recorded size and sha256, and loadable."""
    features = m.get("features")
    if not features:
        check.notes.append("the store predates feature versions: `tunestack store refit` fits one")
        return
    damaged = len(check.damage)
    for rel, record in sorted(features.get("files", {}).items()):
        _check_file(loc, rel, record, check)
    if len(check.damage) > damaged:
        return
    tensors, meta = feature_files(features["version"])
    try:
        FeatureSpace.from_bytes(loc.read_bytes(tensors), loc.read_bytes(meta))
    except (StoreError, OSError) as e:
        check.damage.append((meta, f"feature version {features['version']} does not load ({e})"))


def _check_file(loc: Location, rel: str, record: dict | None, check: StoreCheck) -> int | None:
    """Check one file; returns its row count when it is readable Parquet."""
    path = loc.join(rel)
    info = loc.fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        check.damage.append((rel, "missing"))
        return None
    check.files_checked += 1
    if record is not None:
        if info.size != record["size"]:
            check.damage.append((rel, f"{info.size} bytes, the manifest recorded {record['size']}"))
        elif sha256_of(loc.fs, path)[0] != record["sha256"]:
            check.damage.append((rel, "sha256 does not match the manifest"))
    if not rel.endswith(".parquet"):
        return None
    try:
        pf = pq.ParquetFile(path, filesystem=loc.fs)
        rows = pf.metadata.num_rows
        if record is None:
            pf.read()  # no checksum to trust: decode every page
    except (pa.ArrowException, OSError, ValueError) as e:
        check.damage.append((rel, f"not readable Parquet ({e})"))
        return None
    if record is not None and "rows" in record and rows != record["rows"]:
        check.damage.append((rel, f"{rows} rows, the manifest recorded {record['rows']}"))
    return rows
