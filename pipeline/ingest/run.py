"""`tunestack ingest`: parse → de-duplicate → fit scalers → embed pairs → swap in a new store version.

Bounded memory, whatever the number of inputs:
  A. each document is parsed on its own and appended to one of K hash buckets (by entity) on disk;
  B. bucket by bucket, new rows and the live store's rows of that bucket are de-duplicated
     (one fact per entity/taxonomy/concept/unit/start/end — or accession when a row has no
     period — the latest filing wins); per-pair counts and a bounded value sample are kept;
  C. pairs get stable ids; a pair new to the store gets a scaler fitted on its sample and an
     embedding through the store's frozen feature space, a known pair keeps both (the feature space
     is fitted only by the first ingest and by `refit`, which also refits every scaler);
  D. bucket by bucket, rows get pair id, scaled value and fold, and are written in row groups.
Everything is written into a staged version that replaces the live one only at the very end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.home import default_store_uri
from pipeline.ingest.sources import IngestError, expand_inputs, iter_documents
from pipeline.store.embed import embedder_name, get_embedder, pair_text
from pipeline.store.errors import StoreError
from pipeline.store.features import FeatureSpace, fit_feature_space, load_embedder
from pipeline.store.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_KEEP,
    DEFAULT_ROW_GROUP,
    PAIRS_FILE,
    RAW_SCHEMA,
    TRIPLET_SCHEMA,
    VAL_FOLDS,
    StagedVersion,
    TripletStore,
    bucket_file,
    bucket_of,
    fold_of,
    manifest_embedder,
    write_pairs,
)
from pipeline.store.lock import DEFAULT_WAIT
from pipeline.store.scaler import PairScaler, fit_scaler, scale_by_pair

DEFAULT_EMBED_DIM = 64
SCALER_SAMPLE = 20_000  # values kept per pair for fitting (a uniform sample beyond that)
FLUSH_ROWS = 100_000
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
    feature_version: int = 0
    new_pairs: int = 0
    skipped_documents: list[str] = field(default_factory=list)
    skipped_records: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


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
) -> IngestReport:
    """Ingest `paths` into the store at `store_uri` (default under TUNESTACK_HOME).

    `embedder` ('auto', 'minilm', 'hashed') and `embed_dim` default to the store's recorded ones
    ('auto' and 64 for a new store); naming others for an existing store is refused (StoreError):
    its feature space is frozen, and only `refit` changes it. One writer at a time: another's
    lock is waited for up to `lock_wait` seconds (then StoreLocked). The `keep` newest previous
    versions stay for readers; older ones are deleted after the commit.
    Raises IngestError on bad input unless `skip_bad`; on any failure the live store is untouched.
    """
    store = TripletStore(store_uri or default_store_uri())
    files = expand_inputs(paths)  # unreadable paths fail here, before anything is written
    with store.writing(lock_wait):
        return _write_version(
            store, files, skip_bad, embedder, embed_dim, row_group_size, progress, False, keep
        )


def refit(
    store_uri: str | None = None,
    embedder: str | None = None,
    embed_dim: int | None = None,
    row_group_size: int | None = None,
    lock_wait: float = DEFAULT_WAIT,
    keep: int = DEFAULT_KEEP,
) -> IngestReport:
    """`tunestack store refit`: a new feature version (basis fitted on every pair of the store,
    with `embedder`/`embed_dim`, default the recorded ones) and every pair's scaler refitted on
    all its rows, written as a new store version. Pair ids stay; older feature versions stay
    readable by number."""
    store = TripletStore(store_uri or default_store_uri())
    store.require()
    with store.writing(lock_wait):
        rgs = row_group_size or store.require().get("row_group_size", DEFAULT_ROW_GROUP)
        return _write_version(store, [], False, embedder, embed_dim, rgs, False, True, keep)


def _write_version(store, files, skip_bad, embedder, embed_dim, row_group_size, progress, refit, keep):
    """Stage, fill and commit one new store version (the caller holds the store's lock)."""
    t0 = time.perf_counter()
    report = IngestReport(store=store.uri, files=len(files))
    old = store.manifest
    buckets = old["buckets"] if old else DEFAULT_BUCKETS
    space = _live_feature_space(store, embedder, embed_dim, refit)  # refusals come before any write
    staged = store.stage()
    try:
        meta = _stage_raw(files, staged, buckets, skip_bad, report, progress)
        counts, samples, entities = _dedupe(store, staged, buckets, report)
        pairs, scalers, space = _build_pairs(
            store, meta, counts, samples, space, embedder, embed_dim, report, refit
        )
        triplet_files = _write_final(staged, buckets, pairs, scalers, row_group_size)
        write_pairs(staged.join(PAIRS_FILE), pairs, space.embed_dim, store.loc.fs)
        staged.drop_scratch()
        report.pairs, report.entities, report.embedder = len(pairs), len(entities), space.embedder["name"]
        inputs = (old["inputs"] if old else []) + [
            {"path": f, "ingested": time.strftime("%Y-%m-%dT%H:%M:%S")} for f in files
        ]
        if refit:
            inputs.append({"refit": space.version, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        manifest = staged.commit(
            {
                "counts": {"triplets": report.rows_after, "pairs": len(pairs), "entities": len(entities)},
                "embedder": manifest_embedder(space),
                "buckets": buckets,
                "row_group_size": row_group_size,
                "val_folds": VAL_FOLDS,
                "triplet_files": triplet_files,
                "inputs": inputs,
            },
            space,
            keep,
        )
    except BaseException:
        staged.abort()
        raise
    report.store_version, report.feature_version = manifest["version"], space.version
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _stage_raw(files, staged: StagedVersion, buckets: int, skip_bad, report, progress) -> dict:
    """Phase A: parse every document into per-bucket raw Parquet files; return pair labels."""
    writers: dict[int, pq.ParquetWriter] = {}
    pending: dict[int, list[pa.Table]] = {}
    meta: dict[tuple[str, str], tuple] = {}
    show = sys.stderr.isatty() if progress is None else progress
    closing = contextlib.ExitStack()  # closes every writer, even when one close fails (a full disk)

    def flush(b: int) -> None:
        if b not in writers:
            writers[b] = pq.ParquetWriter(
                staged.join(bucket_file("raw", b)), RAW_SCHEMA, filesystem=staged.loc.fs
            )
            closing.callback(writers[b].close)
        writers[b].write_table(pa.concat_tables(pending.pop(b)))

    with closing:
        for path in tqdm(files, desc="ingest", unit="file", disable=not show):
            try:
                for doc in iter_documents(path, skip_bad):
                    report.skipped_records += 0 if doc.failed else len(doc.skipped)
                    report.skipped_examples += [
                        str(e) for e in doc.skipped[: max(0, 5 - len(report.skipped_examples))]
                    ]
                    if doc.failed:
                        report.skipped_documents.append(str(doc.skipped[0]))
                        continue
                    report.documents += 1
                    if doc.table.num_rows == 0:
                        continue
                    report.rows_read += doc.table.num_rows
                    for key, (label, desc) in doc.pair_meta.items():
                        if key not in meta or (meta[key][0] is None and label):
                            meta[key] = (label, desc)
                    b = bucket_of(doc.table.column("entity_id")[0].as_py(), buckets)
                    pending.setdefault(b, []).append(doc.table)
                    if sum(t.num_rows for t in pending[b]) >= FLUSH_ROWS:
                        flush(b)
            except IngestError as e:
                if not skip_bad:
                    raise
                report.skipped_documents.append(str(e))
        for b in list(pending):
            flush(b)
    return meta


def _dedupe(store: TripletStore, staged: StagedVersion, buckets: int, report):
    """Phase B: merge each bucket's new rows with the live store's, keep the latest filing."""
    fs = store.loc.fs
    counts: dict[tuple[str, str], int] = {}
    samples = pd.DataFrame({"concept": [], "unit": [], "value": [], "prio": []})
    entities: set[str] = set()
    old_files = set(store.manifest["triplet_files"]) if store.manifest else set()
    for b in range(buckets):
        parts = []
        raw = bucket_file("raw", b)
        if staged.exists(raw):
            parts.append(pq.read_table(staged.join(raw), filesystem=fs))
        old_name = bucket_file("triplets", b)
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
        pq.write_table(t, staged.join(bucket_file("dedup", b)), filesystem=fs)
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
    samples: pd.DataFrame,
    space: FeatureSpace | None,
    embedder: str | None,
    embed_dim: int | None,
    report: IngestReport,
    refit_all: bool = False,
):
    """Phase C: stable pair ids; kept scalers and embeddings for known pairs (when `space` is the
    live feature space), fitted ones for new pairs; with `space` None, a new feature space fitted
    on every pair and every scaler refitted (first ingest, refit)."""
    old = {}
    if store.manifest:
        for row in store.read_pairs().to_pylist():
            old[(row["concept"], row["unit"])] = row
    next_id = max((r["pair_id"] for r in old.values()), default=-1) + 1
    by_pair = {k: g["value"].to_numpy() for k, g in samples.groupby(["concept", "unit"], sort=False)}
    rows, scalers, new = [], {}, []
    for key in sorted(counts):
        if space is not None and key in old:  # frozen: the pair's scaler, embedding and text stay
            row = {**old[key], "count": counts[key]}
            scalers[row["pair_id"]] = PairScaler.from_row(row)
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
        rows.append({**row, "count": counts[key], **scaler.to_row()})
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
        rel = bucket_file("dedup", b)
        if not staged.exists(rel):
            continue
        t = pq.read_table(staged.join(rel), filesystem=fs).join(
            ids, keys=["concept", "unit"], join_type="inner"
        )
        pair_id = t.column("pair_id").to_numpy()
        scaled = scale_by_pair(pair_id, t.column("value").to_numpy(), scalers)
        t = t.append_column("scaled_value", pa.array(scaled)).append_column("fold", _fold(t.column("accn")))
        t = t.select(TRIPLET_SCHEMA.names).cast(TRIPLET_SCHEMA)
        t = t.sort_by([("entity_id", "ascending"), ("pair_id", "ascending"), ("period_end", "ascending")])
        name = bucket_file("triplets", b)
        pq.write_table(t, staged.join(name), filesystem=fs, row_group_size=row_group_size)
        written.append(name)
    return written


def _fold(accn: pa.ChunkedArray) -> pa.Array:
    """crc32(accession) % VAL_FOLDS: every fact of one filing lands in the same fold."""
    accn = pc.fill_null(accn, "")
    uniq = pc.unique(accn)
    folds = pa.array([fold_of(a) for a in uniq.to_pylist()], pa.int16())
    return pc.take(folds, pc.index_in(accn, value_set=uniq))
