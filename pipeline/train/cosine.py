"""`schedule.name: cosine` — one cosine from the base learning rate down to `eta_min` over all
`train.epochs`, set before every batch (not once per epoch), so the last steps run at a
learning rate close to `eta_min`. Streamed data has no length up front: the number of batches
per epoch is learned from the first epoch (during which the rate stays at the base value, where
the cosine is flat anyway) and kept in the scheduler state, so a resumed run continues exactly.
"""

from __future__ import annotations

import math


class CosineAnnealing:
    def __init__(self, optimizer, epochs: int, eta_min: float = 0.0):
        self.optimizer, self.epochs, self.eta_min = optimizer, epochs, eta_min
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.batches_per_epoch: int | None = None
        self._seen = 0

    def lr_at(self, position: float) -> list[float]:
        """Learning rates at `position` in [0, 1] of the whole run."""
        c = 0.5 * (1.0 + math.cos(math.pi * min(max(position, 0.0), 1.0)))
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]

    def batch_step(self, epoch: int, batch_index: int) -> None:
        """Set the learning rate for batch `batch_index` of `epoch` (call before the step)."""
        self._seen = batch_index + 1
        frac = min(batch_index / self.batches_per_epoch, 1.0) if self.batches_per_epoch else 0.0
        for group, lr in zip(self.optimizer.param_groups, self.lr_at((epoch + frac) / self.epochs)):
            group["lr"] = lr

    def step(self) -> None:
        """End of an epoch: remember how many batches it had."""
        if self._seen:
            self.batches_per_epoch = self._seen
        self._seen = 0

    def state_dict(self) -> dict:
        return {
            "base_lrs": list(self.base_lrs),
            "batches_per_epoch": self.batches_per_epoch,
            "epochs": self.epochs,
            "eta_min": self.eta_min,
        }

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.batches_per_epoch = state.get("batches_per_epoch")
