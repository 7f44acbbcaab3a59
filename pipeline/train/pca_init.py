"""Start an autoencoder's linear maps at the PCA of the training rows (`model.init: pca`).

One pass over the worker's train shard sums the rows and their outer products in float64; the
sums of all workers are added up, so every worker starts from the PCA of the whole training
split (the same rows a PCA baseline is fitted on), then training improves on it.
"""

from __future__ import annotations

import numpy as np


def shard_moments(batches) -> dict:
    """{"n", "sum_x", "sum_xx"} over the "x" arrays of `batches` (float64)."""
    n, sum_x, sum_xx = 0.0, None, None
    for batch in batches:
        x = np.asarray(batch["x"], dtype=np.float64)
        if sum_x is None:
            sum_x, sum_xx = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        n += len(x)
        sum_x += x.sum(axis=0)
        sum_xx += x.T @ x
    if sum_x is None:
        raise ValueError("PCA initialisation found no training rows in this worker's shard")
    return {"n": n, "sum_x": sum_x, "sum_xx": sum_xx}


def init_from_pca(model, shard, batch_size: int, device, world_size: int, iter_args: dict) -> int:
    """Initialise `model` (unwrapped, linear_path=true) from the PCA of every worker's train
    shard. Returns the number of rows the PCA was fitted on."""
    from pipeline.models.autoencoder import pca_from_moments
    from pipeline.train.loop import _all_reduce_sums

    sums = shard_moments(shard.iter_torch_batches(batch_size=batch_size, device="cpu", **iter_args))
    sums = _all_reduce_sums(sums, device, world_size)
    mean, components = pca_from_moments(sums["n"], sums["sum_x"], sums["sum_xx"], model.config.latent_dim)
    model.init_linear_from_pca(mean, components)
    return int(sums["n"])
