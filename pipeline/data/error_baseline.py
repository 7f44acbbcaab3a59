"""The error baseline of a trained autoencoder, and the anomaly score it defines.

Filled once at the end of training (pipeline.train.baseline) and saved with the model's feature
transform: per model pair, the count, mean and std of the model's reconstruction error over its
training rows. A row's anomaly score is how many standard deviations above that typical error its
own error is; a pair with fewer than MIN_PAIR_ROWS training rows (or never seen) is scored against
the baseline over all training rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_PAIR_ROWS = 5  # a pair with fewer training rows is scored against the global error baseline
STD_FLOOR = 1e-6


@dataclass(frozen=True, eq=False)
class ErrorBaseline:
    """Per model pair row: count, mean and std of the model's reconstruction error over its
    training rows; and the same over all training rows (`overall`: count, mean, std)."""

    count: np.ndarray  # int64 [K]
    mean: np.ndarray  # float64 [K]
    std: np.ndarray  # float64 [K]
    overall: np.ndarray  # float64 [3]: count, mean, std

    @classmethod
    def from_sums(cls, count: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> ErrorBaseline:
        count = np.asarray(count, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
            std = np.sqrt(
                np.maximum(np.where(count > 0, total_sq / np.maximum(count, 1), 0.0) - mean**2, 0.0)
            )
        n = float(count.sum())
        if n == 0:
            from pipeline.data.features import FeatureError  # (features imports this module)

            raise FeatureError("no training rows to fit the error baseline on")
        g_mean = float(total.sum()) / n
        g_std = math.sqrt(max(float(total_sq.sum()) / n - g_mean**2, 0.0))
        return cls(count.astype(np.int64), mean, std, np.asarray([n, g_mean, g_std], np.float64))

    def row(self, k: int) -> dict:
        """The baseline a row of model pair k (-1: unknown) is scored against."""
        if k >= 0 and self.count[k] >= MIN_PAIR_ROWS:
            return {
                "scope": "pair",
                "count": int(self.count[k]),
                "mean": float(self.mean[k]),
                "std": float(self.std[k]),
            }
        return {
            "scope": "global",
            "count": int(self.overall[0]),
            "mean": float(self.overall[1]),
            "std": float(self.overall[2]),
        }

    def arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std, is_pair_scope) for model pair rows (-1: unknown → global), vectorised."""
        rows = np.asarray(rows, dtype=np.int64)
        safe = np.maximum(rows, 0)
        own = (rows >= 0) & (self.count[safe] >= MIN_PAIR_ROWS)
        return (
            np.where(own, self.mean[safe], self.overall[1]),
            np.where(own, self.std[safe], self.overall[2]),
            own,
        )


def anomaly_scores(error: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(error − mean) / std of the baseline it is scored against (std floored at STD_FLOOR): how
    many standard deviations above its typical training error a row's error is."""
    return (np.asarray(error, np.float64) - mean) / np.maximum(std, STD_FLOOR)
