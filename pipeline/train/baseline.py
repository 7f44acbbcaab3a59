"""The per-pair reconstruction-error baseline of a trained autoencoder, fitted once at the end of
training and saved in its checkpoint's feature transform.

An anomaly score says how unusual a row's reconstruction error is for its pair: (error − mean) /
std of the model's errors over that pair's TRAINING rows. Those numbers belong to the model, so
they are computed when training ends — from the training split the run read, through the model's
own transform — and travel with it into the registry; serving and `tunestack score` only read them.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.train.checkpoint import load_checkpoint, replace_features

MAX_BASELINE_ROWS = 2_000_000  # training rows read for the baseline (enough for any pair's moments)
BATCH_ROWS = 8192


@torch.no_grad()
def error_sums(model, features, blocks, max_rows: int = MAX_BASELINE_ROWS) -> tuple[np.ndarray, ...]:
    """(count, sum, sum of squares) of the model's per-row error, per model pair row, over
    `blocks` ({"pair_id", "value"} numpy dicts of store rows: pair ids under the transform's
    training-time ids, values scaled as the transform scales them) — at most `max_rows` rows."""
    view = features.view()
    k = len(features)
    count, total, total_sq = np.zeros(k), np.zeros(k), np.zeros(k)
    seen = 0
    for block in blocks:
        pid = np.asarray(block["pair_id"], np.int64)[: max_rows - seen]
        x = view.features(pid, np.asarray(block["value"])[: len(pid)])
        rows = view.rows[pid]
        for i in range(0, len(x), BATCH_ROWS):
            xb = torch.from_numpy(x[i : i + BATCH_ROWS])
            recon, _ = model(xb)
            err = model.per_sample_error(xb, recon).double().numpy()
            r = rows[i : i + BATCH_ROWS]
            count += np.bincount(r, minlength=k)
            total += np.bincount(r, weights=err, minlength=k)
            total_sq += np.bincount(r, weights=err * err, minlength=k)
        seen += len(pid)
        if seen >= max_rows:
            break
    return count, total, total_sq


def fit_error_baseline(model, features, blocks, max_rows: int = MAX_BASELINE_ROWS):
    """The ErrorBaseline of `model` over `blocks` (see `error_sums`)."""
    from pipeline.data.error_baseline import ErrorBaseline

    return ErrorBaseline.from_sums(*error_sums(model, features, blocks, max_rows))


def attach_error_baseline(checkpoint: str, train_rows, max_rows: int = MAX_BASELINE_ROWS):
    """Fit the error baseline of an autoencoder checkpoint on `train_rows` (the run's training
    split: a Ray Dataset of store rows, as `prepare_data` built it) and save it into the
    checkpoint's feature transform. Returns the transform (None for a family without one). A
    checkpoint that already has a baseline is left as it is."""
    ckpt = load_checkpoint(checkpoint)
    features = ckpt.features()
    if features is None or features.baseline is not None:
        return features
    blocks = train_rows.iter_batches(batch_size=None, batch_format="numpy")
    features = features.with_baseline(fit_error_baseline(ckpt.build_model(), features, blocks, max_rows))
    replace_features(ckpt.path, features)
    return features
