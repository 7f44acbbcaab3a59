import numpy as np
import pytest

from pipeline.store.scaler import (
    PairScaler,
    _sorted_quantiles,
    fit_scaler,
    scale_by_pair,
    scalers_of,
    unscale_by_pair,
)


def heavy_tailed(n, seed=0):
    rng = np.random.default_rng(seed)
    v = np.sign(rng.normal(size=n)) * np.exp(rng.normal(18, 3, size=n))
    v[: n // 10] = 0.0  # many exact ties, as real filings have
    return np.round(v)


@pytest.mark.parametrize("n", [2, 7, 999, 5000])
def test_inverse_is_exact_to_1e6_relative(n):
    v = heavy_tailed(n)
    s = fit_scaler(v)
    back = s.inverse(s.transform(v))
    np.testing.assert_allclose(back, v, rtol=1e-6, atol=1e-9)


def test_scaled_values_are_roughly_standard_normal():
    v = heavy_tailed(20_000)[2000:]  # drop the zeros
    z = fit_scaler(v).transform(v)
    assert abs(np.median(z)) < 0.05 and 0.9 < np.std(z) < 1.1


def test_transform_is_strictly_monotone_and_extrapolates_invertibly():
    v = heavy_tailed(3000)
    s = fit_scaler(v)
    grid = np.linspace(v.min() * 3, v.max() * 3, 10_001)
    z = s.transform(grid)
    assert np.all(np.diff(z) > 0)
    np.testing.assert_allclose(s.inverse(z), grid, rtol=1e-6, atol=1e-3)


def test_quantile_count_capped_at_1000():
    s = fit_scaler(np.arange(50_000, dtype=float))
    assert s.kind == "quantile_normal" and len(s.x) == 1000


@pytest.mark.parametrize("seed", range(6))
def test_knots_are_numpys_quantiles_bit_for_bit(seed):
    """The knots come from numpy's default quantile method, computed from the sorted values directly
    (the same IEEE operations in the same order): equal to the last bit, as every store's recorded
    scalers (and the ingest golden) depend on them."""
    rng = np.random.default_rng(seed)
    for n in (2, 3, 999, 1000, 1001, int(rng.integers(2, 25_000))):
        for v in (heavy_tailed(n, seed), rng.integers(-4, 4, n).astype(float), rng.standard_cauchy(n) * 1e12):
            v = np.sort(v)
            p = np.linspace(0.0, 1.0, min(1000, n))
            np.testing.assert_array_equal(_sorted_quantiles(v, p), np.quantile(v, p))


def test_single_value_falls_back_to_standard_scaler():
    s = fit_scaler(np.array([42.0, 42.0, 42.0]))
    assert s.kind == "standard"
    np.testing.assert_allclose(s.inverse(s.transform(np.array([42.0, 50.0]))), [42.0, 50.0])


def test_row_roundtrip_is_plain_numbers():
    s = fit_scaler(heavy_tailed(100))
    row = s.to_row()
    assert all(isinstance(x, float) for x in row["scaler_x"])
    t = PairScaler.from_row(row)
    np.testing.assert_array_equal(t.transform(s.x), s.transform(s.x))


def test_scale_by_pair_uses_each_rows_own_scaler():
    a, b = fit_scaler(np.arange(10.0)), fit_scaler(np.arange(10.0) * 1000)
    ids = np.array([0, 1, 0, 1])
    vals = np.array([5.0, 5000.0, 9.0, 9000.0])
    z = scale_by_pair(ids, vals, {0: a, 1: b})
    np.testing.assert_allclose(z[:2], z[0])  # same rank in each pair's own distribution
    np.testing.assert_allclose(unscale_by_pair(ids, z, {0: a, 1: b}), vals)


def test_fit_rejects_non_finite():
    with pytest.raises(ValueError):
        fit_scaler(np.array([1.0, np.nan]))


def test_scalers_of_a_pairs_table_are_those_of_its_rows():
    import pyarrow as pa

    fitted = [fit_scaler(heavy_tailed(50 + 40 * i)) for i in range(4)] + [fit_scaler(np.array([3.0, 3.0]))]
    rows = [{"pair_id": 10 + i, **s.to_columns()} for i, s in enumerate(fitted)]
    rows[4]["scaler_x"] = rows[4]["scaler_z"] = None  # a standard scaler's knots read back as null
    table = pa.Table.from_pylist(rows)
    table = pa.concat_tables([table.slice(0, 1), table.slice(1, 2), table.slice(3)])  # chunked, sliced
    got = scalers_of(table)
    assert list(got) == [10, 11, 12, 13, 14]
    for row in table.to_pylist():
        want, have = PairScaler.from_row(row), got[row["pair_id"]]
        assert (have.kind, have.mean, have.std) == (want.kind, want.mean, want.std)
        np.testing.assert_array_equal(have.x, want.x)  # the same float64 values, bit for bit
        np.testing.assert_array_equal(have.z, want.z)
        assert have.x.dtype == np.float64 and have.x.shape == want.x.shape
