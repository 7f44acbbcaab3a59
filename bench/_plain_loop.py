"""A plain PyTorch training loop (one process, no Ray) that does per epoch what the Ray Train worker
loop (pipeline.train.loop.train_loop_per_worker) does, through the same training step
(pipeline.train.step.Stepper: the config's optimizer and scheduler, the family's task loss,
gradient clipping, FastGRNN's sparsity phases) and the same validation sums. The benchmarks use it
as the baseline the Ray Train path is compared against (bench.training) and to train the digits
models (bench.models).

Not a benchmark itself (no `run`): the leading underscore keeps it out of `tunestack bench`.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from pipeline.config import Config
from pipeline.models import family
from pipeline.train.checkpoint import save_checkpoint
from pipeline.train.loop import cfg_model
from pipeline.train.step import Stepper, sparsity_schedule


def train_plain(
    cfg: Config,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    *,
    checkpoint_every_epoch: bool = False,
    teacher=None,
):
    """Train `cfg`'s model on in-memory arrays for cfg.train.epochs epochs (no early stopping).

    Each epoch: a seeded random permutation of the rows in batches of cfg.train.batch_size, loss →
    backward → clip → step → sparsity; then, when val arrays are given, a validation pass (the
    task's metrics) and the scheduler step (plateau: on the monitored metric); optionally a
    checkpoint in the project's format (safetensors + JSON) to a temporary folder, as the Ray
    loop writes one every epoch. `teacher`: the distillation teacher (a model taking the same
    inputs) when the config has a `distill:` section. Returns (model in eval mode, one dict per
    epoch with train_seconds / epoch_seconds / samples and the metrics)."""
    t = cfg.train
    if not {"sequences", "routing"} & set(family(cfg.model.arch).sources):
        raise ValueError(f"train_plain trains on in-memory sequences, arch {cfg.model.arch!r} does not")
    torch.manual_seed(t.seed)
    task = family(cfg.model.arch).make_task(cfg, {}, teacher=teacher)
    model = cfg_model(cfg)
    stepper = Stepper.for_config(cfg, model, task)
    sparsity = sparsity_schedule(cfg)
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
            for i, idx in enumerate(torch.randperm(len(y), generator=generator).split(t.batch_size)):
                loss_sum += stepper.step({"x": x[idx], "y": y[idx]}, epoch, i, phase) * len(idx)
            train_seconds = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / max(len(y), 1),
                "samples": int(len(y)),
                "train_seconds": train_seconds,
                "lr": stepper.lr,
            }
            if val_x is not None:
                model.eval()
                val = task.finalize(stepper.eval_sums(array_batches(val_x, val_y, t.eval_batch_size)))
                record.update({f"val_{k}": v for k, v in val.items()})
            if val_x is not None or cfg.schedule.name != "plateau":
                stepper.end_epoch(cfg, record.get(t.monitor, 0.0))
            if checkpoint_every_epoch:
                save_checkpoint(
                    f"{ckpt_root}/checkpoint_epoch{epoch:04d}",
                    model,
                    {"config": cfg.to_dict(), "epoch": epoch, "metrics": record},
                    stepper.optimizer,
                    stepper.scheduler,
                )
            record["epoch_seconds"] = time.perf_counter() - start
            history.append(record)
    return model.eval(), history


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """{"x", "y"} tensor batches of in-memory arrays, in order."""
    for i in range(0, len(y), batch_size):
        yield {
            "x": torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)),
            "y": torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64)),
        }


@torch.no_grad()
def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 4096) -> dict:
    """The classification task's metrics (loss, accuracy) of `model` on in-memory arrays."""
    from pipeline.train.tasks import ClassificationTask, accumulate

    task = ClassificationTask()
    was_training = model.training
    model.eval()
    metrics = task.finalize(accumulate(task, model, array_batches(x, y, batch_size)))
    model.train(was_training)
    return metrics
