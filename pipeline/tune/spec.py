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

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.config import TUNE_SECTIONS, Config, ConfigError, apply_overrides, config_from_dict
from pipeline.tune.space import SpaceError, expand_plan, flatten_search, sample_values

SEARCH_ALGS = ("random", "optuna", "hyperopt")


@dataclass
class AshaSection:
    time_attr: str = "training_iteration"
    grace_period: int = 2
    reduction_factor: float = 3.0
    max_t: int | None = None
    brackets: int = 1


@dataclass
class TuneSection:
    num_samples: int = 1
    metric: str | None = None  # default: train.monitor
    mode: str | None = None  # default: train.mode
    search_alg: str = "random"
    max_concurrent: int = 0
    trial_cpus: float = 0.25
    storage: str | None = None
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    asha: AshaSection | None = field(default_factory=AshaSection)


@dataclass
class TuneSpec:
    """Everything `tunestack tune` needs from one file."""

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
    raw = copy.deepcopy(base)
    apply_overrides(
        raw,
        [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in overrides.items()],
        source,
    )
    return config_from_dict(raw, source)


def split_tune_sections(raw: dict) -> tuple[dict, dict]:
    """(training config, tune sections) of a loaded YAML mapping."""
    raw = dict(raw or {})
    return {k: v for k, v in raw.items() if k not in TUNE_SECTIONS}, {k: raw.get(k) for k in TUNE_SECTIONS}


def load_tune_spec(path: str, overrides: list[str] | tuple[str, ...] = ()) -> TuneSpec:
    """Read and validate a tune file; errors name the key and the file."""
    from pipeline.config import _build_section  # one typed-section checker for every section

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(path, "<file>", f"cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(path, "<file>", f"not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(path, "<top>", "expected a mapping")
    apply_overrides(raw, overrides, path)  # `--set tune.asha.max_t=4` works as well as `--set train.epochs=4`
    base, sections = split_tune_sections(raw)
    cfg = config_from_dict(copy.deepcopy(base), path)
    tune = _build_section(TuneSection, sections["tune"] or {}, "tune", path)
    _validate(tune, cfg, path)
    try:
        search = flatten_search(sections["search"] or {}, path)
        plan = expand_plan(search, sections["plan"], sections["exclude"], path)
    except SpaceError as e:
        raise ConfigError(e.source, e.key, str(e).split(": ", 2)[-1]) from e
    spec = TuneSpec(path, base, cfg, tune, search, plan)
    _validate_points(spec, path)
    # Every searched or planned key must be a config key of the right type: try one value of each.
    for key, value in {**sample_values(search), **(plan[0] if plan else {})}.items():
        try:
            spec.trial_config({key: value})
        except ConfigError as e:
            raise ConfigError(
                path, f"search.{key}" if key in search else f"plan.{key}", str(e).split(": ", 2)[-1]
            ) from e
    return spec


def _validate_points(spec: TuneSpec, source: str) -> None:
    """Each point gives values of sampled search keys (not plan/grid keys: a point runs every plan
    entry, as a draw does), each a valid value for its config key."""
    sampled = [k for k, v in spec.search.items() if "grid" not in v]
    for i, point in enumerate(spec.tune.points_to_evaluate):
        where = f"tune.points_to_evaluate[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(
                source, where, f"expected a mapping of sampled search keys to values, got {point!r}"
            )
        for key, value in point.items():
            if key not in sampled:
                why = (
                    "a plan or grid key (a point runs every plan entry)"
                    if any(key in c for c in spec.plan)
                    else "not a sampled search key"
                )
                raise ConfigError(source, f"{where}.{key}", f"{why}; sampled keys: {sampled}")
            try:
                spec.trial_config({key: value})
            except ConfigError as e:
                raise ConfigError(source, f"{where}.{key}", str(e).split(": ", 2)[-1]) from e


def _validate(t: TuneSection, cfg: Config, source: str) -> None:
    def need(ok, key, message):
        if not ok:
            raise ConfigError(source, key, message)

    need(t.num_samples >= 1, "tune.num_samples", "must be >= 1")
    need(
        t.search_alg in SEARCH_ALGS, "tune.search_alg", f"must be one of {SEARCH_ALGS}, got {t.search_alg!r}"
    )
    need(t.mode in (None, "min", "max"), "tune.mode", "must be min or max")
    need(
        t.metric is None or t.metric.startswith("val_"), "tune.metric", "must be a validation metric (val_…)"
    )
    need(t.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0 (0 = fit the cluster)")
    need(0 < t.trial_cpus <= 8, "tune.trial_cpus", "must be in (0, 8]")
    if t.asha is not None:
        a = t.asha
        need(
            a.time_attr in ("training_iteration", "epoch"),
            "tune.asha.time_attr",
            "must be training_iteration or epoch",
        )
        need(a.grace_period >= 1, "tune.asha.grace_period", "must be >= 1")
        need(a.reduction_factor > 1, "tune.asha.reduction_factor", "must be > 1")
        need(a.max_t is None or a.max_t >= a.grace_period, "tune.asha.max_t", "must be >= grace_period")
        need(a.brackets >= 1, "tune.asha.brackets", "must be >= 1")
