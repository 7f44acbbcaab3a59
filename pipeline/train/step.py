"""The training step, written once: the Ray Train worker loop (pipeline.train.loop), the plain
PyTorch loop of the benchmarks (bench/_plain_loop.py) and the tests all train through `Stepper`.

A step is: the per-batch learning rate (a cosine schedule sets it every batch), the family's task
loss under autocast (AMP on a GPU), backward through the AMP grad scaler, gradient clipping on the
unscaled gradients, the optimizer step, then FastGRNN's sparsity phase (IHT or the frozen
support) re-applied to the updated weights. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import Config
from pipeline.train.checkpoint import unwrap


def make_optimizer(cfg: Config, params):
    o = cfg.optim
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


def make_scheduler(cfg: Config, optimizer):
    """Stepped once per epoch (plateau: with the monitored metric). None for "none"."""
    s = cfg.schedule
    if s.name == "cosine":  # stepped per batch (batch_step) as well as per epoch
        from pipeline.train.cosine import CosineAnnealing

        return CosineAnnealing(optimizer, cfg.train.epochs, s.eta_min)
    if s.name == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s.t0, T_mult=s.t_mult, eta_min=s.eta_min
        )
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.train.mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
        )
    return None


def sparsity_schedule(cfg: Config):
    """FastGRNN's dense → IHT → fixed-support schedule over the run, or None (nothing kept < 1)."""
    if not cfg.uses_sparsity:
        return None
    from pipeline.models.fastgrnn import SparsitySchedule

    return SparsitySchedule(cfg.train.epochs, cfg.sparsity.dense_frac, cfg.sparsity.iht_frac)


@dataclass
class Stepper:
    """Trains `model` (plain or DDP-wrapped) one batch at a time with the config's optimizer,
    scheduler, gradient clipping, AMP (when `use_amp`, on `device_type`) and sparsity phases."""

    model: torch.nn.Module
    task: object
    optimizer: torch.optim.Optimizer
    scheduler: object = None
    grad_clip: float = 0.0
    device_type: str = "cpu"
    use_amp: bool = False

    def __post_init__(self):
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    @classmethod
    def for_config(cls, cfg: Config, model, task, device_type: str = "cpu", use_amp: bool = False):
        optimizer = make_optimizer(cfg, model.parameters())
        return cls(
            model,
            task,
            optimizer,
            make_scheduler(cfg, optimizer),
            cfg.optim.grad_clip,
            device_type,
            use_amp and device_type == "cuda",
        )

    def step(self, batch: dict, epoch: int = 0, index: int = 0, phase: str = "dense") -> float:
        """One optimizer step on `batch` (the `index`-th of `epoch`); the batch's mean loss."""
        if hasattr(self.scheduler, "batch_step"):
            self.scheduler.batch_step(epoch, index)
        with torch.autocast(self.device_type, enabled=self.use_amp):
            loss, _ = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if phase != "dense":
            from pipeline.models.fastgrnn import apply_sparsity

            apply_sparsity(unwrap(self.model), phase)
        return loss.item()

    def end_epoch(self, cfg: Config, monitored: float) -> None:
        """The scheduler's per-epoch step (plateau: on the monitored validation metric)."""
        if cfg.schedule.name == "plateau":
            self.scheduler.step(monitored)
        elif self.scheduler is not None:
            self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def eval_sums(self, batches) -> dict:
        """The task's additive metric sums over `batches` (model in eval mode, autocast as in training)."""
        sums: dict = {}
        with torch.autocast(self.device_type, enabled=self.use_amp):
            for batch in batches:
                for k, v in self.task.eval_sums(self.model, batch).items():
                    sums[k] = sums.get(k, 0.0) + np.asarray(v, dtype=np.float64)
        return sums


def batch_rows(batch: dict) -> int:
    """Rows in a batch of column tensors."""
    return len(next(iter(batch.values())))
