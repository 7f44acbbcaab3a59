"""Pair scalers packed as flat arrays: many PairScalers (pipeline.store.scaler) applied at once.

A model's feature transform (pipeline.data.features) keeps its pairs' scalers, and a fallback per
unit for pairs it never saw, in this form: one set of arrays instead of a dict of objects, so a
batch of rows with different scalers is scaled with one vectorised call, and the arrays go into
safetensors as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FALLBACK_POINTS = 200  # pseudo-sample points per pair when fitting a unit's fallback scaler
GLOBAL_FALLBACK = "*"  # the fallback scaler over every unit, for a unit never seen in training
# |scaled value| fed to the model at most. A pair's scaler maps its training values into about
# ±5.2 (normal scores of its quantiles) and extends its end segments linearly beyond them, so a
# value far outside the range its scaler was fitted on — a company larger than any the pair was
# first seen with — can come out at 1e15. Bounded, it still looks extreme (the model never saw
# beyond ±5.2) without drowning every other number the model computes.
VALUE_BOUND = 8.0
STANDARD, QUANTILE = 0, 1


# ---------------------------------------------------------------------------------------------
# Scalers, packed: one set of flat arrays instead of a dict of objects


@dataclass(frozen=True, eq=False)
class PackedScalers:
    """Many PairScalers as flat arrays: scaler i has knots x[offsets[i]:offsets[i+1]] (and z), or
    (kind STANDARD) mean[i], std[i]. `transform(i, v)` equals `PairScaler.transform` row by row,
    vectorised over rows with different scalers (a binary search within each row's own knots)."""

    kind: np.ndarray  # int8 [m]
    mean: np.ndarray  # float64 [m]
    std: np.ndarray  # float64 [m]
    offsets: np.ndarray  # int64 [m + 1]
    x: np.ndarray  # float64 [knots]
    z: np.ndarray  # float64 [knots]

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def from_scalers(cls, scalers) -> PackedScalers:
        scalers = list(scalers)
        sizes = [len(s.x) if s.kind != "standard" else 0 for s in scalers]
        return cls(
            kind=np.asarray([STANDARD if s.kind == "standard" else QUANTILE for s in scalers], np.int8),
            mean=np.asarray([s.mean for s in scalers], np.float64),
            std=np.asarray([s.std for s in scalers], np.float64),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            x=np.concatenate([s.x for s in scalers if s.kind != "standard"] or [np.empty(0)]).astype(
                np.float64
            ),
            z=np.concatenate([s.z for s in scalers if s.kind != "standard"] or [np.empty(0)]).astype(
                np.float64
            ),
        )

    def scaler(self, i: int):
        """Scaler i as a PairScaler."""
        from pipeline.store.scaler import PairScaler

        lo, hi = self.offsets[i], self.offsets[i + 1]
        kind = "standard" if self.kind[i] == STANDARD else "quantile_normal"
        return PairScaler(
            kind, self.x[lo:hi].copy(), self.z[lo:hi].copy(), float(self.mean[i]), float(self.std[i])
        )

    def take(self, idx: np.ndarray) -> PackedScalers:
        """The scalers idx[0], idx[1], … (repeats allowed) as a new PackedScalers."""
        idx = np.asarray(idx, dtype=np.int64)
        sizes = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        knots = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            if len(idx)
            else np.empty(0, np.int64)
        ).astype(np.int64)
        return PackedScalers(
            self.kind[idx], self.mean[idx], self.std[idx], offsets, self.x[knots], self.z[knots]
        )

    def transform(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float64: values[k] scaled with scaler rows[k]."""
        return self._apply(rows, values, self.x, self.z, inverse=False)

    def inverse(self, rows: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """float64: the exact inverse of `transform`."""
        return self._apply(rows, scaled, self.z, self.x, inverse=True)

    def _apply(self, rows, values, xp_all, fp_all, inverse: bool) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        out = np.empty(len(v), dtype=np.float64)
        std_rows = self.kind[rows] == STANDARD
        if std_rows.any():
            r, s = rows[std_rows], v[std_rows]
            out[std_rows] = s * self.std[r] + self.mean[r] if inverse else (s - self.mean[r]) / self.std[r]
        q = ~std_rows
        if q.any():
            out[q] = _interp_rows(v[q], self.offsets[rows[q]], self.offsets[rows[q] + 1], xp_all, fp_all)
        return out

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": getattr(self, k) for k in ("kind", "mean", "std", "offsets", "x", "z")}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> PackedScalers:
        return cls(
            **{k: np.asarray(tensors[f"{prefix}.{k}"]) for k in ("kind", "mean", "std", "offsets", "x", "z")}
        )

    def equal_rows(self, i: int, other: PackedScalers, j: int) -> bool:
        """Scaler i of self and scaler j of `other` are the same numbers."""
        a, b = self.offsets[i : i + 2], other.offsets[j : j + 2]
        return bool(
            self.kind[i] == other.kind[j]
            and self.mean[i] == other.mean[j]
            and self.std[i] == other.std[j]
            and np.array_equal(self.x[a[0] : a[1]], other.x[b[0] : b[1]])
            and np.array_equal(self.z[a[0] : a[1]], other.z[b[0] : b[1]])
        )


def _interp_rows(v, lo, hi, xp, fp) -> np.ndarray:
    """np.interp of each v[k] on its own knots xp[lo[k]:hi[k]] (≥ 2 knots, increasing), extended
    linearly beyond the end knots — as pipeline.store.scaler._interp_extrapolate, vectorised."""
    # j = the last knot <= v within [lo, hi - 2] (binary search, all rows at once)
    left, right = lo.copy(), hi - 2
    while True:
        active = left < right
        if not active.any():
            break
        mid = (left + right + 1) // 2
        go_right = active & (xp[mid] <= v)
        left = np.where(go_right, mid, left)
        right = np.where(active & ~go_right, mid - 1, right)
    j = left
    x0, x1, f0, f1 = xp[j], xp[j + 1], fp[j], fp[j + 1]
    out = (f1 - f0) / (x1 - x0) * (v - x0) + f0  # np.interp's own formula inside the range
    below = v < xp[lo]
    if below.any():  # as _interp_extrapolate: fp[0] + (v - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
        out[below] = f0[below] + (v[below] - x0[below]) * (f1[below] - f0[below]) / (x1[below] - x0[below])
    above = v > xp[hi - 1]
    if above.any():
        out[above] = f1[above] + (v[above] - x1[above]) * (f1[above] - f0[above]) / (x1[above] - x0[above])
    exact_top = v == xp[hi - 1]  # np.interp returns the last knot's value exactly there
    out[exact_top] = f1[exact_top]
    return out


def fit_fallbacks(
    units: list[str], scalers: PackedScalers, counts: np.ndarray
) -> tuple[list[str], PackedScalers]:
    """A scaler per unit (and GLOBAL_FALLBACK over all), each fitted on a pseudo-sample of the
    values of that unit's pairs: min(count, FALLBACK_POINTS) points of each pair's fitted quantile
    function, so a pair weighs in proportion to its rows (up to the cap)."""
    from pipeline.store.scaler import fit_scaler

    samples: dict[str, list[np.ndarray]] = {}
    for i, unit in enumerate(units):
        k = int(max(1, min(int(counts[i]), FALLBACK_POINTS)))
        s = scalers.scaler(i)
        if s.kind == "standard":
            points = np.full(k, s.mean)
        else:
            from scipy.special import ndtri

            p = (np.arange(k) + 0.5) / k
            points = s.inverse(np.clip(ndtri(p), s.z[0], s.z[-1]))
        samples.setdefault(unit, []).append(points)
    names = sorted(samples)
    fitted = [fit_scaler(np.concatenate(samples[u])) for u in names]
    if names:
        fitted.append(fit_scaler(np.concatenate([np.concatenate(samples[u]) for u in names])))
    else:
        from pipeline.store.scaler import PairScaler

        fitted.append(PairScaler("standard", np.empty(0), np.empty(0), 0.0, 1.0))
    return names + [GLOBAL_FALLBACK], PackedScalers.from_scalers(fitted)


def concat_scalers(a: PackedScalers, b: PackedScalers) -> PackedScalers:
    return PackedScalers(
        kind=np.concatenate([a.kind, b.kind]),
        mean=np.concatenate([a.mean, b.mean]),
        std=np.concatenate([a.std, b.std]),
        offsets=np.concatenate([a.offsets, a.offsets[-1] + b.offsets[1:]]),
        x=np.concatenate([a.x, b.x]),
        z=np.concatenate([a.z, b.z]),
    )


def store_scalers(pairs) -> tuple[np.ndarray, PackedScalers]:
    """(pair ids, their scalers packed in the same order) of a store's pairs table."""
    from pipeline.store.scaler import scalers_of

    ids = np.asarray(pairs.column("pair_id").to_numpy(), np.int64)
    return ids, PackedScalers.from_scalers(scalers_of(pairs).values())  # in the table's order


def bound_values(scaled: np.ndarray) -> np.ndarray:
    """Scaled values clipped to ±VALUE_BOUND: what the model is fed."""
    return np.clip(scaled, -VALUE_BOUND, VALUE_BOUND)
