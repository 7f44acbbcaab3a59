"""Phases B and D of ingest for one partition (a hash bucket of entities), in bounded memory.

B `dedupe_partition`: the partition's new raw rows (phase A's files) and, when the partition is
  already in the store, its live rows are merged and de-duplicated: one fact per entity, taxonomy,
  concept, unit, start and end (or accession, for rows without a period), the latest filing wins.
  Returns per-pair counts and a value sample (for fitting the scalers of new pairs).
D `write_partition`: the de-duplicated rows get pair id, scaled value and fold, sorted by entity,
  pair and period (FINAL_ORDER), written in row groups; returns the file's size, sha256 and rows.

Memory: a fact's duplicates all belong to one entity, so a partition is processed in chunks of
whole entities, contiguous ranges of entity ids of at most `chunk_rows` rows (input rows for B),
each read with a filter (the live file is sorted by entity, so its row-group statistics skip what
a chunk does not need). The de-duplicated file (scratch.py) holds one record batch per chunk,
which D reads back one at a time, so neither phase ever holds more than a chunk, whatever the
partition's size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.ingest import scratch
from pipeline.storage import Location
from pipeline.store.layout import RAW_SCHEMA, TRIPLET_SCHEMA, fold_of
from pipeline.store.scaler import PairScaler, scale_by_pair

DEDUP_KEYS = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn_key"]
SAMPLE_KEY = ["entity_id", "concept", "unit", "period_start", "period_end", "accn"]
SCALER_SAMPLE = 20_000  # values kept per pair for fitting (a uniform sample beyond that)
BYTES_PER_ROW = 600  # peak memory per input row while a chunk is sorted and de-duplicated (measured: ~450)
DEFAULT_MEMORY_LIMIT = 2 * 1024**3  # bytes of rows held at once by a machine's de-duplication tasks
MIN_CHUNK_ROWS = 10_000
# The final files' row order: entity, pair, period, then the rest of a fact's key (DEDUP_KEYS), so
# that no two rows tie and the same rows give the same bytes in whatever order they arrive (a hash
# join before the sort once returned them in an order that varied from run to run).
FINAL_ORDER = [
    (c, "ascending") for c in ("entity_id", "pair_id", "period_end", "period_start", "taxonomy", "accn")
]


def chunk_rows_for(memory_limit: int, slots: int) -> int:
    """Input rows per chunk so that `slots` tasks running at once hold at most `memory_limit`."""
    return max(MIN_CHUNK_ROWS, memory_limit // max(1, slots) // BYTES_PER_ROW)


@dataclass
class DedupeResult:
    part: int
    rows_old: int = 0  # the partition's live rows read
    rows_after: int = 0
    entities_old: int = 0
    entities: int = 0
    chunks: int = 0
    counts_old: dict = field(default_factory=dict)  # (concept, unit) -> the live rows of the partition
    counts: dict = field(default_factory=dict)  # (concept, unit) -> rows after de-duplication
    sample: dict = field(
        default_factory=dict
    )  # (concept, unit) -> (prio, value): the SCALER_SAMPLE smallest prio


def dedupe_partition(
    loc: Location,
    staged: str,
    part: int,
    raw_files: dict[str, int],
    old_file: str | None,
    out_file: str,
    chunk_rows: int,
) -> DedupeResult:
    """Merge and de-duplicate one partition into `staged`/`out_file` (one record batch per chunk).
    `raw_files` ({file: its rows}, phase A's scratch files) are relative to `staged`, `old_file`
    (the live version's Parquet file) to the store."""
    fs = loc.fs
    raw = [loc.join(staged, f) for f in raw_files]
    live = loc.join(old_file) if old_file else None
    out = DedupeResult(part)
    total = sum(raw_files.values()) + (pq.ParquetFile(live, filesystem=fs).metadata.num_rows if live else 0)
    ranges = _entity_ranges(fs, raw, live, chunk_rows) if total > chunk_rows else [(None, None)]
    out.chunks = len(ranges)
    with scratch.writer(fs, loc.join(staged, out_file)) as writer:
        for lo, hi in ranges:
            parts = [scratch.read(fs, f, lo, hi) for f in raw]
            if live:
                parts.append(_read_live(fs, live, lo, hi))
                old = parts[-1]
                out.rows_old += old.num_rows
                out.entities_old += len(pc.unique(old.column("entity_id")))
                _add_counts(out.counts_old, old)
            t = latest_per_fact(pa.concat_tables(parts))
            del parts
            scratch.write_chunk(writer, t)
            out.rows_after += t.num_rows
            out.entities += len(pc.unique(t.column("entity_id")))
            _add_counts(out.counts, t)
            merge_samples(out.sample, value_sample(t))
    return out


def _add_counts(counts: dict, t: pa.Table) -> None:
    for row in t.group_by(["concept", "unit"]).aggregate([("value", "count")]).to_pylist():
        key = (row["concept"], row["unit"])
        counts[key] = counts.get(key, 0) + row["value_count"]


def _entity_ranges(fs, raw: list[str], live: str | None, chunk_rows: int) -> list[tuple[str, str]]:
    """Contiguous entity-id ranges [lo, hi] of at most ~chunk_rows input rows (an entity is never
    split; one larger than that is a chunk of its own)."""
    counts: dict[str, int] = {}

    def count(ids) -> None:
        for row in pa.table({"e": ids}).group_by("e").aggregate([("e", "count")]).to_pylist():
            counts[row["e"]] = counts.get(row["e"], 0) + row["e_count"]

    for f in raw:  # batch by batch: one batch held at a time
        for t in scratch.batches(fs, f):
            count(t.column("entity_id"))
    if live:  # the entity column only: a few bytes per row
        count(pq.read_table(live, columns=["entity_id"], filesystem=fs).column("entity_id"))
    ranges: list[list[str]] = []  # [first, last] entity of each chunk
    acc = 0
    for entity in sorted(counts):
        if not ranges or (acc and acc + counts[entity] > chunk_rows):
            ranges.append([entity, entity])
            acc = 0
        ranges[-1][1] = entity
        acc += counts[entity]
    return [(lo, hi) for lo, hi in ranges]


def _read_live(fs, path: str, lo: str | None, hi: str | None) -> pa.Table:
    """A live bucket file's raw columns, or its rows with lo <= entity_id <= hi."""
    if lo is None:
        return pq.read_table(path, filesystem=fs, columns=RAW_SCHEMA.names).cast(RAW_SCHEMA)
    filters = [("entity_id", ">=", lo), ("entity_id", "<=", hi)]
    return pq.read_table(path, filesystem=fs, columns=RAW_SCHEMA.names, filters=filters).cast(RAW_SCHEMA)


def latest_per_fact(t: pa.Table) -> pa.Table:
    """One row per fact (DEDUP_KEYS), the latest filing's (then the greatest accession, then the
    first read), in the order the rows were read."""
    accn_key = pc.if_else(pc.is_null(t.column("period_end")), pc.fill_null(t.column("accn"), ""), "")
    keys = t.select(DEDUP_KEYS[:-1]).append_column("accn_key", accn_key)
    # Text keys as int32 codes into their distinct values: the aggregation below then hashes and
    # holds fixed-width keys, not copies of the strings (40% less memory, 3x faster, same groups).
    keys = pa.table({name: _codes(keys.column(name)) for name in DEDUP_KEYS})
    # Rank every row by recency (a stable sort: full ties keep the order read), then keep the
    # best-ranked row of each fact: a hash aggregation, no sort over the fact's seven key columns.
    order = pc.sort_indices(t, [("filed", "descending"), ("accn", "descending")]).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    best = (
        keys.append_column("rank", pa.array(rank))
        .group_by(DEDUP_KEYS, use_threads=False)
        .aggregate([("rank", "min")])
    )
    return t.take(np.sort(order[best.column("rank_min").to_numpy()]))


def _codes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column as int32 indices into its distinct values (equal values, equal codes; a null
    gets the code of null); other columns as they are."""
    if not pa.types.is_string(column.type):
        return column
    return pc.index_in(column, value_set=pc.unique(column))


def value_sample(t: pa.Table) -> dict:
    """Per pair, the SCALER_SAMPLE rows with the smallest hash priority: a uniform sample that does
    not depend on input order or partitioning, so fits are reproducible. {pair: (prio, value)}."""
    prio = pd.util.hash_pandas_object(t.select(SAMPLE_KEY).to_pandas(), index=False).to_numpy()
    keys = t.select(["concept", "unit"]).append_column("i", pa.array(np.arange(t.num_rows)))
    groups = keys.group_by(["concept", "unit"], use_threads=False).aggregate([("i", "list")])
    value = t.column("value").to_numpy()
    out = {}
    for concept, unit, rows in zip(*(groups.column(c).to_pylist() for c in ("concept", "unit", "i_list"))):
        rows = np.asarray(rows)
        out[(concept, unit)] = _smallest(prio[rows], value[rows])
    return out


def merge_samples(into: dict, sample: dict) -> dict:
    """Merge `sample` into `into` (in place), keeping each pair's SCALER_SAMPLE smallest priorities."""
    for key, (prio, value) in sample.items():
        if key in into:
            prio, value = _smallest(
                np.concatenate([into[key][0], prio]), np.concatenate([into[key][1], value])
            )
        into[key] = (prio, value)
    return into


def _smallest(prio: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(prio) <= SCALER_SAMPLE:
        return prio, value
    keep = np.argpartition(prio, SCALER_SAMPLE - 1)[:SCALER_SAMPLE]
    return prio[keep], value[keep]


def write_partition(
    loc: Location,
    staged: str,
    dedup_file: str,
    out_file: str,
    pair_ids: dict[tuple[str, str], int],
    scalers: dict[int, PairScaler],
    row_group_size: int,
) -> dict:
    """Phase D for one partition: `staged`/`dedup_file` → `out_file` (relative to the store) with
    pair id, scaled value and fold, sorted by entity, pair and period; returns its file record."""
    fs = loc.fs
    path = loc.join(out_file)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    rows = 0
    with pq.ParquetWriter(path, TRIPLET_SCHEMA, filesystem=fs) as writer:
        for t in scratch.batches(fs, loc.join(staged, dedup_file)):  # whole entities, one chunk at a time
            pair_id = pair_ids_of(t, pair_ids)
            if (pair_id < 0).any():  # rows of pairs not given: not written
                t, pair_id = t.filter(pair_id >= 0), pair_id[pair_id >= 0]
            scaled = scale_by_pair(pair_id, t.column("value").to_numpy(), scalers)
            t = t.append_column("pair_id", pa.array(pair_id))
            t = t.append_column("scaled_value", pa.array(scaled)).append_column(
                "fold", fold(t.column("accn"))
            )
            t = t.select(TRIPLET_SCHEMA.names).cast(TRIPLET_SCHEMA)
            order = pc.sort_indices(t, FINAL_ORDER)
            for start in range(0, t.num_rows, row_group_size):  # sorted a row group at a time, not
                # a sorted copy of the whole chunk (the same bytes)
                writer.write_table(
                    t.take(order[start : start + row_group_size]), row_group_size=row_group_size
                )
            rows += t.num_rows
    digest, size = sha256_file(fs, path)
    return {"size": size, "sha256": digest, "rows": rows}


def pair_ids_of(t: pa.Table, pair_ids: dict[tuple[str, str], int]) -> np.ndarray:
    """Each row's pair id (int32; -1 for a pair not in `pair_ids`), looked up by (concept, unit)
    codes: no copy of the rows, unlike a join."""
    if not pair_ids:
        return np.full(t.num_rows, -1, dtype=np.int32)
    concepts = {c: i for i, c in enumerate(sorted({c for c, _ in pair_ids}))}
    units = {u: i for i, u in enumerate(sorted({u for _, u in pair_ids}))}
    known = np.array([concepts[c] * len(units) + units[u] for c, u in pair_ids], dtype=np.int64)
    ids = np.fromiter(pair_ids.values(), dtype=np.int32, count=len(pair_ids))
    by_code = np.argsort(known)
    known, ids = known[by_code], ids[by_code]
    c = pc.fill_null(pc.index_in(t.column("concept"), value_set=pa.array(list(concepts), pa.string())), -1)
    u = pc.fill_null(pc.index_in(t.column("unit"), value_set=pa.array(list(units), pa.string())), -1)
    c, u = c.to_numpy().astype(np.int64), u.to_numpy().astype(np.int64)
    code = c * len(units) + u
    at = np.minimum(np.searchsorted(known, code), len(known) - 1)
    return np.where((c >= 0) & (u >= 0) & (known[at] == code), ids[at], -1).astype(np.int32)


def fold(accn: pa.ChunkedArray) -> pa.Array:
    """Each row's fold (layout.fold_of of its accession), computed once per distinct accession."""
    accn = pc.fill_null(accn, "")
    uniq = pc.unique(accn)
    folds = pa.array([fold_of(a) for a in uniq.to_pylist()], pa.int16())
    return pc.take(folds, pc.index_in(accn, value_set=uniq))


def sha256_file(fs, path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
