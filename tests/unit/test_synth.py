"""Synthetic data: stores valid at any size, routing logs with a known rule, companyfacts that
ingest de-duplicates to the advertised count."""

import gzip
import json
import math
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import synth
from pipeline.ingest import ingest
from pipeline.store.layout import TRIPLET_SCHEMA, VAL_FOLDS, TripletStore, pairs_schema
from pipeline.store.scaler import scale_by_pair, unscale_by_pair
from pipeline.synth import routing_rule, synth_gaap, synth_routing, write_companyfacts_json

FACT_KEY = ["entity_id", "concept", "unit", "period_start", "period_end"]


@pytest.fixture(scope="module")
def gaap(tmp_path_factory):
    """A 50k-row store written in small row groups and small chunks, so that chunking and
    row-group splitting are both exercised."""
    uri = str(tmp_path_factory.mktemp("gaap") / "store")
    mp = pytest.MonkeyPatch()
    mp.setattr(synth, "CHUNK_ROWS", 10_000)
    try:
        summary = synth_gaap(uri, 50_000, seed=3, row_group_size=4096)
    finally:
        mp.undo()
    store = TripletStore(uri)
    table = pq.read_table(store.triplet_files(), filesystem=store.loc.fs)
    return summary, store, table


def test_gaap_store_is_complete_and_exact(gaap):
    summary, store, table = gaap
    m = store.manifest
    assert table.num_rows == summary["triplets"] == m["counts"]["triplets"] == 50_000
    assert table.schema == TRIPLET_SCHEMA
    assert {
        "counts",
        "embedder",
        "buckets",
        "row_group_size",
        "val_folds",
        "triplet_files",
        "inputs",
    } <= m.keys()
    assert m["inputs"][0]["synth"]["triplets"] == 50_000 and m["row_group_size"] == 4096
    pairs = store.read_pairs()
    assert pairs.schema == pairs_schema(64) and m["counts"]["pairs"] == pairs.num_rows >= 400
    assert sum(pairs.column("count").to_pylist()) == 50_000
    assert m["counts"]["entities"] == len(set(table.column("entity_id").to_pylist()))
    for path in store.triplet_files():  # whole row groups except each file's last
        md = pq.ParquetFile(path, filesystem=store.loc.fs).metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        assert all(s == 4096 for s in sizes[:-1]) and 0 < sizes[-1] <= 4096


def test_gaap_facts_unique_and_rows_consistent(gaap):
    _, store, table = gaap
    df = table.to_pandas()
    assert not df.duplicated(FACT_KEY).any()
    accn = df["accn"].unique()
    fold = {a: zlib.crc32(a.encode()) % VAL_FOLDS for a in accn}
    assert (df["fold"].to_numpy() == df["accn"].map(fold).to_numpy()).all()
    assert df.groupby("accn")["entity_id"].nunique().max() == 1  # a filing belongs to one entity
    assert (df["period_start"].isna() | (df["period_start"] < df["period_end"])).all()
    assert (df["filed"] > df["period_end"]).all()
    # Every entity's rows land in the bucket its id hashes to.
    for b, name in store.bucket_files().items():
        ids = pq.read_table(store.loc.join(name), columns=["entity_id"]).column(0).unique()
        assert all(zlib.crc32(e.encode()) % 16 == b for e in ids.to_pylist())


def test_gaap_scaled_values_invert_through_stored_scalers(gaap):
    _, store, table = gaap
    scalers = store.scalers()
    pid = table.column("pair_id").to_numpy()
    value, scaled = table.column("value").to_numpy(), table.column("scaled_value").to_numpy()
    np.testing.assert_allclose(scale_by_pair(pid, value, scalers), scaled, rtol=0, atol=1e-9)
    np.testing.assert_allclose(unscale_by_pair(pid, scaled, scalers), value, rtol=1e-9, atol=1e-6)
    # Fitted on the generating distribution: the scaled values are roughly standard normal.
    assert abs(scaled.mean()) < 0.1 and 0.8 < scaled.std() < 1.2


def test_gaap_values_heavy_tailed_and_unit_shaped(gaap):
    _, _, table = gaap
    df = table.to_pandas()
    usd = df[df.unit == "USD"]["value"].abs()
    assert usd.max() / usd[usd > 0].median() > 1e3  # spans orders of magnitude
    assert (df[df.unit == "USD"]["value"] < 0).mean() > 0.01  # some pairs go negative
    shares = df[df.unit == "shares"]["value"]
    assert (shares == np.round(shares)).all() and (shares >= 0).all()
    pure = df[df.unit == "pure"]["value"]
    assert pure.between(0, 1).all()
    counts = df["pair_id"].value_counts()
    assert counts.iloc[0] > 10 * counts.iloc[-1]  # Zipf-like: a head of common pairs, a long tail


def test_gaap_deterministic_whatever_the_chunking(gaap, tmp_path):
    _, _, table = gaap  # written in 10k-row chunks; this one in the default 256k
    again = str(tmp_path / "again")
    synth_gaap(again, 50_000, seed=3, row_group_size=4096)
    assert pq.read_table(TripletStore(again).triplet_files()).equals(table)


@pytest.fixture(scope="module")
def companyfacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cf")
    n1 = write_companyfacts_json(str(d / "one.json.gz"), 320193, "Synthetic One Inc.", seed=1)
    n2 = write_companyfacts_json(
        str(d / "two.json"), 789019, "Synthetic Two Corp.", facts_per_concept=12, seed=2
    )
    return d, n1, n2


def _fact_rows(doc):
    return [
        (tax, concept, unit, f)
        for tax, concepts in doc["facts"].items()
        for concept, body in concepts.items()
        for unit, facts in body["units"].items()
        for f in facts
    ]


def test_companyfacts_is_format_faithful_with_rereported_facts(companyfacts):
    d, n1, _ = companyfacts
    with gzip.open(d / "one.json.gz") as f:
        doc = json.load(f)
    assert doc["cik"] == 320193 and doc["entityName"] == "Synthetic One Inc."
    assert {"us-gaap", "dei"} <= doc["facts"].keys()
    body = doc["facts"]["us-gaap"]["Revenues"]
    assert body["label"] and body["description"] and "USD" in body["units"]
    rows = _fact_rows(doc)
    assert all({"end", "val", "accn", "fy", "fp", "form", "filed"} <= f.keys() for *_, f in rows)
    by_fact: dict = {}
    for tax, c, u, f in rows:
        by_fact.setdefault((tax, c, u, f.get("start"), f["end"]), []).append(f)
    assert len(by_fact) == n1 < len(rows)  # re-reported facts are there
    assert any(len({f["val"] for f in fs}) > 1 for fs in by_fact.values())  # and some were restated


def test_companyfacts_ingest_keeps_exactly_the_unique_facts(companyfacts, tmp_path):
    d, n1, n2 = companyfacts
    report = ingest(
        [str(d / "one.json.gz"), str(d / "two.json")], str(tmp_path / "s"), embedder="hashed", progress=False
    )
    assert report.rows_after == n1 + n2
    assert report.duplicates_dropped == report.rows_read - (n1 + n2) > 0
    # The latest filing's (possibly restated) value is the one kept.
    with gzip.open(d / "one.json.gz") as f:
        doc = json.load(f)
    latest = {}
    for _tax, c, u, f in _fact_rows(doc):
        key = (c, u, f.get("start"), f["end"])
        if key not in latest or (f["filed"], f["accn"]) > (latest[key]["filed"], latest[key]["accn"]):
            latest[key] = f
    store = TripletStore(str(tmp_path / "s"))
    df = pq.read_table(store.triplet_files()).to_pandas()
    df = df[df.entity_id == "0000320193"]
    got = {
        (
            r.concept,
            r.unit,
            None if r.period_start is None else str(r.period_start),
            str(r.period_end),
        ): r.value
        for r in df.itertuples()
    }
    assert got == {k: float(f["val"]) for k, f in latest.items()}


def test_gaap_reuses_pairs_of_a_given_store(companyfacts, tmp_path):
    d, _, _ = companyfacts
    src = str(tmp_path / "src")
    ingest([str(d / "one.json.gz"), str(d / "two.json")], src, embedder="hashed", progress=False)
    out = str(tmp_path / "out")
    summary = synth_gaap(out, 20_000, from_store=src, seed=1)
    cols = ["pair_id", "concept", "unit", "label", "description", "embedding"]
    a, b = TripletStore(src).read_pairs(), TripletStore(out).read_pairs()
    assert b.select(cols).equals(a.select(cols))
    assert summary["triplets"] == 20_000
    store = TripletStore(out)
    assert store.manifest["embedder"] == TripletStore(src).manifest["embedder"]
    assert store.manifest["inputs"][0]["synth"]["from_store"] == src
    t = pq.read_table(store.triplet_files()).to_pandas()
    assert not t.duplicated(FACT_KEY).any()
    assert set(t.taxonomy) == {"us-gaap", "dei"}
    # Values follow the source pair's distribution: Revenues stays in the source's order of magnitude.
    src_rev = (
        pq.read_table(TripletStore(src).triplet_files()).to_pandas().query("concept == 'Revenues'")["value"]
    )
    syn_rev = t.query("concept == 'Revenues'")["value"]
    assert 0.1 < syn_rev.median() / src_rev.median() < 10


def test_routing_label_follows_rule_up_to_noise(tmp_path):
    meta = synth_routing(str(tmp_path), 200_000, seed=2, noise=0.1)
    t = pq.read_table(tmp_path / "routing.parquet")
    assert t.column_names == synth.ROUTING_FEATURES + ["label"]
    assert all(str(t.schema.field(k).type) == "float" for k in synth.ROUTING_FEATURES)
    assert str(t.schema.field("label").type) == "int8"
    cols = {k: t.column(k).to_numpy() for k in t.column_names}
    agree = (routing_rule(cols) == cols["label"]).mean()
    assert abs(agree - 0.9) < 0.005  # 4.7 standard errors at n = 200k
    for k in ("similarity", "success_rate", "metadata_match", "recency"):
        assert cols[k].min() >= 0.0 and cols[k].max() <= 1.0
    assert cols["frequency"].min() >= 0 and (cols["frequency"] == np.round(cols["frequency"])).all()
    assert 0.3 < cols["label"].mean() < 0.7
    on_disk = json.loads((tmp_path / "routing.json").read_text())
    assert on_disk == meta
    assert on_disk["bayes_accuracy"] == pytest.approx(0.9) and on_disk["noise"] == 0.1
    assert (
        on_disk["rows"] == 200_000 and on_disk["seed"] == 2 and on_disk["features"] == synth.ROUTING_FEATURES
    )
    assert "similarity" in on_disk["rule"]


def test_routing_streams_in_chunks_and_noise_zero_is_the_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "ROUTING_CHUNK", 7_000)
    synth_routing(str(tmp_path), 30_000, seed=1, noise=0.0)
    f = pq.ParquetFile(tmp_path / "routing.parquet")
    assert f.metadata.num_rows == 30_000 and f.metadata.num_row_groups == 5
    t = f.read()
    assert (
        routing_rule({k: t.column(k).to_numpy() for k in synth.ROUTING_FEATURES})
        == t.column("label").to_numpy()
    ).all()


def test_default_routing_logs_draw_labels_from_a_feature_dependent_probability(tmp_path):
    """Easy and hard requests: the label rate in each band of the true probability matches it, the
    band's spread covers both, and the oracle's cost-quality curve is written beside the logs."""
    meta = synth_routing(str(tmp_path), 100_000, seed=3)
    assert meta["difficulty"] == "features" and meta["noise"] is None
    t = pq.read_table(tmp_path / "routing.parquet")
    cols = {k: t.column(k).to_numpy() for k in t.column_names}
    p = synth.routing_probability(cols)
    y = cols["label"]
    for lo, hi in ((0.0, 0.05), (0.45, 0.55), (0.95, 1.0)):
        band = (p >= lo) & (p < hi)
        assert band.mean() > 0.03, (lo, hi)  # easy (both ends) and hard (the middle) requests exist
        # the drawn labels follow the probability: within 5 standard errors of the band's mean
        se = math.sqrt(p[band].mean() * (1 - p[band].mean()) / band.sum()) + 1e-3
        assert abs(y[band].mean() - p[band].mean()) < 5 * se, (lo, hi)
    # difficulty depends on the features: full metadata match is more predictable than none
    conf = np.maximum(p, 1 - p)
    assert conf[cols["metadata_match"] == 1.0].mean() > conf[cols["metadata_match"] == 0.0].mean() + 0.03
    oracle = json.loads((tmp_path / synth.ORACLE_FILE).read_text())
    assert oracle["apgr"] == meta["oracle_apgr"] and 0.6 < oracle["apgr"] < 1.0
    assert oracle["share"][0] == 0.0 and oracle["share"][-1] == 1.0 and oracle["pgr"][0] == 1.0
    assert meta["bayes_accuracy"] == pytest.approx(conf.mean(), abs=1e-9)
    assert synth.oracle_probability(cols, meta) == pytest.approx(p)


def test_routing_noise_belongs_to_the_uniform_logs_only(tmp_path):
    with pytest.raises(ValueError, match="noise applies to difficulty 'uniform' only"):
        synth_routing(str(tmp_path), 100, noise=0.1, difficulty="features")
    with pytest.raises(ValueError, match="difficulty must be one of"):
        synth_routing(str(tmp_path), 100, difficulty="hard")
    meta = synth_routing(str(tmp_path), 1000, difficulty="uniform")
    assert meta["noise"] == 0.1 and meta["difficulty"] == "uniform"
