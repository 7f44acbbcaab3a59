"""Where tunestack keeps things: TUNESTACK_HOME and filesystem URIs.

Every command resolves its store, runs and registry through here, so `TUNESTACK_HOME` (default
`./.tunestack`) is honoured everywhere and any pyarrow filesystem URI (local path, `file://`,
`s3://`, `gs://`, …) works wherever a location is accepted.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs


def home() -> str:
    """The tunestack home: `$TUNESTACK_HOME`, or `.tunestack` in the current directory."""
    return os.environ.get("TUNESTACK_HOME") or os.path.join(os.getcwd(), ".tunestack")


def expand(path: str) -> str:
    """A config path with `$TUNESTACK_HOME` (even when unset: the default home), other
    environment variables and `~` expanded. URIs pass through."""
    path = path.replace("${TUNESTACK_HOME}", home()).replace("$TUNESTACK_HOME", home())
    return path if "://" in path else os.path.expanduser(os.path.expandvars(path))


def default_store_uri() -> str:
    return os.path.join(home(), "store")


def runs_dir() -> str:
    return os.path.join(home(), "runs")


def registry_dir() -> str:
    return os.path.join(home(), "registry")


@dataclass(frozen=True)
class Location:
    """A folder on some pyarrow filesystem: `fs` plus a path inside it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def exists(self, rel: str = "") -> bool:
        info = self.fs.get_file_info(self.join(rel) if rel else self.path)
        return info.type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.join(rel)) as f:
            return f.read()

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write to a temporary name, then rename over `rel` (atomic on local and POSIX filesystems)."""
        tmp = self.join(f".{rel}.tmp-{os.getpid()}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self.join(rel))
        except BaseException:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)  # a failed write leaves nothing behind
            raise

    def list_files(self, rel: str = "") -> list[str]:
        """Every file below `rel`, as paths relative to this location, sorted."""
        base = self.join(rel) if rel else self.path
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(posixpath.relpath(i.path, self.path) for i in infos if i.type == pafs.FileType.File)

    def delete_dir(self, rel: str) -> None:
        p = self.join(rel) if rel else self.path
        if self.fs.get_file_info(p).type != pafs.FileType.NotFound:
            self.fs.delete_dir(p)


def resolve(uri: str) -> Location:
    """Turn a local path or a filesystem URI into a Location (creating nothing)."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
    return Location(fs=fs, path=path.rstrip("/") or "/", uri=uri)
