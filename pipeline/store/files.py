"""File-level primitives the store's writers and `store verify` share: checksums, durable writes.

Durability: a local filesystem may keep written data in the page cache and reorder it, so a crash
just after the manifest swap could leave a manifest naming files that never reached the disk.
Writers therefore fsync every file of a new version and its folders before the swap, and the
folder holding the manifest after it. Object stores (s3://, gs://) have no such cache to flush:
an object is durable once its upload completes, so there these calls do nothing.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage import Location

CHUNK = 4 << 20


def sha256_of(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    """(hex sha256, size) of one file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def file_record(fs: pafs.FileSystem, path: str) -> dict:
    """{"size", "sha256"} of one file, plus "rows" for a Parquet file (read from its footer)."""
    digest, size = sha256_of(fs, path)
    rec = {"size": size, "sha256": digest}
    if path.endswith(".parquet"):
        rec["rows"] = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
    return rec


def inventory(loc: Location, rel_dir: str) -> dict[str, dict]:
    """file_record of every file under `rel_dir`, keyed by its path inside `rel_dir`."""
    return {
        posixpath.relpath(rel, rel_dir): file_record(loc.fs, loc.join(rel)) for rel in loc.list_files(rel_dir)
    }


def fsync_tree(loc: Location, rel: str = "") -> None:
    """fsync every file and folder under `rel` (and `rel` itself), on a local filesystem."""
    if not loc.local:
        return
    top = loc.join(rel) if rel else loc.path
    for folder, _, names in os.walk(top):
        for name in names:
            _fsync(os.path.join(folder, name), os.O_RDONLY)
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_dir(loc: Location, rel: str = "") -> None:
    """fsync one folder (its entries: renames, new files), on a local filesystem."""
    if loc.local:
        _fsync(loc.join(rel) if rel else loc.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def write_atomic(loc: Location, rel: str, data: bytes) -> None:
    """Write `rel` (any depth) whole or not at all, durably: locally a temporary name in the same
    folder, fsynced, renamed over `rel`, and the folder fsynced; on an object store one PUT."""
    if not loc.local:
        loc.write_bytes_atomic(rel, data)
        return
    folder, name = posixpath.split(rel)
    tmp = posixpath.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with loc.fs.open_output_stream(loc.join(tmp)) as f:
            f.write(data)
        _fsync(loc.join(tmp), os.O_RDONLY)
        loc.fs.move(loc.join(tmp), loc.join(rel))
    except BaseException:
        if loc.exists(tmp):
            loc.fs.delete_file(loc.join(tmp))  # a failed write leaves nothing behind
        raise
    fsync_dir(loc, folder)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
