"""A toy third model family, written as a user adds one: this module plus its config
(tests/families/pooled.yaml). The README's "Add a third model family" follows it.

PooledMLP: project each step, ReLU, average over time, a linear head. It classifies sequences, so
the existing ClassificationTask (cross-entropy, accuracy) trains it. Shipped families live in
pipeline/models/ (found by themselves); this one lives with the tests, so its config names it by
its module path: `model.arch: tests.families.pooled_mlp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.models.family import Family


@dataclass
class PooledMLPConfig:
    input_size: int = 8  # features per step (filled from the data)
    hidden_size: int = 32
    num_classes: int = 2  # filled from the data
    dropout: float = 0.0

    def __post_init__(self):
        for name, low in (("input_size", 1), ("hidden_size", 1), ("num_classes", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class PooledMLP(nn.Module):
    """[B, T, input_size] (or [B, input_size]) -> logits [B, num_classes]."""

    def __init__(self, config: PooledMLPConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.input_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.dropout(torch.relu(self.proj(x)).mean(dim=1)))


FAMILY = Family(
    arch="pooled_mlp",  # registered under the module path it is imported by
    config=PooledMLPConfig,
    model=PooledMLP,
    sources=("sequences",),
    task="pipeline.train.tasks:ClassificationTask",  # classification: the existing task fits
    monitor=("val_accuracy", "max"),
    distillable=True,
    description="toy: per-step projection, mean over time, linear head",
)
