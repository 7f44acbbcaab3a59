"""The model-side feature transform's numbers (pipeline.data.features), without Ray: packed scalers
equal the store's PairScalers row by row, unit fallbacks, the error baseline and anomaly scores."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.error_baseline import MIN_PAIR_ROWS, ErrorBaseline, anomaly_scores
from pipeline.data.packed_scalers import GLOBAL_FALLBACK, PackedScalers, fit_fallbacks
from pipeline.store.scaler import fit_scaler


def _scalers(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        fit_scaler(rng.lognormal(10, 2, 500)),  # many knots
        fit_scaler(np.asarray([3.0, 3.0, 3.0])),  # one distinct value: standard
        fit_scaler(rng.normal(0, 1, 7)),  # few knots
        fit_scaler(np.concatenate([np.zeros(50), rng.uniform(1, 2, 50)])),  # ties collapsed
    ]


def test_packed_scalers_equal_each_pair_scaler_inside_and_beyond_the_knots():
    scalers = _scalers()
    packed = PackedScalers.from_scalers(scalers)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(scalers), 5000)
    values = np.concatenate([rng.lognormal(10, 3, 4000), rng.normal(0, 5, 999), [3.0]])
    # the knots themselves, the end knots exactly, and far beyond both ends
    for i, s in enumerate(scalers):
        if s.kind != "standard":
            extra = np.concatenate([s.x, [s.x[0] - 1e6, s.x[-1] + 1e9]])
            rows = np.concatenate([rows, np.full(len(extra), i)])
            values = np.concatenate([values, extra])
    got = packed.transform(rows, values)
    want = np.array([scalers[r].transform(np.asarray([v]))[0] for r, v in zip(rows, values)])
    # the same formula as np.interp / _interp_extrapolate: equal to a few float64 ulps
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(packed.inverse(rows, got), values, rtol=1e-9, atol=1e-6)


def test_values_fed_to_the_model_are_bounded():
    """Far beyond a scaler's knots the linear extension can reach 1e15: the model is fed at most
    ±VALUE_BOUND, and the store's own scaled values are bounded the same way when streamed."""
    import pyarrow as pa

    from pipeline.data.features import ValueScaler
    from pipeline.data.packed_scalers import VALUE_BOUND, bound_values
    from pipeline.data.triplets import compact_rows

    steep = fit_scaler(np.asarray([100.0, 100.001, 100.002]))  # end segments of slope ~1e3
    packed = PackedScalers.from_scalers([steep])
    raw = packed.transform(np.zeros(3, np.int64), np.asarray([100.001, 1e9, -1e9]))
    assert abs(raw[1]) > 1e8 and abs(raw[2]) > 1e8
    scaled = ValueScaler(np.zeros(1, np.int64), packed)(
        np.zeros(3, np.int64), np.asarray([100.001, 1e9, -1e9])
    )
    np.testing.assert_array_equal(scaled, [raw[0], VALUE_BOUND, -VALUE_BOUND])
    table = pa.table(
        {
            "pair_id": pa.array([0, 0], pa.int32()),
            "scaled_value": [1.5, 1e12],
            "fold": pa.array([5, 5], pa.int16()),
        }
    )
    np.testing.assert_array_equal(
        compact_rows(table, (0, 100)).column("value").to_numpy(), [1.5, VALUE_BOUND]
    )
    assert bound_values(np.asarray([-1e300]))[0] == -VALUE_BOUND


def test_packed_scalers_round_trip_take_and_tensors():
    packed = PackedScalers.from_scalers(_scalers())
    again = PackedScalers.from_tensors(packed.tensors("s"), "s")
    sub = packed.take(np.asarray([3, 0, 0]))
    for i, j in ((0, 3), (1, 0), (2, 0)):
        assert sub.equal_rows(i, packed, j)
    assert all(again.equal_rows(i, packed, i) for i in range(len(packed)))
    assert not packed.equal_rows(0, packed, 2)
    s = packed.scaler(0)
    np.testing.assert_array_equal(s.x, _scalers()[0].x)


def test_unit_fallbacks_weigh_pairs_by_rows_and_cover_every_unit():
    rng = np.random.default_rng(0)
    small = fit_scaler(rng.normal(10, 1, 1000))
    large = fit_scaler(rng.normal(1000, 10, 1000))
    shares = fit_scaler(rng.normal(1e6, 1e5, 1000))
    packed = PackedScalers.from_scalers([small, large, shares])
    units, fallbacks = fit_fallbacks(["USD", "USD", "shares"], packed, np.asarray([900, 100, 50]))
    assert units == ["USD", "shares", GLOBAL_FALLBACK]
    usd = fallbacks.scaler(0)
    # a value between the two USD pairs sits where 200 of the 300 pseudo-sample points are below:
    # pair 0 weighs its 900 rows capped at 200 points, pair 1 its 100 rows
    z = usd.transform(np.asarray([500.0]))[0]
    from scipy.stats import norm

    assert norm.cdf(z) == pytest.approx(200 / 300, abs=0.01)
    # the global fallback covers every unit's values
    g = fallbacks.scaler(2)
    assert g.transform(np.asarray([1e6]))[0] > g.transform(np.asarray([10.0]))[0]


def test_error_baseline_rows_and_anomaly_scores():
    count = np.asarray([10, 2, 0])
    total = np.asarray([10.0, 4.0, 0.0])
    total_sq = np.asarray([10.0 + 10 * 0.25, 8.0, 0.0])  # pair 0: mean 1, var 0.25
    b = ErrorBaseline.from_sums(count, total, total_sq)
    assert b.row(0) == {"scope": "pair", "count": 10, "mean": 1.0, "std": pytest.approx(0.5)}
    # too few rows (pair 1), none (pair 2) and unknown (-1) are scored against every training row
    for k in (1, 2, -1):
        assert b.row(k)["scope"] == "global" and b.row(k)["count"] == 12
    assert MIN_PAIR_ROWS > 2
    mean, std, own = b.arrays(np.asarray([0, 1, -1]))
    assert own.tolist() == [True, False, False]
    np.testing.assert_allclose(mean, [1.0, 14 / 12, 14 / 12])
    np.testing.assert_allclose(anomaly_scores(np.asarray([2.0]), mean[:1], std[:1]), [2.0])
    # a zero spread is floored, not a division by zero
    assert np.isfinite(anomaly_scores(np.asarray([1.0]), np.asarray([0.0]), np.asarray([0.0]))).all()
    with pytest.raises(ValueError, match="no training rows"):
        ErrorBaseline.from_sums(np.zeros(2), np.zeros(2), np.zeros(2))


# ---------------------------------------------------------------------------------------------
# The transform against a store that moves on


def _store_rows(store_uri: str):
    import pyarrow.parquet as pq

    from pipeline.store.layout import TripletStore

    t = pq.read_table(TripletStore(store_uri).triplet_files(), columns=["pair_id", "value", "scaled_value"])
    return (
        t.column("pair_id").to_numpy().astype(np.int64),
        t.column("value").to_numpy(),
        t.column("scaled_value").to_numpy(),
    )


def test_a_model_trained_before_a_refit_answers_exactly_as_before(tmp_path):
    """`tunestack store refit` makes a new feature version (new basis, new scalers): the store's own
    embeddings and scaled values change, the model's inputs for the same facts do not (to the bit),
    and neither do its answers."""
    from pipeline.ingest import ingest
    from pipeline.ingest.run import refit
    from pipeline.registry.registry import Registry
    from pipeline.store.layout import TripletStore
    from pipeline.synth import write_companyfacts_json
    from serve.models import ModelHost
    from tests.support.serve_world import make_store, register, some_pairs, train_autoencoder

    store = make_store(tmp_path / "store", companies=2)
    reg = Registry(tmp_path / "registry")
    register(reg, "autoencoder", train_autoencoder(tmp_path / "ae", store, steps=50), promote=True)
    from pipeline.train.checkpoint import load_checkpoint

    reg_features = load_checkpoint(reg.get("autoencoder")["checkpoint"]).features()
    # more data (new pairs), then a refit over all of it
    doc = tmp_path / "more.json"
    write_companyfacts_json(str(doc), 4242, "Another Co", facts_per_concept=8, seed=7)
    ingest([str(doc)], store, embedder="hashed", progress=False)
    instances = [{"concept": c, "unit": u, "value": v} for c, u, v in some_pairs(store, 6)]
    instances.append({"concept": "NeverSeenAnywhere", "unit": "USD", "value": 10.0})
    host = ModelHost("autoencoder", "encode", str(reg.root))
    host.sync()
    before = host.predict(instances)
    pid, value, stored_before = _store_rows(store)
    view_before = reg_features.view(TripletStore(store).read_pairs())
    x_before = view_before.features(pid, view_before.scale(pid, value))
    emb_before = TripletStore(store).embeddings()

    refit(store, embed_dim=32)  # a new basis (even a new width) and scalers refitted on every row
    s = TripletStore(store)
    assert s.feature_version == 2
    pid2, value2, stored_after = _store_rows(store)
    order, order2 = np.lexsort((value, pid)), np.lexsort((value2, pid2))
    np.testing.assert_array_equal(pid[order], pid2[order2])
    # the refit changed the store's own features ...
    assert s.embeddings().shape[1] == 32 != emb_before.shape[1]
    assert not np.allclose(stored_after[order2], stored_before[order], atol=1e-9)
    # ... not the model's inputs for the same facts, nor its answers (a fresh load)
    features = load_checkpoint(reg.get("autoencoder")["checkpoint"]).features()
    view_after = features.view(s.read_pairs())
    x_after = view_after.features(pid2, view_after.scale(pid2, value2))
    np.testing.assert_array_equal(x_after[order2], x_before[order])
    fresh = ModelHost("autoencoder", "encode", str(reg.root))
    fresh.sync()
    assert fresh.predict(instances) == before
