"""Task metrics: the declared names, sums over batches equal to whole-array formulas, and
evaluations over no rows failing with the reason, not a KeyError."""

import numpy as np
import pytest
import torch

from pipeline.train.tasks import AutoencoderTask, ClassificationTask


@pytest.mark.parametrize("task", [ClassificationTask(), AutoencoderTask()], ids=["classifier", "autoencoder"])
@pytest.mark.parametrize("sums", [{}, {"n": 0.0}])
def test_empty_validation_split_is_a_clear_error(task, sums):
    with pytest.raises(ValueError, match="validation split is empty"):
        task.finalize(sums)


def _standard(mean=0.0, std=1.0):
    from pipeline.store.scaler import PairScaler

    return PairScaler("standard", np.zeros(0), np.zeros(0), mean=mean, std=std)


def test_autoencoder_metrics_as_sums_match_whole_array_formulas():
    """Metrics summed over batches (as workers do) equal the formulas over all rows at once."""
    pair_ids = np.array([0, 0, 1, 2, 2, 2])
    true = np.array([100.0, -50.0, 0.0, 10.0, 10.0, 10.0])  # raw values
    pred = np.array([110.0, -40.0, 0.0, 10.0, 12.0, 13.0])
    scalers = {0: _standard(0.0, 100.0), 1: _standard(5.0, 2.0), 2: _standard(10.0, 4.0)}
    scaled_true = np.array([(v - scalers[p].mean) / scalers[p].std for p, v in zip(pair_ids, true)])
    scaled_pred = np.array([(v - scalers[p].mean) / scalers[p].std for p, v in zip(pair_ids, pred)])
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4))
    x = np.column_stack([emb, scaled_true])
    recon = np.column_stack([emb + 0.1 * rng.normal(size=(6, 4)), scaled_pred])

    # the task undoes the scaling through the model's feature transform (its view of pair ids)
    from pipeline.data.features import FeatureTransform
    from pipeline.data.packed_scalers import PackedScalers

    features = FeatureTransform(
        space=None,  # no unseen pairs here: nothing to embed
        keys=[("A", "USD"), ("B", "USD"), ("C", "USD")],
        store_ids=np.arange(3),
        embeddings=np.zeros((3, 4), np.float32),
        scalers=PackedScalers.from_scalers([scalers[0], scalers[1], scalers[2], _standard()]),
        fallback_units=["*"],
        entities=[],
        source={},
    )
    task = AutoencoderTask(features.view())
    sums: dict = {}
    for rows in (slice(0, 4), slice(4, 6)):  # two batches
        for k, v in task.array_sums(x[rows], recon[rows], pair_ids[rows], losses=(1.0, 0.5, 0.5)).items():
            sums[k] = sums.get(k, 0.0) + v
    m = task.finalize(sums)

    assert set(m) == set(AutoencoderTask.metrics)  # what train.monitor is checked against
    # per-pair relative MAE on raw values: pair 0 (0.1 + 0.2) / 2, pair 1 0 (true 0 → divided by
    # 1e-8, error 0), pair 2 (0 + .2 + .3) / 3
    per_pair = np.array([0.15, 0.0, 0.5 / 3])
    # float64 sums of a handful of values: equal to rounding
    assert m["relative_mae_median"] == pytest.approx(np.median(per_pair), abs=1e-12)
    assert m["relative_mae_p95"] == pytest.approx(np.quantile(per_pair, 0.95), abs=1e-12)
    assert m["num_pairs"] == 3

    def r2(y, yhat):
        return 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)

    assert m["r2"] == pytest.approx(r2(x.ravel(), recon.ravel()), abs=1e-12)
    assert m["value_r2"] == pytest.approx(r2(x[:, -1], recon[:, -1]), abs=1e-12)


def test_classification_metrics_are_the_declared_ones():
    task = ClassificationTask()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    model = torch.nn.Identity()
    m = task.finalize(task.eval_sums(model, {"x": logits, "y": torch.tensor([0, 1, 1])}))
    assert set(m) == set(ClassificationTask.metrics) and m["accuracy"] == pytest.approx(2 / 3)
