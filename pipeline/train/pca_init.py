"""Start an autoencoder's linear maps at the PCA of the training rows (`model.init: pca`).

One pass over the worker's train shard sums the rows and their outer products in float64; the
sums of all workers are added up, so every worker starts from the PCA of the whole training
split (the same rows a PCA baseline is fitted on), then training improves on it.
"""

from __future__ import annotations

import numpy as np


def shard_moments(batches, dim: int) -> dict:
    """{"n", "sum_x", "sum_xx"} over the "x" arrays [rows, dim] of `batches` (float64). An empty
    shard gives zeros (another worker may hold the rows); too few rows in all is an error later."""
    n, sum_x, sum_xx = 0.0, np.zeros(dim), np.zeros((dim, dim))
    for batch in batches:
        x = np.asarray(batch["x"], dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"PCA initialisation expects rows of width {dim}, got shape {tuple(x.shape)}")
        n += len(x)
        sum_x += x.sum(axis=0)
        sum_xx += x.T @ x
    return {"n": n, "sum_x": sum_x, "sum_xx": sum_xx}


def init_from_pca(model, batches, device, world_size: int) -> int:
    """Initialise `model` (unwrapped, linear_path=true) from the PCA of every worker's train
    shard (`batches`: its {"x", ...} batches on the CPU, e.g. the task's `batches`). Returns the
    number of rows the PCA was fitted on."""
    from pipeline.models.autoencoder import pca_from_moments
    from pipeline.train.loop import _all_reduce_sums

    sums = shard_moments(batches, model.config.input_dim)
    sums = _all_reduce_sums(sums, device, world_size)
    mean, components = pca_from_moments(sums["n"], sums["sum_x"], sums["sum_xx"], model.config.latent_dim)
    model.init_linear_from_pca(mean, components)
    return int(sums["n"])
