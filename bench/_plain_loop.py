"""A plain PyTorch training loop (one process, no Ray) that does per epoch what the Ray Train worker
loop (pipeline.train.loop.train_loop_per_worker) does, built from the same helpers: the model from
the config (`cfg_model`), `make_optimizer`, `make_scheduler`, the family's task loss and metrics,
gradient clipping, and FastGRNN's sparsity phases. The benchmarks use it as the baseline the Ray
Train path is compared against (bench.training) and to train the digits models (bench.models).

Not a benchmark itself (no `run`): the leading underscore keeps it out of `tunestack bench`.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from pipeline.config import Config
from pipeline.train.checkpoint import save_checkpoint
from pipeline.train.loop import cfg_model, make_optimizer, make_scheduler
from pipeline.train.tasks import TASKS, accumulate


def train_plain(
    cfg: Config,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    *,
    checkpoint_every_epoch: bool = False,
):
    """Train `cfg`'s model on in-memory arrays for cfg.train.epochs epochs (no early stopping).

    Each epoch: a seeded random permutation of the rows in batches of cfg.train.batch_size, loss →
    backward → clip → step → sparsity; then, when val arrays are given, a validation pass (the
    task's metrics) and the scheduler step (plateau: on the monitored metric); optionally a
    checkpoint in the project's format (safetensors + JSON) to a temporary folder, as the Ray
    loop writes one every epoch. Returns (model in eval mode, one dict per epoch with
    train_seconds / epoch_seconds / samples and the metrics)."""
    t = cfg.train
    if cfg.model.arch != "sequence_classifier":
        raise ValueError(f"train_plain trains sequence classifiers, got arch {cfg.model.arch!r}")
    torch.manual_seed(t.seed)
    task = TASKS[cfg.model.arch]()
    model = cfg_model(cfg)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    sparsity = None
    if cfg.uses_sparsity:
        from pipeline.models.fastgrnn import SparsitySchedule, apply_sparsity

        sparsity = SparsitySchedule(t.epochs, cfg.sparsity.dense_frac, cfg.sparsity.iht_frac)
    x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    y = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    generator = torch.Generator().manual_seed(t.seed)
    history = []
    with tempfile.TemporaryDirectory(prefix="plain-loop-") as ckpt_root:
        for epoch in range(t.epochs):
            phase = sparsity.phase(epoch) if sparsity else "dense"
            start = time.perf_counter()
            model.train()
            loss_sum = 0.0
            for idx in torch.randperm(len(y), generator=generator).split(t.batch_size):
                loss, _ = task.loss(model, {"x": x[idx], "y": y[idx]})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                if phase != "dense":
                    apply_sparsity(model, phase)
                loss_sum += loss.item() * len(idx)
            train_seconds = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / max(len(y), 1),
                "samples": int(len(y)),
                "train_seconds": train_seconds,
                "lr": optimizer.param_groups[0]["lr"],
            }
            if val_x is not None:
                model.eval()
                record.update(
                    {f"val_{k}": v for k, v in evaluate(model, val_x, val_y, t.eval_batch_size).items()}
                )
            if cfg.schedule.name == "plateau":
                scheduler.step(record[t.monitor])
            elif scheduler is not None:
                scheduler.step()
            if checkpoint_every_epoch:
                save_checkpoint(
                    f"{ckpt_root}/checkpoint_epoch{epoch:04d}",
                    model,
                    {"config": cfg.to_dict(), "epoch": epoch, "metrics": record},
                    optimizer,
                    scheduler,
                )
            record["epoch_seconds"] = time.perf_counter() - start
            history.append(record)
    return model.eval(), history


@torch.no_grad()
def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 4096) -> dict:
    """The classification task's metrics (loss, accuracy) of `model` on in-memory arrays."""
    task = TASKS["sequence_classifier"]()
    was_training = model.training
    model.eval()
    batches = (
        {
            "x": torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)),
            "y": torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64)),
        }
        for i in range(0, len(y), batch_size)
    )
    metrics = task.finalize(accumulate(task, model, batches))
    model.train(was_training)
    return metrics
