"""Per-family training objective and validation metrics.

A task knows its batch layout, its loss, and its metrics as *additive sums* (so the sums of
several workers — or of many batches — simply add up before `finalize` turns them into
metrics). Adding a model family = a Task here plus one line in TASKS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.train.checkpoint import unwrap

SHUFFLE_ROWS = 20_000  # with a seed, batches are drawn from a local shuffle window of this many rows


def torch_batches(source, batch_size: int, device, seed: int | None = None, **iter_args):
    """`iter_torch_batches` of a Ray Dataset or shard; with a seed, through a local shuffle buffer."""
    shuffle = {} if seed is None else {"local_shuffle_buffer_size": SHUFFLE_ROWS, "local_shuffle_seed": seed}
    return source.iter_torch_batches(batch_size=batch_size, device=device, **iter_args, **shuffle)


def _add(sums: dict, new: dict) -> dict:
    for k, v in new.items():
        sums[k] = sums[k] + v if k in sums else np.asarray(v, dtype=np.float64)
    return sums


def require_rows(sums: dict) -> None:
    """An evaluation over no rows has no metrics: say so instead of failing on a missing sum."""
    if not sums or float(sums.get("n", 0)) == 0:
        raise ValueError(
            "no rows to evaluate: the validation split is empty (too little data for "
            "data.val_fraction — add data or raise the fraction)"
        )


class ClassificationTask:
    """Sequence classifiers (router, digits): cross-entropy (or distillation) and accuracy."""

    batch_dtypes = {"x": torch.float32, "y": torch.int64}
    iter_args = {"dtypes": batch_dtypes}  # how iter_torch_batches builds this task's batches
    metrics = ("loss", "accuracy")  # what `finalize` returns (reported as val_…; train.monitor checks)

    def __init__(self, distill=None, teacher=None):
        self.distill, self.teacher = distill, teacher

    def batches(self, source, batch_size: int, device, seed: int | None = None):
        """This task's batches of a Ray Dataset or shard (with a `seed`: locally shuffled)."""
        return torch_batches(source, batch_size, device, seed, **self.iter_args)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        logits = model(batch["x"])
        if self.teacher is None:
            loss = F.cross_entropy(logits.float(), batch["y"])
            return loss, {}
        from pipeline.models.distill import distillation_loss

        with torch.no_grad():
            teacher_logits = self.teacher(batch["x"])
        loss = distillation_loss(
            logits.float(),
            teacher_logits.float(),
            batch["y"],
            alpha=self.distill.alpha,
            temperature=self.distill.temperature,
        )
        return loss, {}

    @torch.no_grad()
    def eval_sums(self, model, batch) -> dict:
        logits = model(batch["x"]).float()
        y = batch["y"]
        return {
            "n": float(len(y)),
            "loss": F.cross_entropy(logits, y, reduction="sum").item(),
            "correct": (logits.argmax(dim=-1) == y).sum().item(),
        }

    def finalize(self, sums: dict) -> dict:
        require_rows(sums)
        n = max(float(sums["n"]), 1.0)
        return {"loss": float(sums["loss"]) / n, "accuracy": float(sums["correct"]) / n}


class AutoencoderTask:
    """Stage-1 autoencoder: weighted reconstruction loss; metrics on raw values via the scalers.

    The task sees rows through a StoreView (pipeline.data.features): the model's own transform over
    the store's pair ids, which gives each row its embedding and lets metrics undo its scaling.

    relative_mae_median / relative_mae_p95: per pair, the mean of |v̂ − v| / max(|v|, 1e-8) on
    RAW values (both sides inverse-scaled with the model's scaler of the pair), then the median and
    the 95th percentile (the worst 5% of pairs lie above it) over pairs, kept as additive sums
    (tests/unit/test_tasks.py checks them against whole-array formulas). r2: over every reconstructed
    element (embedding ‖ value); value_r2: on the scaled value only. embedding_cosine: mean
    cosine between input and reconstructed embeddings.
    """

    batch_dtypes = {"x": torch.float32, "pair_id": torch.int64}
    metrics = (  # what `finalize` returns (reported as val_…; train.monitor is checked against them)
        "r2",
        "value_r2",
        "embedding_cosine",
        "relative_mae_median",
        "relative_mae_p95",
        "num_pairs",
        "loss",
        "loss_embed",
        "loss_value",
    )

    def __init__(self, view=None):
        self.view = view
        self.num_pairs = len(view) if view is not None else 0
        self.iter_args = {"dtypes": self.batch_dtypes}  # rows that already hold "x" (no store)

    def batches(self, source, batch_size: int, device, seed: int | None = None):
        """Batches {"x", "pair_id"} of a Ray Dataset or shard (with a `seed`: locally shuffled).
        The store's compact rows go through `iter_triplet_batches`: whole blocks from Ray Data,
        the pair embeddings joined and the batches cut in this process."""
        if self.view is None:
            return torch_batches(source, batch_size, device, seed, **self.iter_args)
        from pipeline.data.triplets import iter_triplet_batches

        return iter_triplet_batches(
            source, self.view.embeddings, batch_size, shuffle_rows=SHUFFLE_ROWS, seed=seed, device=device
        )

    @classmethod
    def for_features(cls, features) -> AutoencoderTask:
        """The task over the rows a FeatureTransform was trained on (their training-time pair ids)."""
        return cls(features.view())

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        x = batch["x"]
        recon, _ = model(x)
        total, embed_part, value_part = unwrap(model).reconstruction_loss(x, recon.float())
        return total, {"loss_embed": embed_part.detach(), "loss_value": value_part.detach()}

    @torch.no_grad()
    def eval_sums(self, model, batch) -> dict:
        x = batch["x"]
        recon, _ = model(x)
        recon = recon.float()
        total, embed_part, value_part = unwrap(model).reconstruction_loss(x, recon)
        return self.array_sums(
            x.cpu().numpy(),
            recon.cpu().numpy(),
            batch["pair_id"].cpu().numpy(),
            losses=(total.item(), embed_part.item(), value_part.item()),
        )

    def row_stats(self, x: np.ndarray, recon: np.ndarray, pair_id: np.ndarray) -> dict[str, np.ndarray]:
        """Each row's share of the metric sums (float64 [n] each; "rel" = its relative error of
        the raw value). Summed over rows they are `array_sums`; summed per group, a group's."""
        from pipeline.models.autoencoder import embedding_cosine_similarity

        x = x.astype(np.float64)
        recon = recon.astype(np.float64)
        true_raw = self.view.unscale(pair_id, x[:, -1])
        pred_raw = self.view.unscale(pair_id, recon[:, -1])
        return {
            "n": np.ones(len(x)),
            "elements": np.full(len(x), float(x.shape[1])),
            "sum_y": x.sum(axis=1),
            "sum_y2": (x**2).sum(axis=1),
            "ss_res": ((x - recon) ** 2).sum(axis=1),
            "sum_v": x[:, -1],
            "sum_v2": x[:, -1] ** 2,
            "ss_res_v": (x[:, -1] - recon[:, -1]) ** 2,
            "cosine": embedding_cosine_similarity(x, recon).astype(np.float64),
            "rel": np.abs(pred_raw - true_raw) / np.maximum(np.abs(true_raw), 1e-8),
        }

    def array_sums(self, x: np.ndarray, recon: np.ndarray, pair_id: np.ndarray, losses=None) -> dict:
        """Metric sums of one batch of inputs and reconstructions (also used for baselines)."""
        stats = self.row_stats(x, recon, pair_id)
        rel = stats.pop("rel")
        sums = {k: v.sum() for k, v in stats.items()}
        sums["pair_rel"] = np.bincount(pair_id, weights=rel, minlength=self.num_pairs).astype(np.float64)
        sums["pair_n"] = np.bincount(pair_id, minlength=self.num_pairs).astype(np.float64)
        if losses is not None:
            n = len(x)
            sums.update(loss=losses[0] * n, loss_embed=losses[1] * n, loss_value=losses[2] * n)
        return sums

    def finalize(self, sums: dict) -> dict:
        require_rows(sums)
        n = max(float(sums["n"]), 1.0)

        def r2(ss_res, sum_y, sum_y2, count):
            ss_tot = sum_y2 - sum_y**2 / max(count, 1.0)
            return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0

        seen = sums["pair_n"] > 0
        per_pair = sums["pair_rel"][seen] / sums["pair_n"][seen]
        out = {
            "r2": r2(sums["ss_res"], sums["sum_y"], sums["sum_y2"], float(sums["elements"])),
            "value_r2": r2(sums["ss_res_v"], sums["sum_v"], sums["sum_v2"], n),
            "embedding_cosine": float(sums["cosine"]) / n,
            "relative_mae_median": float(np.median(per_pair)) if per_pair.size else float("nan"),
            "relative_mae_p95": float(np.quantile(per_pair, 0.95)) if per_pair.size else float("nan"),
            "num_pairs": int(seen.sum()),
        }
        for key in ("loss", "loss_embed", "loss_value"):
            if key in sums:
                out[key] = float(sums[key]) / n
        return out


TASKS = {"sequence_classifier": ClassificationTask, "autoencoder": AutoencoderTask}


def accumulate(task, model, batches) -> dict:
    """Sum `task.eval_sums` over an iterable of batches (model in eval mode)."""
    sums: dict = {}
    for batch in batches:
        _add(sums, task.eval_sums(model, batch))
    return sums
