"""A tune file: a training config plus `search:`, `plan:`, `exclude:` and `tune:` sections.

tune:
  num_samples: 2            # repeats of the plan/grid; draws of the sampled keys
  metric: val_accuracy      # what "best" means (a reported validation metric)
  mode: max
  search_alg: random        # random | optuna | hyperopt (the latter two when installed)
  max_concurrent: 0         # 0 = as many as the cluster's CPUs/GPUs fit
  trial_cpus: 0.25          # CPU held by each trial's driver (the Train workers hold their own)
  storage: null             # experiment storage URI (default $TUNESTACK_STORAGE/runs/tune)
  points_to_evaluate:       # configurations tried first, besides the num_samples draws: values of
    - {optim.lr: 0.02}      # sampled search keys (a key left out is drawn); each runs every plan entry
  asha:                     # early stopping across trials; `asha: null` runs every trial out
    time_attr: training_iteration
    grace_period: 2
    reduction_factor: 3
    max_t: 20               # default: train.epochs
    brackets: 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Config, TuneConfig, TuneSection, load_tune_config, with_overrides


@dataclass
class TuneSpec:
    """Everything `tunestack tune` needs from one file (validated in full by pipeline.config)."""

    source: str
    base: dict  # the training config as a plain dict (tune sections removed, overrides applied)
    config: Config  # `base` validated
    tune: TuneSection
    search: dict[str, dict]  # dotted key → {distribution: args}
    plan: list[dict[str, Any]]  # the expanded plan (grid keys included), [{}] when none

    def trial_config(self, overrides: dict[str, Any]) -> Config:
        return trial_config(self.base, self.source, overrides)

    @property
    def metric(self) -> str:
        return self.tune.metric or self.config.train.monitor

    @property
    def mode(self) -> str:
        return self.tune.mode or self.config.train.mode


def trial_config(base: dict, source: str, overrides: dict[str, Any]) -> Config:
    """The validated training config of one trial: `base` with its dotted-key overrides."""
    return with_overrides(base, overrides, source)


def tune_spec(tc: TuneConfig, source: str) -> TuneSpec:
    """The TuneSpec of a validated tune file."""
    config = tc.training()
    return TuneSpec(source, config.to_dict(), config, tc.tune, tc.search_space, tc.plan_entries)


def load_tune_spec(path: str, overrides: list[str] | tuple[str, ...] = ()) -> TuneSpec:
    """Read and validate a tune file (ConfigError naming the file and every bad key)."""
    return tune_spec(load_tune_config(path, overrides), str(path))
