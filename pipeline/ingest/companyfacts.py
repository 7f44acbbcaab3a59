"""SEC companyfacts documents → the store's raw rows, column by column.

    {"cik", "entityName", "facts": {taxonomy: {concept: {"label", "description",
                                                          "units": {unit: [fact, …]}}}}}

Two parsers, one result (`Document`):
  - `parse_companyfacts`: the whole document with orjson (json for what orjson refuses; what
    nearly every SEC document gets: they are a few MB).
  - `parse_companyfacts_stream`: documents over STREAM_BYTES are read as a stream of JSON events
    (ijson's C parser) and only one concept at a time is built as Python objects; its rows go into
    Arrow record batches every BATCH_ROWS facts. Peak memory: one concept plus the document's rows
    in Arrow (about a tenth of its JSON text), never its whole object tree.
Both hand each concept to `FactColumns`, which moves a batch of fact lists into Arrow at once (C++
conversions: 2.4 µs a fact with the parse, 4 µs before); a batch with anything unclean in it (a
fact missing 'end' or 'val', a value that is not a finite number, a field of the wrong type) is
re-read list by list and fact by fact, which names the first bad fact (and skips only the bad ones
under --skip-bad).
"""

from __future__ import annotations

import codecs
import itertools
import json
import math
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.store.layout import RAW_SCHEMA

MAX_TEXT_CHARS = 64 * 1024  # longest entity name, label or description
STREAM_BYTES = 32 * 1024 * 1024  # documents larger than this (uncompressed) are parsed as a stream
BATCH_ROWS = 100_000  # streamed rows go into an Arrow batch this often
MAX_DEPTH = 512  # JSON nested deeper than this is refused (json.loads stops near 1,000 anyway)
# The longest run of bytes without a '"' a streamed document may hold: any text we accept is shorter
# (MAX_TEXT_CHARS characters, at most 6 bytes each as \uXXXX escapes), and the parser's cost for
# one token that spans many reads grows with the square of its length.
MAX_UNQUOTED_BYTES = 1 << 20
FACT_FIELDS = ("start", "end", "fy", "fp", "form", "filed", "accn")
_NUMBER = (int, float)


class IngestError(UserError):
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


def short(e: Exception, limit: int = 300) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "…"


def text_field(value, source: str, where: str):
    """A name/label/description: a string (or absent) of at most MAX_TEXT_CHARS characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise IngestError(source, f"expected text, found {type(value).__name__}", where)
    if len(value) > MAX_TEXT_CHARS:
        raise IngestError(
            source, f"{len(value)} characters long, over the {MAX_TEXT_CHARS}-character limit", where
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON's \ud800 escapes decode to lone surrogates
            raise IngestError(
                source, "text holds a lone UTF-16 surrogate (not Unicode text)", where
            ) from None
    return value


def _number(val, source: str, where: str) -> float:
    if isinstance(val, bool) or not isinstance(val, _NUMBER):
        raise IngestError(source, f"value {val!r} is not a number", where)
    try:
        x = float(val)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise IngestError(source, f"value {val!r} is not finite", where)
    return x


class FactColumns:
    """The rows of one document, gathered a (concept, unit) list at a time and moved into Arrow a
    batch at a time.

    Fast path: a batch's fact dicts go to Arrow in two C++ conversions (their values, then their
    other fields as a struct), with the checks that keep it equal to the slow path. Anything the fast
    path does not accept as clean (a missing or non-numeric value, a null 'end', a field of the
    wrong type, …) sends the whole batch through the slow path, list by list and, for a list that is
    not clean, fact by fact: that names the first bad fact as it always did, and skips only the bad
    ones under --skip-bad."""

    def __init__(self, source: str, skip_bad: bool):
        self.source, self.skip_bad = source, skip_bad
        self.skipped: list[IngestError] = []
        self.meta: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self._texts: dict[str, tuple[str | None, str | None]] = {}  # concept -> checked (label, desc)
        self.batches: list[pa.RecordBatch] = []
        self.pending: list[tuple[str, str, str, object]] = []  # (taxonomy, concept, unit, facts)
        self.rows = 0  # facts pending (before any is skipped)

    def add_concept(self, taxonomy: str, concept: str, body) -> None:
        """Every fact of one concept; checks the concept's shape and texts as the SEC format has them
        (its facts are checked when the batch is flushed)."""
        src = self.source
        where = f"concept {taxonomy}:{concept}"
        try:
            units = body.get("units") if isinstance(body, dict) else None
            if not isinstance(units, dict):
                raise IngestError(src, "concept has no 'units' object", where)
            if concept not in self._texts:  # check each concept's texts once
                self._texts[concept] = (
                    text_field(body.get("label"), src, f"{where} label"),
                    text_field(body.get("description"), src, f"{where} description"),
                )
                text_field(concept, src, where)
            for unit, facts in units.items():
                text_field(unit, src, f"{where} unit")
                self.meta.setdefault((concept, unit), self._texts[concept])
                self.pending.append((taxonomy, concept, unit, facts))
                self.rows += len(facts) if isinstance(facts, list) else 1
        except IngestError:
            self._slow_batch()  # a bad fact read before this text is the document's first error
            raise

    def flush(self) -> None:
        """Move the facts gathered so far into an Arrow batch (entity columns are added at the end)."""
        if self.pending:
            batch = self._fast_batch()
            if batch is None:
                self._slow_batch()
            else:
                self.batches.append(batch)
                self.pending, self.rows = [], 0

    # ---- the fast path: a batch at a time --------------------------------------------------------
    def _fast_batch(self) -> pa.RecordBatch | None:
        """The pending facts as one batch, or None when any of them needs the slow path."""
        lists = self.pending
        if not all(type(facts) is list for *_, facts in lists):
            return None
        flat = list(itertools.chain.from_iterable(facts for *_, facts in lists))
        try:
            vals = pa.array([f["val"] for f in flat])  # ints and floats only: a bool is not a number
            fields = pa.array(flat, _FACT_STRUCT)
        except (TypeError, KeyError, UnicodeEncodeError, pa.ArrowException):
            return None
        if vals.null_count or not (pa.types.is_int64(vals.type) or pa.types.is_float64(vals.type)):
            return None
        values = vals.cast(pa.float64(), safe=False)  # ints round to the nearest double, as np.float64
        if fields.field("end").null_count or not pc.all(pc.is_finite(values)).as_py():
            return None  # a missing or null 'end', or a non-finite value: the slow path says which
        which = np.repeat(np.arange(len(lists)), [len(facts) for *_, facts in lists])
        names = {
            k: ([entry[i] for entry in lists], which) for i, k in enumerate(("taxonomy", "concept", "unit"))
        }
        try:
            return _batch(names, values, {k: fields.field(k) for k in FACT_FIELDS})
        except IngestError:
            return None

    # ---- the slow path: a list, then a fact, at a time -----------------------------------------
    def _slow_batch(self) -> None:
        cols: dict[str, list] = {k: [] for k in ("taxonomy", "concept", "unit", "value", *FACT_FIELDS)}
        pending, self.pending, self.rows = self.pending, [], 0
        for taxonomy, concept, unit, facts in pending:
            clean = _clean_columns(facts)
            if clean is None:
                clean = self._checked_columns(taxonomy, concept, unit, facts)
            values, fact_cols = clean
            n = len(values)
            cols["taxonomy"] += [taxonomy] * n
            cols["concept"] += [concept] * n
            cols["unit"] += [unit] * n
            cols["value"].append(values)
            for k in FACT_FIELDS:
                cols[k] += fact_cols[k]
        if cols["taxonomy"]:
            names = {k: (cols[k], None) for k in ("taxonomy", "concept", "unit")}
            fields = {k: cols[k] for k in FACT_FIELDS}
            self.batches.append(_batch(names, pa.array(np.concatenate(cols["value"])), fields, self.source))

    def _checked_columns(self, taxonomy: str, concept: str, unit: str, facts):
        """Fact by fact: the first bad fact raises (or, with skip_bad, each bad one is skipped)."""
        values, cols = [], {k: [] for k in FACT_FIELDS}
        for i, fact in enumerate(facts if isinstance(facts, list) else [None]):
            where = f"concept {taxonomy}:{concept} unit {unit} fact {i}"
            try:
                if not isinstance(fact, dict) or "end" not in fact or "val" not in fact:
                    raise IngestError(self.source, "fact needs 'end' and 'val'", where)
                values.append(_number(fact["val"], self.source, where))
            except IngestError as e:
                if not self.skip_bad:
                    raise
                self.skipped.append(e)
                continue
            for k in FACT_FIELDS:
                cols[k].append(fact.get(k))
        return np.array(values, dtype=np.float64), cols

    def document(self, entity_id: str, name: str | None) -> Document:
        self.flush()
        tables = []
        for b in self.batches:
            n = b.num_rows
            cols = {"entity_id": pa.array([entity_id] * n, pa.string()), "entity_name": pa.array([name] * n)}
            cols.update({k: b.column(k) for k in b.schema.names})
            tables.append(pa.Table.from_pydict(cols).select(RAW_SCHEMA.names).cast(RAW_SCHEMA))
        table = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
        return Document(self.source, table, self.meta, self.skipped)


_FACT_TYPES = {"start": pa.string(), "end": pa.string(), "fy": pa.int32(), "fp": pa.string(),
               "form": pa.string(), "filed": pa.string(), "accn": pa.string()}  # fmt: skip
_FACT_STRUCT = pa.struct([(k, _FACT_TYPES[k]) for k in FACT_FIELDS])
_COLUMN = {"start": "period_start", "end": "period_end", "filed": "filed"}  # the dates


def _batch(names: dict, values: pa.Array, fields: dict, source: str = "") -> pa.RecordBatch:
    """One batch of raw rows (without the entity columns) from its columns: `names` maps taxonomy,
    concept and unit to (texts, row -> text index or None), `fields` the facts' fields to Python
    lists or Arrow arrays. A field of the wrong type or a date that does not parse is bad input."""
    cols = {}
    try:
        for k, (texts, which) in names.items():
            cols[k] = (
                pa.array(texts, pa.string()) if which is None else pa.array(texts, pa.string()).take(which)
            )
        cols["value"] = values
        for k in FACT_FIELDS:  # in the order the first bad field is named
            col = pa.array(fields[k], _FACT_TYPES[k]) if isinstance(fields[k], list) else fields[k]
            cols[_COLUMN.get(k, k)] = col.cast(pa.date32()) if k in _COLUMN else col
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as e:
        raise IngestError(source, f"bad field value: {e}") from e
    return pa.RecordBatch.from_pydict(cols)


def _clean_columns(facts):
    """(values, columns) of a list of well-formed facts, or None when any fact needs a closer look."""
    if not isinstance(facts, list):
        return None
    try:
        vals = [f["val"] for f in facts]
        cols = {"end": [f["end"] for f in facts]}
    except (TypeError, KeyError):
        return None
    if not all(type(v) in _NUMBER for v in vals):  # type(): bool is not a number here
        return None
    try:
        values = np.array(vals, dtype=np.float64)
    except (OverflowError, ValueError):
        return None
    if not np.isfinite(values).all():
        return None
    for k in FACT_FIELDS:
        if k != "end":
            cols[k] = [f.get(k) for f in facts]
    return values, cols


def _loads(data: bytes | str, source: str):
    """The JSON value of a document: orjson's parser for UTF-8 without a BOM (what SEC serves; 1.2x
    json's speed on SEC's documents, 2x on synthetic ones), json's for anything orjson refuses
    (other encodings, NaN, a lone surrogate, a number past a double, bad JSON), so that what is
    accepted and every error message stay json's."""
    if isinstance(data, bytes):
        encoding = json.detect_encoding(data)
        if encoding == "utf-8":  # with a BOM it is "utf-8-sig", which orjson refuses
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
        try:  # as text, so that json's error positions count characters
            data = data.decode(encoding, "surrogatepass")
        except UnicodeDecodeError as e:
            raise IngestError(source, f"invalid JSON: not UTF-8/16/32 text ({short(e)})") from e
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise IngestError(source, f"invalid JSON: {short(e)}") from e
    except RecursionError:
        raise IngestError(source, "invalid JSON: nested too deeply") from None


def _entity(doc_cik, source: str) -> str:
    try:
        return f"{int(doc_cik):010d}"
    except (TypeError, ValueError) as e:
        raise IngestError(source, f"cik {doc_cik!r} is not an integer") from e


def parse_companyfacts(data: bytes | str, source: str, skip_bad: bool = False) -> Document:
    """One SEC companyfacts document, parsed whole."""
    doc = _loads(data, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("facts"), dict) or "cik" not in doc:
        raise IngestError(source, "not a companyfacts document (needs 'cik' and a 'facts' object)")
    entity_id = _entity(doc["cik"], source)
    name = text_field(doc.get("entityName"), source, "entityName")
    cols = FactColumns(source, skip_bad)
    for taxonomy, concepts in doc["facts"].items():
        if not isinstance(concepts, dict):
            raise IngestError(source, "taxonomy is not an object", f"taxonomy {taxonomy}")
        for concept, body in concepts.items():
            cols.add_concept(taxonomy, concept, body)
    return cols.document(entity_id, name)


# ---- the streaming parser -----------------------------------------------------------------------
class _Utf8Reader:
    """A binary file in UTF-16/32 (or UTF-8 with a BOM) read back as UTF-8 bytes, for ijson."""

    def __init__(self, f, encoding: str):
        self.f = f
        self.decoder = codecs.getincrementaldecoder(encoding)(errors="surrogatepass")

    def read(self, n: int = 1 << 16) -> bytes:
        if n == 0:  # ijson asks for 0 bytes to learn whether the file gives bytes or text
            return b""
        while True:
            chunk = self.f.read(n if n and n > 0 else 1 << 16)
            out = self.decoder.decode(chunk, final=not chunk).encode("utf-8", "surrogatepass")
            if out or not chunk:
                return out


class _TokenGuard:
    """Fails a stream that runs MAX_UNQUOTED_BYTES without a '"' (no valid text or number is that long)."""

    def __init__(self, f, source: str):
        self.f, self.source, self.run = f, source, 0

    def read(self, n: int = 1 << 16) -> bytes:
        data = self.f.read(n)
        last = data.rfind(b'"')
        self.run = self.run + len(data) if last < 0 else len(data) - 1 - last
        if self.run > MAX_UNQUOTED_BYTES:
            raise IngestError(
                self.source,
                f"a JSON value runs over {MAX_UNQUOTED_BYTES} bytes: over the {MAX_TEXT_CHARS}-character "
                "limit for texts (and longer than any number)",
            )
        return data


def _events(f, source: str):
    """(event, value) pairs of ijson's basic parser (no prefixes: their length grows with depth)."""
    import ijson

    head = f.peek(4)[:4] if hasattr(f, "peek") else b""
    enc = json.detect_encoding(head) if head else "utf-8"
    if enc != "utf-8" or head.startswith(codecs.BOM_UTF8):
        f = _Utf8Reader(f, "utf-8-sig" if enc == "utf-8" else enc)
    f = _TokenGuard(f, source)
    depth = 0
    try:
        for event, value in ijson.basic_parse(f, use_float=True, buf_size=1 << 16):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    raise IngestError(source, "invalid JSON: nested too deeply")
            elif event in ("end_map", "end_array"):
                depth -= 1
            yield event, value
    except ijson.JSONError as e:
        detail = e.args[0] if e.args else e
        detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        raise IngestError(source, f"invalid JSON: {short(ValueError(' '.join(detail.split())))}") from None


def _build(events, first_event: str, first_value):
    """The value that starts with (first_event, first_value), built from the following events."""
    import ijson

    if first_event not in ("start_map", "start_array"):
        return first_value
    builder = ijson.ObjectBuilder()
    builder.event(first_event, first_value)
    depth = 1
    for event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                break
    return builder.value


def _map_items(events):
    """(key, first event, first value) of each member of the map whose start_map was just read;
    the caller consumes each member's value before asking for the next."""
    for event, value in events:
        if event == "end_map":
            return
        key = value  # a map_key
        event, value = next(events)
        yield key, event, value


def parse_companyfacts_stream(f, source: str, skip_bad: bool = False) -> Document:
    """One SEC companyfacts document from a binary file object, one concept at a time."""
    events = _events(f, source)
    not_companyfacts = "not a companyfacts document (needs 'cik' and a 'facts' object)"
    event, value = next(events, (None, None))
    if event != "start_map":
        for _ in events:  # read it through: bad JSON, nesting or size is named as such
            pass
        raise IngestError(source, not_companyfacts)
    cols = FactColumns(source, skip_bad)
    top: dict = {}  # the top-level values other than "facts" (True once facts were read)
    for key, event, value in _map_items(events):
        if key == "facts" and event == "start_map":
            top["facts"] = True
            for taxonomy, event, value in _map_items(events):
                if event != "start_map":
                    _build(events, event, value)
                    raise IngestError(source, "taxonomy is not an object", f"taxonomy {taxonomy}")
                for concept, event, value in _map_items(events):
                    cols.add_concept(taxonomy, concept, _build(events, event, value))
                    if cols.rows >= BATCH_ROWS:
                        cols.flush()
        else:
            top[key] = _build(events, event, value)
    for _ in events:  # trailing garbage after the document is still an error
        pass
    if top.get("facts") is not True or "cik" not in top:
        raise IngestError(source, not_companyfacts)
    entity_id = _entity(top["cik"], source)
    name = text_field(top.get("entityName"), source, "entityName")
    return cols.document(entity_id, name)
