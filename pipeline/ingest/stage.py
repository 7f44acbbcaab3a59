"""Phase A of ingest: parse a unit of the input (a run of zip members, or files) and write its rows
into the staged version's raw partitions, one file per partition the unit touches (scratch.py):

    <staged>/raw/bucket-07/unit-00012.arrow

Each unit is independent (its own files, named by its unit number), so units run in any order, on
any node, and a retried unit rewrites exactly its own files. Memory: one document, plus at most
FLUSH_ROWS rows waiting to be written and one flush being written. The writes (Arrow's IPC writer
and zstd, outside the GIL) run on a thread while the next documents are parsed.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.ingest import scratch
from pipeline.ingest.companyfacts import IngestError
from pipeline.ingest.sources import Part, iter_documents
from pipeline.ingest.tasks import _node
from pipeline.storage import Location
from pipeline.store.layout import bucket_of

FLUSH_ROWS = 100_000  # rows held before the largest partition's rows are written
MAX_EXAMPLES = 5  # skipped-record messages kept per unit


@dataclass
class UnitResult:
    """What one unit read and wrote (merged by the driver in unit order, so reports are stable)."""

    unit: int
    documents: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    node: str = ""
    files: dict[int, str] = field(default_factory=dict)  # bucket -> raw file (relative to the version)
    bucket_rows: dict[int, int] = field(default_factory=dict)  # bucket -> rows in its raw file
    pair_meta: dict = field(default_factory=dict)  # (concept, unit) -> (label, description)
    skipped_documents: list[str] = field(default_factory=list)
    skipped_records: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def stage_unit(parts: list[Part], loc: Location, version_dir: str, unit: int, buckets: int, skip_bad: bool):
    """Parse `parts` and write their rows under `version_dir`/raw; returns a UnitResult."""
    t0 = time.perf_counter()
    out = UnitResult(unit=unit, node=_node(), bytes=sum(p.bytes for p in parts))
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    pending: dict[int, list[pa.Table]] = {}
    held = {"rows": 0}

    def flush(b: int) -> None:
        if b not in writers:
            out.files[b] = scratch.raw_file(b, unit)
            writers[b] = closing.enter_context(scratch.writer(loc.fs, loc.join(version_dir, out.files[b])))
        t = pa.concat_tables(pending.pop(b)).combine_chunks()  # one record batch, not one per document
        held["rows"] -= t.num_rows
        out.bucket_rows[b] = out.bucket_rows.get(b, 0) + t.num_rows
        writing.submit(writers[b].write_table, t)

    # The writer thread stops (its write finished) before any writer closes, even on an error.
    with contextlib.ExitStack() as closing, _OneAtATime() as writing:
        for part in parts:
            members = (part.start, part.stop) if part.start is not None else None
            try:
                for doc in iter_documents(part.path, skip_bad, members):
                    _count(out, doc)
                    if doc.failed or doc.table.num_rows == 0:
                        continue
                    b = bucket_of(doc.table.column("entity_id")[0].as_py(), buckets)
                    pending.setdefault(b, []).append(doc.table)
                    held["rows"] += doc.table.num_rows
                    while held["rows"] >= FLUSH_ROWS:
                        flush(max(pending, key=lambda k: sum(t.num_rows for t in pending[k])))
            except IngestError as e:
                if not skip_bad:
                    raise
                out.skipped_documents.append(str(e))
        for b in sorted(pending):
            flush(b)
        writing.wait()
    out.seconds = time.perf_counter() - t0
    return out


class _OneAtATime:
    """Calls run on a thread, one at a time: `submit` waits for the previous one (and raises its
    error), so at most one call's arguments are held beside the caller's."""

    def __enter__(self) -> _OneAtATime:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-write")
        self.last: Future | None = None
        return self

    def submit(self, fn, *args) -> None:
        self.wait()
        self.last = self.pool.submit(fn, *args)

    def wait(self) -> None:
        if self.last is not None:
            last, self.last = self.last, None
            last.result()

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)


def _count(out: UnitResult, doc) -> None:
    out.skipped_examples += [str(e) for e in doc.skipped[: max(0, MAX_EXAMPLES - len(out.skipped_examples))]]
    if doc.failed:
        out.skipped_documents.append(str(doc.skipped[0]))
        return
    out.documents += 1
    out.skipped_records += len(doc.skipped)
    out.rows += doc.table.num_rows
    for key, (label, desc) in doc.pair_meta.items():
        if key not in out.pair_meta or (out.pair_meta[key][0] is None and label):
            out.pair_meta[key] = (label, desc)


def merge_pair_meta(results: list[UnitResult]) -> dict:
    """Pair labels over all units in input order: the first label seen wins, as in one pass."""
    meta: dict = {}
    for r in results:
        for key, (label, desc) in r.pair_meta.items():
            if key not in meta or (meta[key][0] is None and label):
                meta[key] = (label, desc)
    return meta
