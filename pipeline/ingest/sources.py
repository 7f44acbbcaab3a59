"""Readers for what `tunestack ingest` accepts, each yielding one document at a time.

A *document* is one company's facts (a companyfacts JSON, one member of SEC's bulk zip, or one
narrative wide CSV) as a columnar Arrow table in the store's raw schema, plus the label and
description of each (concept, unit) pair it mentions. Memory is bounded by the largest document,
never by the number of inputs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline.store.layout import RAW_SCHEMA

MAX_MEMBER_BYTES = 512 * 1024 * 1024  # zip-bomb guard: largest uncompressed document we read
CSV_META = ("fy", "fp", "form", "filed", "accn")


class IngestError(Exception):
    """Bad input: names the file, and the line or concept when known."""

    def __init__(self, source: str, detail: str, where: str | None = None):
        self.source, self.detail, self.where = source, detail, where
        super().__init__(f"{source}{f' ({where})' if where else ''}: {detail}")


@dataclass
class Document:
    source: str
    table: pa.Table
    pair_meta: dict[tuple[str, str], tuple[str | None, str | None]]
    skipped: list[IngestError] = field(default_factory=list)
    failed: bool = False  # the whole document was skipped (--skip-bad)


def expand_inputs(paths: list[str]) -> list[str]:
    """Files to read, in a stable order: folders are walked for .json/.json.gz/.csv/.zip."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(
                str(f) for f in Path(p).rglob("*") if f.is_file() and _kind(str(f)) is not None
            )
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


def iter_documents(path: str, skip_bad: bool) -> Iterator[Document]:
    """Parse one input file into documents (a zip yields one per member)."""
    kind = _kind(path)
    try:
        if kind == "zip":
            yield from _iter_zip(path, skip_bad)
        elif kind == "csv":
            with open(path, "rb") as f:
                yield parse_narrative_csv(f.read(), path, skip_bad)
        else:
            opener = gzip.open if kind == "json.gz" else open
            with opener(path, "rb") as f:
                data = f.read()
            yield parse_companyfacts(data, path, skip_bad)
    except IngestError:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise IngestError(path, f"cannot read: {e}") from e


def _kind(path: str) -> str | None:
    low = path.lower()
    for ext in ("json.gz", "json", "csv", "zip"):
        if low.endswith("." + ext):
            return ext
    return None


def _iter_zip(path: str, skip_bad: bool) -> Iterator[Document]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            source = f"{path}!{name}"
            if name.startswith("/") or ".." in name.split("/"):
                raise IngestError(source, "unsafe member name (absolute or '..' path)")
            if not name.lower().endswith(".json"):
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise IngestError(source, f"member is {info.file_size} bytes uncompressed, over {MAX_MEMBER_BYTES}")
            with zf.open(info) as f:
                data = f.read(MAX_MEMBER_BYTES + 1)
            if len(data) > MAX_MEMBER_BYTES:
                raise IngestError(source, f"member inflates past {MAX_MEMBER_BYTES} bytes")
            try:
                yield parse_companyfacts(data, source, skip_bad)
            except IngestError as e:
                if not skip_bad:
                    raise
                # --skip-bad drops just this company, not the rest of the archive.
                yield Document(source, RAW_SCHEMA.empty_table(), {}, [e], failed=True)


class _Columns:
    """Column-wise accumulation of raw rows for one document."""

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


def _number(val, source: str, where: str) -> float:
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise IngestError(source, f"value {val!r} is not a number", where)
    x = float(val)
    if not math.isfinite(x):
        raise IngestError(source, f"value {val!r} is not finite", where)
    return x


def parse_companyfacts(data: bytes, source: str, skip_bad: bool = False) -> Document:
    """One SEC companyfacts document: {"cik", "entityName", "facts": {taxonomy: {concept: …}}}."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise IngestError(source, f"invalid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("facts"), dict) or "cik" not in doc:
        raise IngestError(source, "not a companyfacts document (needs 'cik' and a 'facts' object)")
    try:
        entity_id = f"{int(doc['cik']):010d}"
    except (TypeError, ValueError) as e:
        raise IngestError(source, f"cik {doc['cik']!r} is not an integer") from e
    name = doc.get("entityName")
    cols, meta, skipped = _Columns(), {}, []
    for taxonomy, concepts in doc["facts"].items():
        if not isinstance(concepts, dict):
            raise IngestError(source, "taxonomy is not an object", f"taxonomy {taxonomy}")
        for concept, body in concepts.items():
            units = body.get("units") if isinstance(body, dict) else None
            if not isinstance(units, dict):
                raise IngestError(source, "concept has no 'units' object", f"concept {taxonomy}:{concept}")
            for unit, facts in units.items():
                meta.setdefault((concept, unit), (body.get("label"), body.get("description")))
                for i, fact in enumerate(facts if isinstance(facts, list) else [None]):
                    where = f"concept {taxonomy}:{concept} unit {unit} fact {i}"
                    try:
                        if not isinstance(fact, dict) or "end" not in fact or "val" not in fact:
                            raise IngestError(source, "fact needs 'end' and 'val'", where)
                        value = _number(fact["val"], source, where)
                    except IngestError as e:
                        if not skip_bad:
                            raise
                        skipped.append(e)
                        continue
                    cols.add(
                        entity_id=entity_id, entity_name=name, taxonomy=taxonomy, concept=concept,
                        unit=unit, value=value, period_start=fact.get("start"), period_end=fact["end"],
                        fy=fact.get("fy"), fp=fact.get("fp"), form=fact.get("form"),
                        filed=fact.get("filed"), accn=fact.get("accn"),
                    )
    return Document(source, cols.table(source), meta, skipped)


def parse_narrative_csv(data: bytes, source: str, skip_bad: bool = False) -> Document:
    """narrative_stack's wide CSV: one row per filing, one column per concept, cells `VALUE::UNIT`.

    The entity is the file's stem (e.g. AAPL). Rows carry no period, so they de-duplicate on
    entity/concept/unit/accession.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(source, f"not UTF-8 text: {e}") from e
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or any(m not in header for m in CSV_META):
        raise IngestError(source, f"header must contain the columns {', '.join(CSV_META)}", "line 1")
    idx = {m: header.index(m) for m in CSV_META}
    concept_cols = [(i, c) for i, c in enumerate(header) if c not in CSV_META]
    ticker = Path(source.split("!")[-1]).name.split(".")[0].upper()
    cols, meta, skipped = _Columns(), {}, []
    for line_no, row in enumerate(reader, start=2):
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
                    raise IngestError(source, f"cell {cell!r} is not VALUE::UNIT", where)
                try:
                    value = float(raw)
                except ValueError:
                    raise IngestError(source, f"value {raw!r} is not a number", where) from None
                if not math.isfinite(value):
                    raise IngestError(source, f"value {raw!r} is not finite", where)
            except IngestError as e:
                if not skip_bad:
                    raise
                skipped.append(e)
                continue
            meta.setdefault((concept, unit), (None, None))
            cols.add(
                entity_id=f"ticker:{ticker}", entity_name=ticker, taxonomy=None, concept=concept,
                unit=unit, value=value, period_start=None, period_end=None,
                fy=int(fy) if fy.lstrip("-").isdigit() else None, fp=row[idx["fp"]] or None,
                form=row[idx["form"]] or None, filed=row[idx["filed"]] or None, accn=row[idx["accn"]] or None,
            )
    return Document(source, cols.table(source), meta, skipped)
