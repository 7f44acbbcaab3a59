"""The one typed config schema: YAML → validated `Config` → `--set key.sub=value` overrides.

A config file has the sections below; every key is typed, every section optional except `data`
and `model`. An unknown key or a value of the wrong type raises ConfigError naming the key and
the file. The `model` section is `arch` plus the fields of that arch's config dataclass
(pipeline.models.MODEL_CONFIGS), type-checked the same way, then validated by the model itself.

    data:     where the examples come from (triplet store, routing logs, .npz/Parquet sequences)
    model:    arch + the model family's own options
    optim:    Adam/AdamW, learning rate, weight decay, gradient clipping
    schedule: none | cosine (one cycle, set every batch) | cosine_restarts | step | plateau
    train:    epochs, batch size, early stopping, checkpoints kept, workers, AMP, failures
    sparsity: FastGRNN's dense → IHT → fixed-support phase split (used when the model keeps < 1)
    distill:  optional teacher checkpoint for knowledge distillation (classifiers)

The resolved config (`to_dict`) is written as JSON beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SOURCES = ("triplets", "routing", "sequences")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "cosine_restarts", "step", "plateau")
MODES = ("min", "max")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}")


@dataclass
class DataSection:
    source: str = "sequences"  # "triplets" (autoencoder) | "routing" (router) | "sequences" (.npz/Parquet)
    path: str | None = (
        None  # routing: folder or .parquet; sequences: .npz/.parquet; triplets: store URI (None = default store)
    )
    val_fraction: float = (
        0.1  # triplets: share of filing folds held out; others: share of train held out for early stopping
    )
    test_fraction: float = (
        0.25  # routing/sequences without a `split` column: stratified share held out as test
    )
    normalize: bool = True  # routing/sequences: z-score features with train-split statistics
    log1p: list[str] = field(default_factory=list)  # named features (e.g. counts) log1p'd before the z-score


@dataclass
class ModelSection:
    arch: str = "sequence_classifier"  # key of pipeline.models.MODEL_CONFIGS
    params: dict[str, Any] = field(default_factory=dict)  # that arch's config fields (flat in YAML)


@dataclass
class OptimSection:
    name: str = "adam"  # "adam" | "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0  # Adam: L2 added to the gradient; AdamW: decoupled
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping


@dataclass
class ScheduleSection:
    name: str = "none"  # "none" | "cosine" | "cosine_restarts" | "step" | "plateau"
    t0: int = 10  # cosine_restarts: epochs of the first cycle
    t_mult: int = 1  # cosine_restarts: cycle length multiplier
    eta_min: float = 0.0  # cosine, cosine_restarts: lowest learning rate
    step_size: int = 1  # step: epochs between decays
    gamma: float = 0.95  # step: decay factor (step_size=1 is exponential decay)
    factor: float = 0.5  # plateau: decay factor
    patience: int = 3  # plateau: epochs without improvement of the monitored metric
    min_lr: float = 0.0  # plateau: floor


@dataclass
class TrainSection:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1024
    monitor: str = "val_loss"  # metric for early stopping and checkpoint ranking
    mode: str = "min"  # "min" | "max" for `monitor`
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    min_delta: float = 0.0  # smallest change that counts as an improvement
    keep_top_k: int = 2  # checkpoints kept, ranked by `monitor`
    num_workers: int = 1  # Ray Train workers (DDP when > 1)
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None  # None = use GPUs when the cluster has any
    amp: bool = True  # mixed precision on GPU (ignored on CPU)
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    seed: int = 0


@dataclass
class SparsitySection:
    dense_frac: float = 1 / 3  # share of epochs trained dense
    iht_frac: float = 1 / 3  # share with iterative hard thresholding; the rest keep the support fixed


@dataclass
class DistillSection:
    teacher: str = ""  # checkpoint folder or run of the teacher
    alpha: float = 0.5  # weight of the soft (teacher) term
    temperature: float = 2.0


@dataclass
class Config:
    data: DataSection
    model: ModelSection
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    sparsity: SparsitySection = field(default_factory=SparsitySection)
    distill: DistillSection | None = None
    name: str = "run"  # run names are "<name>-<timestamp>"

    def to_dict(self) -> dict:
        """Plain JSON-able dict; the model section is flat (arch + its options) as in YAML."""
        out = dataclasses.asdict(self)
        out["model"] = {"arch": self.model.arch, **self.model.params}
        return out

    def model_config(self):
        """The arch's validated config dataclass (pipeline.models)."""
        from pipeline.models import make_config

        return make_config(self.model.arch, **self.model.params)

    def model_fields(self) -> list[str]:
        from pipeline.models import MODEL_CONFIGS

        return [f.name for f in dataclasses.fields(MODEL_CONFIGS[self.model.arch])]

    @property
    def uses_sparsity(self) -> bool:
        p = self.model.params
        return (
            p.get("cell", "fastgrnn") == "fastgrnn"
            and min(p.get("w_sparsity", 1.0), p.get("u_sparsity", 1.0)) < 1.0
        )


TUNE_SECTIONS = ("search", "plan", "exclude", "tune")  # read by pipeline.tune.spec
SECTIONS = {
    "data": DataSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "train": TrainSection,
    "sparsity": SparsitySection,
    "distill": DistillSection,
}


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key.sub=value` overrides, validate; errors name key and file."""
    path = str(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, "<file>", f"cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(path, "<file>", f"not valid YAML ({e})") from e
    raw = raw if raw is not None else {}
    if isinstance(raw, dict):  # a tune file trains once with its defaults: the search is tune's
        raw = {k: v for k, v in raw.items() if k not in TUNE_SECTIONS}
    apply_overrides(raw, overrides, path)
    return config_from_dict(raw, path)


def apply_overrides(raw: dict, overrides, source: str) -> dict:
    """Set `a.b=value` in `raw` in place; the value is parsed as YAML (so 1e-3, true, [8, 8] work)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, item, "an override is key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(source, key, f"cannot parse value {text!r} ({e})") from e
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, key, f"{part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate a plain dict (YAML or a saved resolved config) into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "<top>", f"expected a mapping, got {type(raw).__name__}")
    known = {"name", "model", *SECTIONS}
    for key in raw:
        if key not in known:
            raise ConfigError(source, key, f"unknown key; valid: {sorted(known)}")
    for required in ("data", "model"):
        if raw.get(required) is None:
            raise ConfigError(source, required, "section is required")
    kwargs = {}
    for name, cls in SECTIONS.items():
        if raw.get(name) is not None:
            kwargs[name] = _build_section(cls, raw[name], name, source)
    kwargs["model"] = _build_model_section(raw["model"], source)
    if "name" in raw:
        kwargs["name"] = _check_value(raw["name"], str, "name", source)
    cfg = Config(**kwargs)
    _validate(cfg, source)
    return cfg


def _build_section(cls, raw, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(source, f"{prefix}.{key}", f"unknown key; valid: {names}")
        values[key] = _check_value(value, hints[key], f"{prefix}.{key}", source)
    return cls(**values)


def _build_model_section(raw, source: str) -> ModelSection:
    from pipeline.models import family

    if not isinstance(raw, dict):
        raise ConfigError(source, "model", f"expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    arch = _check_value(raw.pop("arch", "sequence_classifier"), str, "model.arch", source)
    try:
        cls = family(arch).config
    except ValueError as e:
        raise ConfigError(source, "model.arch", str(e).replace("model arch", "arch", 1)) from None
    hints = typing.get_type_hints(cls)
    params = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(
                source,
                f"model.{key}",
                f"unknown key for arch {arch!r}; valid: "
                f"{['arch', *(f.name for f in dataclasses.fields(cls))]}",
            )
        params[key] = _check_value(value, hints[key], f"model.{key}", source)
    return ModelSection(arch=arch, params=params)


def _check_value(value, tp, key: str, source: str):
    """`value` if it has type `tp` (int is accepted for float; lists are checked per item)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key, source)
            except ConfigError:
                pass
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_section(tp, value, key, source)
    raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _validate(cfg: Config, source: str) -> None:
    def need(ok, key, message):
        if not ok:
            raise ConfigError(source, key, message)

    d, o, s, t, sp = cfg.data, cfg.optim, cfg.schedule, cfg.train, cfg.sparsity
    need(d.source in SOURCES, "data.source", f"must be one of {SOURCES}, got {d.source!r}")
    need(d.source == "triplets" or d.path, "data.path", f"required for source {d.source!r}")
    need(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    need(d.source != "triplets" or d.val_fraction > 0, "data.val_fraction", "triplets need > 0")
    need(0.0 < d.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
    need(o.name in OPTIMIZERS, "optim.name", f"must be one of {OPTIMIZERS}, got {o.name!r}")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)")
    need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = off)")
    need(s.name in SCHEDULES, "schedule.name", f"must be one of {SCHEDULES}, got {s.name!r}")
    need(s.t0 >= 1, "schedule.t0", "must be >= 1")
    need(s.t_mult >= 1, "schedule.t_mult", "must be >= 1")
    need(s.step_size >= 1, "schedule.step_size", "must be >= 1")
    need(0 < s.gamma <= 1, "schedule.gamma", "must be in (0, 1]")
    need(0 < s.factor < 1, "schedule.factor", "must be in (0, 1)")
    need(s.patience >= 0, "schedule.patience", "must be >= 0")
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
    need(t.mode in MODES, "train.mode", f"must be one of {MODES}, got {t.mode!r}")
    need(t.monitor.startswith("val_"), "train.monitor", "must be a validation metric (val_…)")
    need(t.patience >= 0, "train.patience", "must be >= 0 (0 = off)")
    need(t.keep_top_k >= 1, "train.keep_top_k", "must be >= 1")
    need(t.num_workers >= 1, "train.num_workers", "must be >= 1")
    need(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
    need(t.max_failures >= -1, "train.max_failures", "must be >= -1 (-1 = unlimited)")
    need(
        0 <= sp.dense_frac <= 1 and 0 <= sp.iht_frac <= 1 and sp.dense_frac + sp.iht_frac <= 1 + 1e-9,
        "sparsity",
        "dense_frac and iht_frac in [0, 1] with a sum <= 1",
    )
    if cfg.distill is not None:
        need(bool(cfg.distill.teacher), "distill.teacher", "a teacher checkpoint is required")
        need(0 <= cfg.distill.alpha <= 1, "distill.alpha", "must be in [0, 1]")
        need(cfg.distill.temperature > 0, "distill.temperature", "must be > 0")
    from pipeline.models import DATA_SOURCES, family

    if cfg.distill is not None:
        need(family(cfg.model.arch).distillable, "distill", "distillation needs a classifier family")

    sources = DATA_SOURCES.get(cfg.model.arch, ())
    need(
        d.source in sources,
        "model.arch",
        f"arch {cfg.model.arch!r} trains on data.source {' or '.join(map(repr, sources))}, not {d.source!r}",
    )
    try:
        cfg.model_config()  # the family's own range checks (dims may still be filled from the data)
    except (TypeError, ValueError) as e:
        first = str(e).split(" ", 1)[0]
        key = f"model.{first}" if first in cfg.model_fields() else "model"
        raise ConfigError(source, key, str(e)) from e
