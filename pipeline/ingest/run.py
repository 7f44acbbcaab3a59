"""`tunestack ingest`: parse → de-duplicate → fit scalers → embed pairs → swap in a new store version.

Bounded memory, whatever the number of inputs:
  A. the input is cut into units (runs of zip members, files) that are parsed independently, in this
     process or as Ray tasks (pipeline/ingest/stage.py, tasks.py); each writes its rows into K hash
     buckets (by entity) on disk;
  B. bucket by bucket, new rows and the live store's rows of that bucket are de-duplicated
     (one fact per entity/taxonomy/concept/unit/start/end — or accession when a row has no
     period — the latest filing wins); per-pair counts and a bounded value sample are kept;
  C. pairs get stable ids, a scaler fitted on their sample, and an embedding;
  D. bucket by bucket, rows get pair id, scaled value and fold, and are written in row groups.
Everything is written into a staged version that replaces the live one only at the very end.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.home import default_store_uri
from pipeline.ingest.progress import Progress
from pipeline.ingest.sources import expand_inputs, split_inputs
from pipeline.ingest.stage import merge_pair_meta, stage_unit
from pipeline.ingest.tasks import TaskRunner
from pipeline.store.embed import get_embedder, pair_text, pca_reduce
from pipeline.store.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_ROW_GROUP,
    RAW_SCHEMA,
    TRIPLET_SCHEMA,
    VAL_FOLDS,
    StagedVersion,
    TripletStore,
    write_pairs,
)
from pipeline.store.scaler import fit_scaler, scale_by_pair

SCALER_SAMPLE = 20_000  # values kept per pair for fitting (a uniform sample beyond that)
UNIT_BYTES = 32 * 1024 * 1024  # documents (uncompressed) per unit of parsing work
DEDUP_KEYS = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn_key"]


@dataclass
class IngestReport:
    store: str
    files: int = 0
    documents: int = 0
    rows_read: int = 0
    rows_before: int = 0
    rows_after: int = 0
    duplicates_dropped: int = 0
    pairs: int = 0
    entities: int = 0
    embedder: str = ""
    store_version: int = 0
    skipped_documents: list[str] = field(default_factory=list)
    skipped_records: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    workers: dict = field(default_factory=dict)  # where parsing ran: {"nodes", "units", "parallel"}
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: what was read and kept, how fast, where."""
        rate = self.rows_read / self.seconds if self.seconds else 0.0
        where = (
            f"{self.workers.get('units', 0)} units on {self.workers.get('nodes', 1)} Ray node(s)"
            if self.workers.get("parallel")
            else "in one process"
        )
        return (
            f"ingest: {self.documents:,} documents, {self.rows_read:,} facts read ({rate:,.0f} facts/s, "
            f"{where}); store version {self.store_version}: {self.rows_after:,} facts, {self.pairs:,} pairs, "
            f"{self.entities:,} entities; {self.seconds:.1f} s"
        )


def ingest(
    paths: list[str],
    store_uri: str | None = None,
    skip_bad: bool = False,
    embedder: str = "auto",
    embed_dim: int = 64,
    row_group_size: int = DEFAULT_ROW_GROUP,
    progress: bool | None = None,
    address: str | None = None,
    workers: int | None = None,
) -> IngestReport:
    """Ingest `paths` into the store at `store_uri` (default under TUNESTACK_HOME).

    Parsing runs on the Ray cluster at `address` (or $RAY_ADDRESS) when given; else on a local Ray
    with `workers` CPUs, or, by default, on every core for a large input and in this process for a
    small one (pipeline/ingest/tasks.py). Raises IngestError on bad input unless `skip_bad`; on any
    failure the live store is untouched.
    """
    t0 = time.perf_counter()
    store = TripletStore(store_uri or default_store_uri())
    report = IngestReport(store=store.uri)
    files = expand_inputs(paths)  # unreadable paths fail here, before anything is written
    units = split_inputs(files, UNIT_BYTES)
    report.files = len(files)
    old = store.manifest
    buckets = old["buckets"] if old else DEFAULT_BUCKETS
    runner = TaskRunner.start(address, workers, work_bytes=sum(p.bytes for u in units for p in u))
    staged = store.stage()
    try:
        meta, raw_files = _stage_raw(units, staged, buckets, skip_bad, report, progress, runner)
        counts, samples, entities = _dedupe(store, staged, buckets, raw_files, report)
        pairs, scalers, embedder_info = _build_pairs(store, meta, counts, samples, embedder, embed_dim)
        triplet_files = _write_final(staged, buckets, pairs, scalers, row_group_size)
        write_pairs(staged.join("pairs.parquet"), pairs, embed_dim, store.loc.fs)
        store.loc.delete_dir(f"{staged.name}/raw")
        store.loc.delete_dir(f"{staged.name}/dedup")
        report.pairs, report.entities, report.embedder = len(pairs), len(entities), embedder_info["name"]
        inputs = (old["inputs"] if old else []) + [
            {"path": f, "ingested": time.strftime("%Y-%m-%dT%H:%M:%S")} for f in files
        ]
        manifest = staged.commit(
            {
                "counts": {"triplets": report.rows_after, "pairs": len(pairs), "entities": len(entities)},
                "embedder": embedder_info,
                "buckets": buckets,
                "row_group_size": row_group_size,
                "val_folds": VAL_FOLDS,
                "triplet_files": triplet_files,
                "inputs": inputs,
            }
        )
    except BaseException:
        staged.abort()
        if old is None and not store.loc.list_files():
            store.loc.delete_dir("")  # a store that did not exist before does not exist after
        raise
    finally:
        runner.close()
    report.store_version = manifest["version"]
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _stage_raw(units, staged: StagedVersion, buckets: int, skip_bad, report, progress, runner: TaskRunner):
    """Phase A: parse every unit into per-bucket raw Parquet files; return pair labels and, per
    bucket, the raw files written."""
    calls = [
        {"parts": u, "loc": staged.loc, "version_dir": staged.name, "unit": i, "buckets": buckets,
         "skip_bad": skip_bad}
        for i, u in enumerate(units)
    ]  # fmt: skip
    with Progress(sum(p.bytes for u in units for p in u), progress) as bar:
        results = runner.map(stage_unit, calls, on_result=lambda i, r: bar.advance(r.bytes, r.rows))
    raw_files: dict[int, list[str]] = {}
    for r in results:  # in input order: the report lists skips as one pass would
        report.documents += r.documents
        report.rows_read += r.rows
        report.skipped_records += r.skipped_records
        report.skipped_documents += r.skipped_documents
        report.skipped_examples += r.skipped_examples[: max(0, 5 - len(report.skipped_examples))]
        for b, f in r.files.items():
            raw_files.setdefault(b, []).append(f)
    report.workers = {
        "parallel": runner.parallel,
        "units": len(results),
        "nodes": len({r.node for r in results}),
    }
    return merge_pair_meta(results), raw_files


def _dedupe(store: TripletStore, staged: StagedVersion, buckets: int, raw_files: dict, report):
    """Phase B: merge each bucket's new rows with the live store's, keep the latest filing."""
    fs = store.loc.fs
    counts: dict[tuple[str, str], int] = {}
    samples = pd.DataFrame({"concept": [], "unit": [], "value": [], "prio": []})
    entities: set[str] = set()
    old_files = set(store.manifest["triplet_files"]) if store.manifest else set()
    for b in range(buckets):
        parts = [pq.read_table(staged.join(f), filesystem=fs) for f in raw_files.get(b, [])]
        old_name = f"triplets/bucket-{b:02d}.parquet"
        if old_name in old_files:
            old_rows = pq.read_table(
                store.loc.join(store.version_dir, old_name), filesystem=fs, columns=RAW_SCHEMA.names
            )
            report.rows_before += old_rows.num_rows
            parts.append(old_rows)
        if not parts:
            continue
        t = pa.concat_tables(parts)
        t = _latest_per_fact(t)
        pq.write_table(t, staged.join("dedup", f"bucket-{b:02d}.parquet"), filesystem=fs)
        report.rows_after += t.num_rows
        entities.update(pc.unique(t.column("entity_id")).to_pylist())
        for row in t.group_by(["concept", "unit"]).aggregate([("value", "count")]).to_pylist():
            key = (row["concept"], row["unit"])
            counts[key] = counts.get(key, 0) + row["value_count"]
        samples = _update_sample(samples, t)
    report.duplicates_dropped = report.rows_read + report.rows_before - report.rows_after
    return counts, samples, entities


def _latest_per_fact(t: pa.Table) -> pa.Table:
    accn_key = pc.if_else(pc.is_null(t.column("period_end")), pc.fill_null(t.column("accn"), ""), "")
    t = t.append_column("accn_key", accn_key)
    t = t.sort_by([(k, "ascending") for k in DEDUP_KEYS] + [("filed", "descending"), ("accn", "descending")])
    dup = t.select(DEDUP_KEYS).to_pandas().duplicated(keep="first").to_numpy()
    return t.filter(pa.array(~dup)).drop_columns(["accn_key"])


def _update_sample(samples: pd.DataFrame, t: pa.Table) -> pd.DataFrame:
    """Keep, per pair, the SCALER_SAMPLE rows with the smallest hash priority: a uniform sample
    that does not depend on input order, so refits are reproducible."""
    df = t.select(["concept", "unit", "value"]).to_pandas()
    key = t.select(["entity_id", "concept", "unit", "period_start", "period_end", "accn"]).to_pandas()
    df["prio"] = pd.util.hash_pandas_object(key, index=False).to_numpy()
    df = pd.concat([samples, df], ignore_index=True) if len(samples) else df
    df = df.sort_values("prio", kind="stable")
    return df.groupby(["concept", "unit"], sort=False).head(SCALER_SAMPLE)


def _build_pairs(
    store: TripletStore, meta, counts, samples: pd.DataFrame, embedder_name: str, embed_dim: int
):
    """Phase C: stable pair ids, refitted scalers, embeddings reduced by PCA."""
    old = {}
    if store.manifest:
        for row in (
            store.read_pairs().select(["pair_id", "concept", "unit", "label", "description"]).to_pylist()
        ):
            old[(row["concept"], row["unit"])] = row
    next_id = max((r["pair_id"] for r in old.values()), default=-1) + 1
    by_pair = {k: g["value"].to_numpy() for k, g in samples.groupby(["concept", "unit"], sort=False)}
    rows, scalers = [], {}
    for key in sorted(counts):
        label, desc = meta.get(key, (None, None))
        if key in old:
            pid = old[key]["pair_id"]
            label, desc = label or old[key]["label"], desc or old[key]["description"]
        else:
            pid, next_id = next_id, next_id + 1
        scaler = fit_scaler(by_pair[key])
        scalers[pid] = scaler
        rows.append(
            {
                "pair_id": pid,
                "concept": key[0],
                "unit": key[1],
                "label": label,
                "description": desc,
                "count": counts[key],
                **scaler.to_row(),
            }
        )
    embedder = get_embedder(embedder_name)
    raw = embedder.embed([pair_text(r["concept"], r["unit"], r["label"], r["description"]) for r in rows])
    for r, e in zip(rows, pca_reduce(raw, embed_dim)):
        r["embedding"] = e.tolist()
    info = {"name": embedder.name, "source_dim": int(raw.shape[1]), "dim": embed_dim, "reduction": "pca"}
    return rows, scalers, info


def _write_final(
    staged: StagedVersion, buckets: int, pairs: list[dict], scalers, row_group_size: int
) -> list[str]:
    """Phase D: attach pair id, scaled value and fold; write row groups sorted by entity/pair/period."""
    fs = staged.loc.fs
    ids = pa.table(
        {
            "concept": [p["concept"] for p in pairs],
            "unit": [p["unit"] for p in pairs],
            "pair_id": pa.array([p["pair_id"] for p in pairs], pa.int32()),
        }
    )
    written = []
    for b in range(buckets):
        rel = f"dedup/bucket-{b:02d}.parquet"
        if not staged.loc.exists(f"{staged.name}/{rel}"):
            continue
        t = pq.read_table(staged.join(rel), filesystem=fs).join(
            ids, keys=["concept", "unit"], join_type="inner"
        )
        pair_id = t.column("pair_id").to_numpy()
        scaled = scale_by_pair(pair_id, t.column("value").to_numpy(), scalers)
        t = t.append_column("scaled_value", pa.array(scaled)).append_column("fold", _fold(t.column("accn")))
        t = t.select(TRIPLET_SCHEMA.names).cast(TRIPLET_SCHEMA)
        t = t.sort_by([("entity_id", "ascending"), ("pair_id", "ascending"), ("period_end", "ascending")])
        name = f"triplets/bucket-{b:02d}.parquet"
        pq.write_table(t, staged.join(name), filesystem=fs, row_group_size=row_group_size)
        written.append(name)
    return written


def _fold(accn: pa.ChunkedArray) -> pa.Array:
    """crc32(accession) % VAL_FOLDS: every fact of one filing lands in the same fold."""
    accn = pc.fill_null(accn, "")
    uniq = pc.unique(accn)
    folds = pa.array([zlib.crc32(a.encode()) % VAL_FOLDS for a in uniq.to_pylist()], pa.int16())
    return pc.take(folds, pc.index_in(accn, value_set=uniq))
