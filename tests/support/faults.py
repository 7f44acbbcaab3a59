"""Storage that fails midway: every write after the first N bytes raises, like a full disk.

Two seams, the ones the code really writes through:
  - `failing_filesystem` / `failing_resolve`: a pyarrow filesystem on the local disk (the triplet
    store and the registry write only through a storage `Location`, made by their module's `resolve`);
  - `failing_open`: a replacement for `open` in a module (the checkpoint writer writes every file
    through its module's `open`).
Both share a `ByteBudget`: writes go through until the budget is spent, the write that crosses it
is written in part and then raises OSError(ENOSPC). Reads, renames and deletes are untouched.
`pruned_meanwhile_resolve`: deletes race another process that removes the folder first.
"""

from __future__ import annotations

import builtins
import errno
import shutil
import threading

import pyarrow as pa
import pyarrow.fs as pafs


class ByteBudget:
    def __init__(self, limit: float):
        self.limit = limit  # float("inf"): never fail, just count
        self.written = 0
        self.tripped = False
        self._lock = threading.Lock()  # ingest writes from several threads at once

    def take(self, n: int) -> int:
        """Bytes of an n-byte write that may go through; trips (and the caller raises) past the budget."""
        with self._lock:
            room = max(0, int(min(self.limit - self.written, n)))
            self.written += room
            if room < n:
                self.tripped = True
            return room

    def error(self) -> OSError:
        return OSError(errno.ENOSPC, f"injected fault: no space left after {self.written} bytes")


class _BudgetWriter:
    """A writable file object that forwards to `inner` within the budget."""

    def __init__(self, inner, budget: ByteBudget, text: bool = False):
        self.inner, self.budget, self.text = inner, budget, text

    def write(self, data):
        raw = data.encode() if self.text else bytes(data)
        room = self.budget.take(len(raw))
        if room < len(raw):
            if room:
                self.inner.write(raw[:room].decode(errors="ignore") if self.text else raw[:room])
            raise self.budget.error()
        return self.inner.write(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()

    @property
    def closed(self):
        return self.inner.closed

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False


class _FailingHandler(pafs.FileSystemHandler):
    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.fs = pafs.LocalFileSystem()

    def get_type_name(self):
        return "failing-local"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the root")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_BudgetWriter(self.fs.open_output_stream(path), self.budget), mode="w")

    def open_append_stream(self, path, metadata):
        return pa.PythonFile(_BudgetWriter(self.fs.open_append_stream(path), self.budget), mode="w")


def failing_filesystem(budget: ByteBudget) -> pafs.FileSystem:
    """A local pyarrow filesystem whose output streams fail once `budget` is spent."""
    return pafs.PyFileSystem(_FailingHandler(budget))


def failing_resolve(budget: ByteBudget):
    """A replacement for `resolve` in a module: local paths, on a filesystem that fails once `budget` is spent."""
    import os

    from pipeline.storage import Location

    fs = failing_filesystem(budget)
    return lambda uri: Location(fs=fs, path=os.path.abspath(str(uri)), uri=str(uri), local=True)


class _PrunedMeanwhile(_FailingHandler):
    def delete_dir(self, path):
        shutil.rmtree(path)  # another process got there first
        self.fs.delete_dir(path)


def pruned_meanwhile_resolve():
    """A replacement for `resolve` in a module: local paths, on a filesystem where another process
    removes each folder just before this one deletes it (the delete then finds nothing)."""
    import os

    from pipeline.storage import Location

    fs = pafs.PyFileSystem(_PrunedMeanwhile(ByteBudget(float("inf"))))
    return lambda uri: Location(fs=fs, path=os.path.abspath(str(uri)), uri=str(uri), local=True)


def failing_open(budget: ByteBudget):
    """An `open` whose files opened for writing fail once `budget` is spent."""

    def _open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            return _BudgetWriter(f, budget, text="b" not in mode)
        return f

    return _open
