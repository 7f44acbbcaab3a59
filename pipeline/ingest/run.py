"""`tunestack ingest`: parse → de-duplicate → fit scalers → embed pairs → swap in a new store version.

Bounded memory, whatever the size of the input or of the store:
  A. the input is cut into units (runs of zip members, files) parsed independently, in this process
     or as Ray tasks (stage.py, tasks.py); each unit writes its rows into K hash buckets (by entity);
  B. bucket by bucket (one task each), new rows and the live store's rows of that bucket are
     de-duplicated (one fact per entity/taxonomy/concept/unit/start/end — or accession when a row
     has no period — the latest filing wins), in chunks of whole companies within the memory limit
     (partition.py); per-pair counts and a bounded value sample come back;
  C. pairs get stable ids; a pair new to the store gets a scaler fitted on its sample and an
     embedding through the store's frozen feature space, a known pair keeps both (the feature space
     is fitted only by the first ingest and by `refit`, which also refits every scaler);
  D. bucket by bucket (one task each), rows get pair id, scaled value and fold, and are written in
     row groups.
Everything is written into a staged version that replaces the live one only at the very end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.home import default_store_uri
from pipeline.ingest import scratch
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
from pipeline.ingest.tasks import TaskRunner, release_freed_memory
from pipeline.store.embed import embedder_name, get_embedder, pair_text
from pipeline.store.errors import StoreError
from pipeline.store.features import FeatureSpace, fit_feature_space, load_embedder
from pipeline.store.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_KEEP,
    DEFAULT_ROW_GROUP,
    PAIRS_FILE,
    VAL_FOLDS,
    StagedVersion,
    TripletStore,
    bucket_file,
    manifest_embedder,
    manifest_files,
    write_pairs,
)
from pipeline.store.lock import DEFAULT_WAIT
from pipeline.store.scaler import fit_scaler, scalers_of

DEFAULT_EMBED_DIM = 64
UNIT_BYTES = 32 * 1024 * 1024  # documents (uncompressed) per unit of parsing work, at most
MIN_UNIT_BYTES = 4 * 1024 * 1024  # ... and at least, when a smaller input is spread over Ray's CPUs
UNITS_PER_CPU = 4


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
    feature_version: int = 0
    new_pairs: int = 0
    skipped_documents: list[str] = field(default_factory=list)
    skipped_records: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
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
    embedder: str | None = None,
    embed_dim: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP,
    progress: bool | None = None,
    lock_wait: float = DEFAULT_WAIT,
    keep: int = DEFAULT_KEEP,
    address: str | None = None,
    workers: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> IngestReport:
    """Ingest `paths` into the store at `store_uri` (default under TUNESTACK_HOME).

    `embedder` ('auto', 'minilm', 'hashed') and `embed_dim` default to the store's recorded ones
    ('auto' and 64 for a new store); naming others for an existing store is refused (StoreError):
    its feature space is frozen, and only `refit` changes it. One writer at a time: another's
    lock is waited for up to `lock_wait` seconds (then StoreLocked). The `keep` newest previous
    versions stay for readers; older ones are deleted after the commit.
    Parsing and buckets run on the Ray cluster at `address` (or $RAY_ADDRESS) when given; else on a
    local Ray with `workers` CPUs, or, by default, on every core for a large input and in this
    process for a small one (tasks.py). De-duplication holds at most `memory_limit` bytes of rows
    at once over a machine's tasks (partition.py).
    Raises IngestError on bad input unless `skip_bad`; on any failure the live store is untouched.
    """
    t0 = time.perf_counter()
    store = TripletStore(store_uri or default_store_uri())
    files = expand_inputs(paths)  # unreadable paths fail here, before anything is written
    units = split_inputs(files, UNIT_BYTES)
    work = sum(p.bytes for u in units for p in u)
    with TaskRunner.start(address, workers, work_bytes=work) as runner, store.writing(lock_wait):
        if runner.parallel:  # units small enough that every CPU gets several (an even finish)
            per_cpu = work // (UNITS_PER_CPU * runner.cpus())
            units = split_inputs(files, min(UNIT_BYTES, max(MIN_UNIT_BYTES, per_cpu)))
        report = _write_version(
            store, files, skip_bad, embedder, embed_dim, row_group_size, progress, False, keep, runner,
            memory_limit, units,
        )  # fmt: skip
    report.seconds = round(time.perf_counter() - t0, 3)  # Ray's start included: what a user waits
    return report


def refit(
    store_uri: str | None = None,
    embedder: str | None = None,
    embed_dim: int | None = None,
    row_group_size: int | None = None,
    lock_wait: float = DEFAULT_WAIT,
    keep: int = DEFAULT_KEEP,
    address: str | None = None,
    workers: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> IngestReport:
    """`tunestack store refit`: a new feature version (basis fitted on every pair of the store,
    with `embedder`/`embed_dim`, default the recorded ones) and every pair's scaler refitted on
    all its rows, written as a new store version. Pair ids stay; older feature versions stay
    readable by number."""
    store = TripletStore(store_uri or default_store_uri())
    store.require()
    with TaskRunner.start(address, workers) as runner, store.writing(lock_wait):
        rgs = row_group_size or store.require().get("row_group_size", DEFAULT_ROW_GROUP)
        return _write_version(
            store, [], False, embedder, embed_dim, rgs, False, True, keep, runner, memory_limit
        )


def _write_version(
    store, files, skip_bad, embedder, embed_dim, row_group_size, progress, refit, keep, runner, memory_limit,
    units=(),
):  # fmt: skip
    """Stage, fill and commit one new store version (the caller holds the store's lock)."""
    t0 = time.perf_counter()
    report = IngestReport(store=store.uri, files=len(files))
    old = store.manifest
    buckets = old["buckets"] if old else DEFAULT_BUCKETS
    space = _live_feature_space(store, embedder, embed_dim, refit)  # refusals come before any write
    staged = store.stage()
    try:
        meta, raw_files = _stage_raw(units, staged, buckets, skip_bad, report, progress, runner)
        # Only the buckets that get new rows are rewritten; a new feature space (first ingest, refit,
        # a store predating feature versions) refits every scaler, so then every bucket is.
        touched = (
            set(raw_files) if space is not None else set(raw_files) | set(store.bucket_files() if old else ())
        )
        chunk_rows = chunk_rows_for(memory_limit, runner.slots())
        counts, samples, entities, parts = _dedupe(
            store, staged, touched, raw_files, report, runner, chunk_rows
        )
        pairs, scalers, space = _build_pairs(
            store, meta, counts, samples, space, embedder, embed_dim, report, refit
        )
        del samples  # up to SCALER_SAMPLE values of every pair: freed before the rows are written
        release_freed_memory()
        written = _write_final(staged, parts, pairs, scalers, row_group_size, runner)
        write_pairs(staged.join(PAIRS_FILE), pairs, space.embed_dim, store.loc.fs)
        staged.drop_scratch()
        report.pairs, report.entities, report.embedder = len(pairs), entities, space.embedder["name"]
        inputs = (old["inputs"] if old else []) + [
            {"path": f, "ingested": time.strftime("%Y-%m-%dT%H:%M:%S")} for f in files
        ]
        if refit:
            inputs.append({"refit": space.version, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        reused = {}
        if old:
            records = manifest_files(old)
            reused = {f: records.get(f) for b, f in store.bucket_files().items() if b not in parts}
        manifest = staged.commit(
            {
                "counts": {"triplets": report.rows_after, "pairs": len(pairs), "entities": entities},
                "embedder": manifest_embedder(space),
                "buckets": buckets,
                "row_group_size": row_group_size,
                "val_folds": VAL_FOLDS,
                "triplet_files": list(written),
                "files": written,
                "inputs": inputs,
            },
            space,
            keep,
            reused=reused,
        )
    except BaseException:
        staged.abort()
        raise
    report.store_version, report.feature_version = manifest["version"], space.version
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _stage_raw(units, staged: StagedVersion, buckets: int, skip_bad, report, progress, runner: TaskRunner):
    """Phase A: parse every unit into per-bucket raw files (scratch.py); return pair labels and, per
    bucket, the raw files written ({file: its rows})."""
    calls = [
        {"parts": u, "loc": staged.loc, "version_dir": staged.name, "unit": i, "buckets": buckets,
         "skip_bad": skip_bad}
        for i, u in enumerate(units)
    ]  # fmt: skip
    with Progress(sum(p.bytes for u in units for p in u), progress) as bar:
        results = runner.map(stage_unit, calls, on_result=lambda i, r: bar.advance(r.bytes, r.rows))
    raw_files: dict[int, dict[str, int]] = {}  # bucket -> {raw file: its rows}
    for r in results:  # in input order: the report lists skips as one pass would
        report.documents += r.documents
        report.rows_read += r.rows
        report.skipped_records += r.skipped_records
        report.skipped_documents += r.skipped_documents
        report.skipped_examples += r.skipped_examples[: max(0, 5 - len(report.skipped_examples))]
        for b, f in r.files.items():
            raw_files.setdefault(b, {})[f] = r.bucket_rows[b]
    report.workers = {
        "parallel": runner.parallel,
        "units": len(results),
        "nodes": len({r.node for r in results}),
    }
    return merge_pair_meta(results), raw_files


def _dedupe(
    store: TripletStore, staged: StagedVersion, touched: set, raw_files: dict, report, runner, chunk_rows
):
    """Phase B: each touched bucket's new rows merged with its live rows, the latest filing kept
    (one task per bucket). Returns the store's per-pair counts and entity count after the merge (the
    live totals, less what the touched buckets held, plus what they hold now), the touched buckets'
    value sample per pair (all rows of any new pair are in them), and the buckets written."""
    old = store.manifest
    live = store.bucket_files() if old else {}
    calls = [
        {"loc": staged.loc, "staged": staged.name, "part": b, "raw_files": raw_files.get(b, {}),
         "old_file": live.get(b), "out_file": scratch.dedup_file(b), "chunk_rows": chunk_rows}
        for b in sorted(touched)
    ]  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    if old:
        pairs = store.read_pairs().select(["concept", "unit", "count"]).to_pylist()
        counts = {(r["concept"], r["unit"]): r["count"] or 0 for r in pairs}
    report.rows_before = old["counts"]["triplets"] if old else 0
    report.rows_after = report.rows_before
    totals = {"entities": old["counts"]["entities"] if old else 0}
    samples: dict = {}

    def take(i, r: DedupeResult) -> None:  # merged as results arrive: the driver keeps one sample
        report.rows_after += r.rows_after - r.rows_old
        totals["entities"] += r.entities - r.entities_old
        for key, n in r.counts_old.items():
            counts[key] -= n
        for key, n in r.counts.items():
            counts[key] = counts.get(key, 0) + n
        merge_samples(samples, r.sample)
        r.sample = None

    done = runner.map(dedupe_partition, calls, on_result=take, threaded=True)
    report.duplicates_dropped = report.rows_read + report.rows_before - report.rows_after
    counts = {k: n for k, n in counts.items() if n > 0}
    return counts, samples, totals["entities"], {r.part for r in done}


def _live_feature_space(store: TripletStore, embedder: str | None, embed_dim: int | None, refit: bool):
    """The feature space this write keeps (None: the write fits one). Refuses an embedder or
    width other than the recorded ones, unless refitting."""
    if store.manifest is None or refit or store.feature_version is None:
        return None
    space = store.feature_space()
    recorded = space.embedder["name"]
    if embedder is not None and embedder_name(embedder) != recorded:
        raise StoreError(
            f"store {store.uri} records embedder {recorded} (feature version {space.version}); "
            f"--embedder {embedder} means {embedder_name(embedder)} here: omit --embedder to append "
            f"with the recorded one, or change it with `tunestack store refit --embedder {embedder}`"
        )
    if embed_dim is not None and embed_dim != space.embed_dim:
        raise StoreError(
            f"store {store.uri} has {space.embed_dim}-d pair embeddings (feature version {space.version}); "
            f"--embed-dim {embed_dim} would need `tunestack store refit --embed-dim {embed_dim}`"
        )
    load_embedder(space.embedder)  # EmbedderUnavailable now, before anything is staged
    return space


def _build_pairs(
    store: TripletStore,
    meta,
    counts,
    samples: dict,
    space: FeatureSpace | None,
    embedder: str | None,
    embed_dim: int | None,
    report: IngestReport,
    refit_all: bool = False,
):
    """Phase C: stable pair ids; kept scalers and embeddings for known pairs (when `space` is the
    live feature space), fitted ones for new pairs; with `space` None, a new feature space fitted
    on every pair and every scaler refitted (first ingest, refit)."""
    old, old_scalers = {}, {}
    if store.manifest:  # the knots and embeddings as arrays: thousands of pairs × 2,000 floats
        table = store.read_pairs()
        old_scalers = scalers_of(table)
        width = table.schema.field("embedding").type.list_size
        emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(table.num_rows, width)
        text = ["pair_id", "concept", "unit", "label", "description"]
        for row, e in zip(table.select(text).to_pylist(), emb):
            old[(row["concept"], row["unit"])] = {
                **row,
                **old_scalers[row["pair_id"]].to_columns(),
                "embedding": e,
            }
    next_id = max((r["pair_id"] for r in old.values()), default=-1) + 1
    by_pair = {k: value for k, (_, value) in samples.items()}
    rows, scalers, new = [], {}, []
    for key in sorted(counts):
        if space is not None and key in old:  # frozen: the pair's scaler, embedding and text stay
            row = {**old[key], "count": counts[key]}
            scalers[row["pair_id"]] = old_scalers[row["pair_id"]]
            rows.append(row)
            continue
        label, desc = meta.get(key, (None, None))
        if key in old:
            pid = old[key]["pair_id"]
            label, desc = old[key]["label"] or label, old[key]["description"] or desc
        else:
            pid, next_id = next_id, next_id + 1
        scaler = fit_scaler(by_pair[key])
        scalers[pid] = scaler
        row = {"pair_id": pid, "concept": key[0], "unit": key[1], "label": label, "description": desc}
        rows.append({**row, "count": counts[key], **scaler.to_columns()})
        new.append(rows[-1])
    report.new_pairs = sum(1 for r in new if (r["concept"], r["unit"]) not in old)
    texts = [pair_text(r["concept"], r["unit"], r["label"], r["description"]) for r in new]
    if space is None:
        if old and not refit_all:
            report.notes.append(
                f"the store predated feature versions: feature version 1 was fitted on all {len(rows)} "
                "pairs and their scalers refitted (from now on appends keep both)"
            )
        space, raw = _fit_space(store, texts, embedder, embed_dim, report)
        emb = space.project(raw)
    else:
        emb = space.embed(texts)
    for r, e in zip(new, emb):
        r["embedding"] = e.tolist()
    return rows, scalers, space


def _fit_space(store: TripletStore, texts: list[str], embedder: str | None, embed_dim: int | None, report):
    """A new feature version fitted on `texts` (every pair of the store), and their raw embeddings."""
    recorded = (store.manifest or {}).get("embedder") or {}
    if embedder is None and recorded.get("name"):
        emb = load_embedder({"name": recorded["name"]})
    else:
        emb = get_embedder(embedder or "auto")
    width = embed_dim or recorded.get("dim") or DEFAULT_EMBED_DIM
    raw = emb.embed(texts) if texts else np.zeros((0, emb.dim), dtype=np.float32)
    kept = store.feature_versions() if store.manifest else []
    space = fit_feature_space(raw, width, emb.info(), version=max(kept, default=0) + 1)
    if space.fit["random_directions"]:
        report.notes.append(
            f"feature version {space.version} was fitted on {len(texts)} pair(s): "
            f"{space.fit['principal_directions']} principal and {space.fit['random_directions']} fixed "
            f"random direction(s); run `tunestack store refit` once the store holds more than "
            f"{width} pairs for a full PCA basis"
        )
    return space, raw


def _write_final(
    staged: StagedVersion, parts: set[int], pairs: list[dict], scalers, row_group_size: int, runner
):
    """Phase D: each de-duplicated bucket gets pair id, scaled value and fold, sorted by
    entity/pair/period, written in row groups into the new version's folder (one task per bucket).
    Returns {file (relative to the version's folder): its size, sha256 and rows, taken as it was
    written}."""
    calls = [
        {"loc": staged.loc, "staged": staged.name, "dedup_file": scratch.dedup_file(b),
         "out_file": f"{staged.data_dir}/{bucket_file(b)}"}
        for b in sorted(parts)
    ]  # fmt: skip
    shared = {  # every pair's id and scaler, sent once (a pair's rows are in most buckets)
        "pair_ids": {(p["concept"], p["unit"]): p["pair_id"] for p in pairs},
        "scalers": scalers,
        "row_group_size": row_group_size,
    }
    records = runner.map(write_partition, calls, shared=shared, threaded=True)
    return {bucket_file(b): rec for b, rec in zip(sorted(parts), records)}
