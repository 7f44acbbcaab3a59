"""The single-process ingest as it was before issue 13 (commit 172c728), kept as bench.ingest's
baseline so that every benchmark run compares the current engine against it on the same machine,
at the same moment, on the same bulk zip.

It does the same work the old `tunestack ingest` did, in one process: every zip member parsed
whole (`json.loads`, then a Python loop over every fact), rows appended to 16 hash buckets on disk,
each bucket de-duplicated in memory (pandas), scalers fitted on a per-pair sample, pairs embedded
and reduced by PCA, the final buckets written in row groups, and every file hashed (sha256) for the
manifest. It writes a plain folder (no manifest swap: that costs milliseconds) and reads only bulk
zips and companyfacts JSON, which is all the benchmark feeds it.

Not a benchmark itself (no `run`): the leading underscore keeps it out of `tunestack bench`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
import zlib

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store.embed import get_embedder, pair_text
from pipeline.store.features import fit_feature_space
from pipeline.store.layout import RAW_SCHEMA, TRIPLET_SCHEMA, VAL_FOLDS
from pipeline.store.scaler import fit_scaler, scale_by_pair

BUCKETS = 16
ROW_GROUP = 65_536
SCALER_SAMPLE = 20_000
FLUSH_ROWS = 100_000
DEDUP_KEYS = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn_key"]


def ingest_baseline(zip_path: str, out_dir: str, embedder: str = "hashed", embed_dim: int = 64) -> dict:
    """Ingest one bulk zip into `out_dir` the old way; returns rows read/kept, pairs and seconds."""
    t0 = time.perf_counter()
    os.makedirs(os.path.join(out_dir, "raw"))
    os.makedirs(os.path.join(out_dir, "dedup"))
    os.makedirs(os.path.join(out_dir, "triplets"))
    meta, rows_read = _stage_raw(zip_path, out_dir)
    counts, samples, rows_after = _dedupe(out_dir)
    pairs, scalers = _build_pairs(meta, counts, samples, embedder, embed_dim)
    _write_final(out_dir, pairs, scalers)
    files = {}
    for sub in ("triplets",):
        for name in sorted(os.listdir(os.path.join(out_dir, sub))):
            files[f"{sub}/{name}"] = _sha256(os.path.join(out_dir, sub, name))
    return {
        "rows_read": rows_read,
        "rows_after": rows_after,
        "pairs": len(pairs),
        "files": len(files),
        "seconds": time.perf_counter() - t0,
    }


# ---- phase A: parse every member whole, append rows to hash buckets ------------------------------
def _stage_raw(zip_path: str, out_dir: str):
    writers: dict[int, pq.ParquetWriter] = {}
    pending: dict[int, list[pa.Table]] = {}
    meta: dict = {}
    rows_read = 0

    def flush(b: int) -> None:
        if b not in writers:
            writers[b] = pq.ParquetWriter(os.path.join(out_dir, "raw", f"bucket-{b:02d}.parquet"), RAW_SCHEMA)
        writers[b].write_table(pa.concat_tables(pending.pop(b)))

    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.lower().endswith(".json"):
                continue
            with zf.open(info) as f:
                data = f.read()
            table, doc_meta = _parse_companyfacts(data.decode(json.detect_encoding(data)))
            if table.num_rows == 0:
                continue
            rows_read += table.num_rows
            for key, (label, desc) in doc_meta.items():
                if key not in meta or (meta[key][0] is None and label):
                    meta[key] = (label, desc)
            b = zlib.crc32(table.column("entity_id")[0].as_py().encode()) % BUCKETS
            pending.setdefault(b, []).append(table)
            if sum(t.num_rows for t in pending[b]) >= FLUSH_ROWS:
                flush(b)
    for b in list(pending):
        flush(b)
    for w in writers.values():
        w.close()
    return meta, rows_read


def _parse_companyfacts(text: str):
    doc = json.loads(text)
    entity_id = f"{int(doc['cik']):010d}"
    name = doc.get("entityName")
    cols: dict[str, list] = {f.name: [] for f in RAW_SCHEMA}
    meta: dict = {}

    def add(**row) -> None:
        for k, col in cols.items():
            col.append(row.get(k))

    for taxonomy, concepts in doc["facts"].items():
        for concept, body in concepts.items():
            units = body["units"]
            if (concept, None) not in meta:
                meta[(concept, None)] = (body.get("label"), body.get("description"))
            for unit, facts in units.items():
                meta.setdefault((concept, unit), meta[(concept, None)])
                for fact in facts:
                    value = fact["val"]
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(f"value {value!r} is not a number")
                    value = float(value)
                    if not math.isfinite(value):
                        raise ValueError(f"value {value!r} is not finite")
                    add(
                        entity_id=entity_id,
                        entity_name=name,
                        taxonomy=taxonomy,
                        concept=concept,
                        unit=unit,
                        value=value,
                        period_start=fact.get("start"),
                        period_end=fact["end"],
                        fy=fact.get("fy"),
                        fp=fact.get("fp"),
                        form=fact.get("form"),
                        filed=fact.get("filed"),
                        accn=fact.get("accn"),
                    )
    arrays = []
    for f in RAW_SCHEMA:
        vals = cols[f.name]
        if pa.types.is_date32(f.type):
            arrays.append(pa.array(vals, pa.string()).cast(pa.date32()))
        else:
            arrays.append(pa.array(vals, f.type))
    meta = {k: v for k, v in meta.items() if k[1] is not None}
    return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA), meta


# ---- phase B: de-duplicate each bucket in memory ------------------------------------------------
def _dedupe(out_dir: str):
    counts: dict = {}
    samples = pd.DataFrame({"concept": [], "unit": [], "value": [], "prio": []})
    rows_after = 0
    for b in range(BUCKETS):
        raw = os.path.join(out_dir, "raw", f"bucket-{b:02d}.parquet")
        if not os.path.exists(raw):
            continue
        t = _latest_per_fact(pq.read_table(raw))
        pq.write_table(t, os.path.join(out_dir, "dedup", f"bucket-{b:02d}.parquet"))
        rows_after += t.num_rows
        for row in t.group_by(["concept", "unit"]).aggregate([("value", "count")]).to_pylist():
            key = (row["concept"], row["unit"])
            counts[key] = counts.get(key, 0) + row["value_count"]
        samples = _update_sample(samples, t)
    return counts, samples, rows_after


def _latest_per_fact(t: pa.Table) -> pa.Table:
    accn_key = pc.if_else(pc.is_null(t.column("period_end")), pc.fill_null(t.column("accn"), ""), "")
    t = t.append_column("accn_key", accn_key)
    t = t.sort_by([(k, "ascending") for k in DEDUP_KEYS] + [("filed", "descending"), ("accn", "descending")])
    dup = t.select(DEDUP_KEYS).to_pandas().duplicated(keep="first").to_numpy()
    return t.filter(pa.array(~dup)).drop_columns(["accn_key"])


def _update_sample(samples: pd.DataFrame, t: pa.Table) -> pd.DataFrame:
    df = t.select(["concept", "unit", "value"]).to_pandas()
    key = t.select(["entity_id", "concept", "unit", "period_start", "period_end", "accn"]).to_pandas()
    df["prio"] = pd.util.hash_pandas_object(key, index=False).to_numpy()
    df = pd.concat([samples, df], ignore_index=True) if len(samples) else df
    df = df.sort_values("prio", kind="stable")
    return df.groupby(["concept", "unit"], sort=False).head(SCALER_SAMPLE)


# ---- phases C and D: pairs (scalers, embeddings), final buckets ----------------------------------
def _build_pairs(meta, counts, samples: pd.DataFrame, embedder_name: str, embed_dim: int):
    by_pair = {k: g["value"].to_numpy() for k, g in samples.groupby(["concept", "unit"], sort=False)}
    rows, scalers = [], {}
    for pid, key in enumerate(sorted(counts)):
        label, desc = meta.get(key, (None, None))
        scalers[pid] = fit_scaler(by_pair[key])
        rows.append({"pair_id": pid, "concept": key[0], "unit": key[1], "label": label, "description": desc})
    embedder = get_embedder(embedder_name)
    raw = embedder.embed([pair_text(r["concept"], r["unit"], r["label"], r["description"]) for r in rows])
    space = fit_feature_space(raw, embed_dim, embedder.info(), version=1)  # the PCA the old ingest fitted
    for r, e in zip(rows, space.project(raw)):
        r["embedding"] = e.tolist()
    return rows, scalers


def _write_final(out_dir: str, pairs: list[dict], scalers) -> None:
    ids = pa.table(
        {
            "concept": [p["concept"] for p in pairs],
            "unit": [p["unit"] for p in pairs],
            "pair_id": pa.array([p["pair_id"] for p in pairs], pa.int32()),
        }
    )
    for b in range(BUCKETS):
        path = os.path.join(out_dir, "dedup", f"bucket-{b:02d}.parquet")
        if not os.path.exists(path):
            continue
        t = pq.read_table(path).join(ids, keys=["concept", "unit"], join_type="inner")
        scaled = scale_by_pair(t.column("pair_id").to_numpy(), t.column("value").to_numpy(), scalers)
        t = t.append_column("scaled_value", pa.array(scaled)).append_column("fold", _fold(t.column("accn")))
        t = t.select(TRIPLET_SCHEMA.names).cast(TRIPLET_SCHEMA)
        t = t.sort_by([("entity_id", "ascending"), ("pair_id", "ascending"), ("period_end", "ascending")])
        pq.write_table(
            t, os.path.join(out_dir, "triplets", f"bucket-{b:02d}.parquet"), row_group_size=ROW_GROUP
        )


def _fold(accn: pa.ChunkedArray) -> pa.Array:
    accn = pc.fill_null(accn, "")
    uniq = pc.unique(accn)
    folds = pa.array([zlib.crc32(a.encode()) % VAL_FOLDS for a in uniq.to_pylist()], pa.int16())
    return pc.take(folds, pc.index_in(accn, value_set=uniq))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()
