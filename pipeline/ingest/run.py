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
from dataclasses import asdict, dataclass, field

from pipeline.home import default_store_uri
from pipeline.ingest.partition import (
    DEFAULT_MEMORY_LIMIT,
    DedupeResult,
    chunk_rows_for,
    dedupe_partition,
    merge_samples,
    write_partition,
)
from pipeline.ingest.progress import Progress
from pipeline.ingest.sources import expand_inputs, split_inputs
from pipeline.ingest.stage import merge_pair_meta, stage_unit
from pipeline.ingest.tasks import TaskRunner
from pipeline.store.embed import get_embedder, pair_text, pca_reduce
from pipeline.store.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_ROW_GROUP,
    VAL_FOLDS,
    StagedVersion,
    TripletStore,
    write_pairs,
)
from pipeline.store.scaler import fit_scaler

UNIT_BYTES = 32 * 1024 * 1024  # documents (uncompressed) per unit of parsing work


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
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> IngestReport:
    """Ingest `paths` into the store at `store_uri` (default under TUNESTACK_HOME).

    Parsing runs on the Ray cluster at `address` (or $RAY_ADDRESS) when given; else on a local Ray
    with `workers` CPUs, or, by default, on every core for a large input and in this process for a
    small one (pipeline/ingest/tasks.py). De-duplication holds at most `memory_limit` bytes of rows
    at once over a machine's tasks (pipeline/ingest/partition.py). Raises IngestError on bad input
    unless `skip_bad`; on any failure the live store is untouched.
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
        chunk_rows = chunk_rows_for(memory_limit, runner.slots())
        counts, samples, entities, parts = _dedupe(
            store, staged, buckets, raw_files, report, runner, chunk_rows
        )
        pairs, scalers, embedder_info = _build_pairs(store, meta, counts, samples, embedder, embed_dim)
        triplet_files = _write_final(staged, parts, pairs, scalers, row_group_size, runner)
        write_pairs(staged.join("pairs.parquet"), pairs, embed_dim, store.loc.fs)
        store.loc.delete_dir(f"{staged.name}/raw")
        store.loc.delete_dir(f"{staged.name}/dedup")
        report.pairs, report.entities, report.embedder = len(pairs), entities, embedder_info["name"]
        inputs = (old["inputs"] if old else []) + [
            {"path": f, "ingested": time.strftime("%Y-%m-%dT%H:%M:%S")} for f in files
        ]
        manifest = staged.commit(
            {
                "counts": {"triplets": report.rows_after, "pairs": len(pairs), "entities": entities},
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


def _dedupe(
    store: TripletStore, staged: StagedVersion, buckets: int, raw_files: dict, report, runner, chunk_rows
):
    """Phase B: each bucket's new rows merged with the live store's, the latest filing kept (one
    task per bucket); returns per-pair counts, the scalers' value sample and the entity count."""
    old_files = set(store.manifest["triplet_files"]) if store.manifest else set()
    calls = []
    for b in range(buckets):
        old_name = f"triplets/bucket-{b:02d}.parquet"
        old = f"{store.version_dir}/{old_name}" if old_name in old_files else None
        if raw_files.get(b) or old:
            calls.append({"loc": staged.loc, "staged": staged.name, "part": b, "raw_files": raw_files.get(b, []),
                          "old_file": old, "out_file": f"dedup/bucket-{b:02d}.parquet", "chunk_rows": chunk_rows})  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    samples: dict = {}
    entities = 0

    def take(i, r: DedupeResult) -> None:  # merged as results arrive: the driver keeps one sample
        nonlocal entities
        report.rows_before += r.rows_old
        report.rows_after += r.rows_after
        entities += r.entities
        for key, n in r.counts.items():
            counts[key] = counts.get(key, 0) + n
        merge_samples(samples, r.sample)
        r.sample = None

    done = runner.map(dedupe_partition, calls, on_result=take)
    report.duplicates_dropped = report.rows_read + report.rows_before - report.rows_after
    return counts, samples, entities, {r.part: list(r.counts) for r in done}


def _build_pairs(store: TripletStore, meta, counts, samples: dict, embedder_name: str, embed_dim: int):
    """Phase C: stable pair ids, refitted scalers, embeddings reduced by PCA."""
    old = {}
    if store.manifest:
        for row in (
            store.read_pairs().select(["pair_id", "concept", "unit", "label", "description"]).to_pylist()
        ):
            old[(row["concept"], row["unit"])] = row
    next_id = max((r["pair_id"] for r in old.values()), default=-1) + 1
    by_pair = {k: value for k, (_, value) in samples.items()}
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


def _write_final(staged: StagedVersion, parts: dict, pairs: list[dict], scalers, row_group_size: int, runner):
    """Phase D: each de-duplicated bucket gets pair id, scaled value and fold, sorted by
    entity/pair/period, written in row groups (one task per bucket, given the ids and scalers of
    its own pairs only); returns the files written."""
    ids = {(p["concept"], p["unit"]): p["pair_id"] for p in pairs}
    calls = []
    for b, keys in parts.items():
        own = {k: ids[k] for k in keys}
        calls.append({"loc": staged.loc, "staged": staged.name, "dedup_file": f"dedup/bucket-{b:02d}.parquet",
                      "out_file": f"{staged.name}/triplets/bucket-{b:02d}.parquet", "pair_ids": own,
                      "scalers": {i: scalers[i] for i in own.values()}, "row_group_size": row_group_size})  # fmt: skip
    runner.map(write_partition, calls)
    return [f"triplets/bucket-{b:02d}.parquet" for b in parts]
