"""`tunestack score`'s per-block code without Ray: a block of store rows scored by EncodeScorer
equals /v1/encode's answers for the same facts; bad arguments are refused before anything runs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small store, an autoencoder registered on it, and every store row scored in-process by
    the score pipeline's own pieces (read → compact_rows with the model's scaler → EncodeScorer)."""
    from pipeline.data.triplets import compact_rows, read_columns
    from pipeline.registry.registry import Registry
    from pipeline.store.layout import TripletStore
    from pipeline.train.checkpoint import load_checkpoint
    from serve.score import KEY_COLUMNS, EncodeScorer
    from tests.support.serve_world import make_store, register, train_autoencoder

    tmp = tmp_path_factory.mktemp("score")
    store = make_store(tmp / "store")
    reg = Registry(tmp / "registry")
    register(reg, "autoencoder", train_autoencoder(tmp / "ae", store, steps=50), promote=True)
    ckpt = load_checkpoint(reg.get("autoencoder")["checkpoint"])
    features = ckpt.features()
    view = features.view(TripletStore(store).read_pairs())
    mean, std, _ = features.baseline.arrays(view.rows)
    scorer = EncodeScorer(ckpt.path, view.embeddings, view.known, mean, std)
    scale = view.value_scaler()
    blocks = []
    for path in TripletStore(store).triplet_files():
        f = pq.ParquetFile(path)
        for rg in range(f.metadata.num_row_groups):
            table = f.read_row_group(rg, columns=read_columns(scale, KEY_COLUMNS))
            blocks.append(scorer(compact_rows(table, (0, 100), scale, KEY_COLUMNS)))
    import pyarrow as pa

    return {"registry": reg, "scores": pa.concat_tables(blocks).to_pandas(), "store": store}


def test_scored_rows_equal_the_encode_endpoints_answers(scored):
    from serve.models import ModelHost

    rows = scored["scores"].drop_duplicates(["concept", "unit"]).head(12)
    host = ModelHost("autoencoder", "encode", str(scored["registry"].root))
    host.sync()
    answers = host.predict(
        [{"concept": r.concept, "unit": r.unit, "value": float(r.value)} for r in rows.itertuples()]
    )
    # the same float32 inputs through the same model, in batches of different sizes: float32
    # rounding of the matrix products (~1e-7 relative) is all that may differ
    np.testing.assert_allclose(np.stack(rows["latent"]), [a["latent"] for a in answers], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        rows["reconstruction_error"], [a["reconstruction_error"] for a in answers], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        rows["anomaly_score"], [a["anomaly_score"] for a in answers], rtol=1e-4, atol=1e-4
    )
    assert rows["pair_known"].all() and all(a["pair_known"] for a in answers)


def test_every_store_row_is_scored_once_with_its_key(scored):
    from pipeline.store.layout import TripletStore

    df = scored["scores"]
    assert len(df) == TripletStore(scored["store"]).require()["counts"]["triplets"]
    key = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn"]
    assert not df.duplicated(key).any()
    assert np.isfinite(np.stack(df["latent"])).all() and np.isfinite(df["anomaly_score"]).all()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--model", "autoencoder:v0001", "--out", "scores.csv"], "expected a .parquet file path"),
        (["--model", "nosuch:v0001", "--out", "scores.parquet"], "nosuch:v0001"),
    ],
)
def test_score_refuses_bad_arguments_before_anything_runs(args, fragment, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["score", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunestack score: ") and fragment in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob(".*partial*"))  # nothing written


def test_scored_routes_equal_the_route_endpoints_answers(tmp_path):
    """A block of routing logs scored by RouteScorer decides exactly as Serve's router host."""
    from pipeline.registry.registry import Registry
    from pipeline.synth import synth_routing
    from serve.models import ModelHost
    from serve.score import RouteScorer
    from tests.support.serve_world import register, train_router

    reg = Registry(tmp_path / "registry")
    register(reg, "router", train_router(tmp_path / "r1", steps=60), promote=True)
    synth_routing(str(tmp_path / "routing"), 300, seed=3)
    table = pq.read_table(tmp_path / "routing" / "routing.parquet")
    scorer = RouteScorer(reg.get("router")["checkpoint"], "router:v0001")
    out = scorer(table).to_pandas()
    host = ModelHost("router", "route", str(reg.root))
    host.sync()
    names = host.predictor.features
    answers = host.predict([{"features": {n: float(getattr(r, n)) for n in names}} for r in out.itertuples()])
    assert len(out) == 300 and set(table.column_names) <= set(out.columns)
    assert out["route"].tolist() == [a["route"] for a in answers]
    np.testing.assert_allclose(out["probability"], [a["probability"] for a in answers], rtol=1e-6, atol=1e-7)
