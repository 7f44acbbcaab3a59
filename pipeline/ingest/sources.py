"""Readers for what `tunestack ingest` accepts, each yielding one document at a time.

A *document* is one company's facts (a companyfacts JSON, one member of SEC's bulk zip, or one
narrative wide CSV) as a columnar Arrow table in the store's raw schema, plus the label and
description of each (concept, unit) pair it mentions. Memory is bounded by the largest document,
never by the number of inputs.

Hostile input is refused before it can exhaust memory:
  - a document (a .json file, a .json.gz or zip member once inflated, a .csv) is read only up to
    MAX_DOCUMENT_BYTES; one past that fails (a gzip or zip bomb stops there, a zip member whose
    header says more is refused unread). A JSON document up to STREAM_BYTES is parsed whole (peak
    memory about twice its size); a larger one as a stream, one concept at a time
    (pipeline/ingest/companyfacts.py);
  - a CSV is read line by line, each line at most MAX_LINE_BYTES (a 100 MB line fails after 8 MiB);
  - labels, descriptions and names longer than MAX_TEXT_CHARS, and JSON nested too deeply, fail;
  - zip member names that are absolute, hold a drive letter or a '..' part are refused (nothing
    is ever extracted to disk).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.ingest.companyfacts import (
    MAX_TEXT_CHARS,
    STREAM_BYTES,
    Document,
    IngestError,
    parse_companyfacts,
    parse_companyfacts_stream,
)
from pipeline.ingest.companyfacts import short as _short
from pipeline.ingest.companyfacts import text_field as _text
from pipeline.store.layout import RAW_SCHEMA

__all__ = [
    "Document",
    "IngestError",
    "MAX_TEXT_CHARS",
    "expand_inputs",
    "iter_documents",
    "parse_companyfacts",
]

MAX_DOCUMENT_BYTES = 512 * 1024 * 1024  # largest (uncompressed) document read: zip/gzip-bomb guard
MAX_LINE_BYTES = 8 * 1024 * 1024  # longest CSV line
CSV_META = ("fy", "fp", "form", "filed", "accn")


def expand_inputs(paths: list[str]) -> list[str]:
    """Files to read, in a stable order: folders are walked for .json/.json.gz/.csv/.zip."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and _kind(str(f)) is not None)
            if not found:
                raise IngestError(p, "folder holds no .json, .json.gz, .csv or .zip files")
            out.extend(found)
        elif os.path.isfile(p):
            if _kind(p) is None:
                raise IngestError(p, "unsupported file type (expected .json, .json.gz, .csv or .zip)")
            out.append(p)
        else:
            raise IngestError(p, "no such file or folder" if not os.path.lexists(p) else "unreadable path")
    return out


@dataclass(frozen=True)
class Part:
    """A slice of the input: a whole file, or the members [start, stop) of a zip archive."""

    path: str
    start: int | None = None
    stop: int | None = None
    bytes: int = 0  # its documents' size (uncompressed when known): for planning and progress


def split_inputs(files: list[str], unit_bytes: int) -> list[list[Part]]:
    """The inputs cut into units of about `unit_bytes` of documents each, in input order: a zip's
    members are spread over as many units as they fill, small files share a unit."""
    units: list[list[Part]] = [[]]
    size = 0

    def add(part: Part) -> None:
        nonlocal size
        if units[-1] and size + part.bytes > unit_bytes:
            units.append([])
            size = 0
        units[-1].append(part)
        size += part.bytes

    for path in files:
        if _kind(path) != "zip":
            factor = 8 if _kind(path) == "json.gz" else 1  # gzip: a guess until it is inflated
            add(Part(path, bytes=factor * os.path.getsize(path)))
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (OSError, zipfile.BadZipFile) as e:
            raise IngestError(path, f"cannot read: {e}") from e
        start, acc = 0, 0
        for i, info in enumerate(infos):
            # Only documents that will be read count (one over the cap is refused unread).
            if info.filename.lower().endswith(".json") and info.file_size <= MAX_DOCUMENT_BYTES:
                acc += info.file_size
            if acc >= unit_bytes or i == len(infos) - 1:
                add(Part(path, start, i + 1, acc))
                start, acc = i + 1, 0
        if not infos:
            add(Part(path, 0, 0, 0))
    return [u for u in units if u]


def iter_documents(path: str, skip_bad: bool, members: tuple[int, int] | None = None) -> Iterator[Document]:
    """Parse one input file into documents (a zip yields one per member, of `members` [start, stop)
    only when given)."""
    kind = _kind(path)
    try:
        if kind == "zip":
            yield from _iter_zip(path, skip_bad, members)
        elif kind == "csv":
            _check_size(path)
            with open(path, "rb") as f:
                yield parse_narrative_csv(f, path, skip_bad)
        else:
            yield _json_document(path, kind, skip_bad)
    except IngestError:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise IngestError(path, f"cannot read: {e}") from e


def _json_document(path: str, kind: str, skip_bad: bool) -> Document:
    """A .json or .json.gz document: parsed whole up to STREAM_BYTES, as a stream beyond."""
    if kind == "json":
        _check_size(path)
    opener = gzip.open if kind == "json.gz" else open
    with opener(path, "rb") as f:
        data = f.read(STREAM_BYTES + 1)
        if len(data) <= STREAM_BYTES:
            return parse_companyfacts(data, path, skip_bad)
    del data
    with opener(path, "rb") as f:
        return parse_companyfacts_stream(_Bounded(f, path), path, skip_bad)


class _Bounded:
    """A binary file that fails once more than MAX_DOCUMENT_BYTES were read from it."""

    def __init__(self, f, source: str):
        self.f, self.source, self.read_bytes = f, source, 0

    def peek(self, n: int) -> bytes:
        return self.f.peek(n)

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        data = self.f.read(min(n, MAX_DOCUMENT_BYTES + 1) if n and n > 0 else MAX_DOCUMENT_BYTES + 1)
        self.read_bytes += len(data)
        if self.read_bytes > MAX_DOCUMENT_BYTES:
            raise IngestError(self.source, f"document inflates past the {MAX_DOCUMENT_BYTES}-byte limit")
        return data


def _check_size(path: str) -> None:
    size = os.path.getsize(path)
    if size > MAX_DOCUMENT_BYTES:
        raise IngestError(path, f"file is {size} bytes, over the {MAX_DOCUMENT_BYTES}-byte document limit")


def _read_bounded(f, source: str) -> bytes:
    data = f.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise IngestError(source, f"document inflates past the {MAX_DOCUMENT_BYTES}-byte limit")
    return data


def _unsafe_name(name: str) -> bool:
    """Absolute, drive-lettered or '..' member names (either slash): never used as paths here, but refused."""
    norm = name.replace("\\", "/")
    return norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/")


def _kind(path: str) -> str | None:
    low = path.lower()
    for ext in ("json.gz", "json", "csv", "zip"):
        if low.endswith("." + ext):
            return ext
    return None


def _iter_zip(path: str, skip_bad: bool, members: tuple[int, int] | None) -> Iterator[Document]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos[slice(*members)] if members else infos:
            if info.is_dir():
                continue
            name = info.filename
            source = f"{path}!{name}"
            if _unsafe_name(name):
                raise IngestError(source, "unsafe member name (absolute, drive or '..' path)")
            if not name.lower().endswith(".json"):
                continue
            if info.file_size > MAX_DOCUMENT_BYTES:
                raise IngestError(
                    source,
                    f"member is {info.file_size} bytes uncompressed, over the "
                    f"{MAX_DOCUMENT_BYTES}-byte document limit",
                )
            try:
                with zf.open(info) as f:  # zipfile stops at the declared size and checks the CRC
                    if info.file_size > STREAM_BYTES:
                        doc = parse_companyfacts_stream(_Bounded(f, source), source, skip_bad)
                    else:
                        doc = parse_companyfacts(_read_bounded(f, source), source, skip_bad)
                yield doc
            except IngestError as e:
                if not skip_bad:
                    raise
                # --skip-bad drops just this company, not the rest of the archive.
                yield Document(source, RAW_SCHEMA.empty_table(), {}, [e], failed=True)


class _Columns:
    """Row-by-row accumulation of raw rows (narrative CSV)."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in RAW_SCHEMA}

    def add(self, **row) -> None:
        for k, col in self.cols.items():
            col.append(row.get(k))

    def table(self, source: str) -> pa.Table:
        try:
            arrays = []
            for f in RAW_SCHEMA:
                vals = self.cols[f.name]
                if pa.types.is_date32(f.type):
                    arrays.append(pa.array(vals, pa.string()).cast(pa.date32()))
                else:
                    arrays.append(pa.array(vals, f.type))
            return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise IngestError(source, f"bad field value: {e}") from e


def _lines(f, source: str):
    """Decoded lines of a binary file, each at most MAX_LINE_BYTES (so a huge line is never read whole)."""
    for line_no in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise IngestError(source, f"line longer than the {MAX_LINE_BYTES}-byte limit", f"line {line_no}")
        try:
            yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise IngestError(source, f"not UTF-8 text: {e}", f"line {line_no}") from e


def parse_narrative_csv(data, source: str, skip_bad: bool = False) -> Document:
    """narrative_stack's wide CSV: one row per filing, one column per concept, cells `VALUE::UNIT`.

    `data`: the file's bytes or a binary file object (read line by line, each line bounded).
    The entity is the file's stem (e.g. AAPL). Rows carry no period, so they de-duplicate on
    entity/concept/unit/accession.
    """
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    reader = csv.reader(_lines(f, source))
    try:
        return _parse_csv_rows(reader, source, skip_bad)
    except csv.Error as e:
        raise IngestError(source, f"bad CSV: {e}", f"line {reader.line_num}") from e


def _parse_csv_rows(reader, source: str, skip_bad: bool) -> Document:
    header = next(reader, None)
    if not header or any(m not in header for m in CSV_META):
        raise IngestError(source, f"header must contain the columns {', '.join(CSV_META)}", "line 1")
    idx = {m: header.index(m) for m in CSV_META}
    concept_cols = [(i, _text(c, source, "line 1")) for i, c in enumerate(header) if c not in CSV_META]
    ticker = Path(source.split("!")[-1]).name.split(".")[0].upper()
    cols, meta, skipped = _Columns(), {}, []
    for row in reader:
        line_no = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            err = IngestError(source, f"{len(row)} cells, header has {len(header)}", f"line {line_no}")
            if not skip_bad:
                raise err
            skipped.append(err)
            continue
        fy = row[idx["fy"]].strip()
        for i, concept in concept_cols:
            cell = row[i].strip()
            if not cell:
                continue
            where = f"line {line_no}, concept {concept}"
            try:
                raw, sep, unit = cell.rpartition("::")
                if not sep or not raw or not unit:
                    raise IngestError(source, f"cell {_short(cell, 80)!r} is not VALUE::UNIT", where)
                try:
                    value = float(raw)
                except ValueError:
                    raise IngestError(source, f"value {_short(raw, 80)!r} is not a number", where) from None
                if not math.isfinite(value):
                    raise IngestError(source, f"value {raw!r} is not finite", where)
            except IngestError as e:
                if not skip_bad:
                    raise
                skipped.append(e)
                continue
            meta.setdefault((concept, unit), (None, None))
            cols.add(
                entity_id=f"ticker:{ticker}",
                entity_name=ticker,
                taxonomy=None,
                concept=concept,
                unit=unit,
                value=value,
                period_start=None,
                period_end=None,
                fy=int(fy) if fy.lstrip("-").isdigit() else None,
                fp=row[idx["fp"]] or None,
                form=row[idx["form"]] or None,
                filed=row[idx["filed"]] or None,
                accn=row[idx["accn"]] or None,
            )
    return Document(source, cols.table(source), meta, skipped)
