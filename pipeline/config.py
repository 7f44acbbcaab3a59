"""The one config schema (pydantic): YAML → `--set key.sub=value` overrides → validated model.

A config file has the sections below; every key is typed, every section optional except `data`
and `model`. Loading validates the WHOLE file (training and tune sections, cross-field rules,
`train.monitor` against the family's metrics) and gathers every problem into one ConfigError
naming the file and each key, before anything starts. The `model` section is `arch` plus the
fields of that arch's config dataclass (pipeline.models.MODEL_CONFIGS), type-checked the same
way, then validated by the family itself.

    data:     where the examples come from (triplet store, routing logs, .npz/Parquet sequences)
    model:    arch + the model family's own options
    optim:    Adam/AdamW, learning rate, weight decay, gradient clipping
    schedule: none | cosine (one cycle, set every batch) | cosine_restarts | step | plateau
    train:    epochs, batch size, early stopping, checkpoints kept, workers, AMP, failures
    sparsity: FastGRNN's dense → IHT → fixed-support phase split (used when the model keeps < 1)
    distill:  optional teacher checkpoint for knowledge distillation (classifiers)
    route:    routers: the error target the routing threshold is calibrated for
    search, plan, exclude, tune:  `tunestack tune` only (TuneConfig; pipeline.tune.space grammar)

Adding a key = one field (type, default, bounds, description) on its section class; a section =
one class here plus one field on Config (or TuneConfig). Cross-field rules go in the section's
`problems()`. The README's config reference lists every key (tests/unit/test_readme_reference.py).
The resolved config (`to_dict`) is written as JSON beside every checkpoint; `tunestack config
schema` prints each file kind's JSON Schema.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "TuneConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "load_tune_config",
    "read_yaml",
    "validate",
]

Problems = Iterator[tuple[str, str]]  # (dotted key, message) pairs of a section's cross-field rules


def _yaml_float(value):
    """YAML 1.1 reads `1e-3` (no dot) as a string: accept numeric strings where a float belongs."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]  # an int is accepted too (strict mode allows it)


class Section(BaseModel):
    """A config mapping: unknown keys and wrong types are errors (no silent coercion: 1 ≠ true)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def problems(self) -> Problems:
        """Cross-field rules, as (key relative to this section, message)."""
        return iter(())


# ---------------------------------------------------------------------------------------------
# Training sections


class DataSection(Section):
    source: Literal["triplets", "routing", "sequences"] = Field(
        "sequences", description="triplets (autoencoder) | routing (router) | sequences (.npz/Parquet)"
    )
    path: str | None = Field(
        None,
        description="routing: folder or .parquet; sequences: .npz/.parquet; triplets: store URI "
        "(null = the default store)",
    )
    val_fraction: Float = Field(
        0.1,
        ge=0,
        lt=1,
        description="triplets: share of filing folds held out; others: share of train held out "
        "for early stopping",
    )
    test_fraction: Float = Field(
        0.25, gt=0, lt=1, description="routing/sequences without a `split` column: stratified test share"
    )
    normalize: bool = Field(True, description="routing/sequences: z-score with train-split statistics")
    log1p: list[str] = Field(
        default_factory=list, description="named features (e.g. counts) log1p'd before the z-score"
    )

    def problems(self) -> Problems:
        if self.source != "triplets" and not self.path:
            yield "path", f"required for source {self.source!r}"
        if self.source == "triplets" and self.val_fraction <= 0:
            yield "val_fraction", "triplets need > 0"


class OptimSection(Section):
    name: Literal["adam", "adamw"] = "adam"
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(0.0, ge=0, description="Adam: L2 added to the gradient; AdamW: decoupled")
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    grad_clip: Float = Field(1.0, ge=0, description="max global gradient norm; 0 = no clipping")

    def problems(self) -> Problems:
        if not all(0 <= b < 1 for b in self.betas):
            yield "betas", "two numbers in [0, 1)"


class ScheduleSection(Section):
    name: Literal["none", "cosine", "cosine_restarts", "step", "plateau"] = "none"
    t0: int = Field(10, ge=1, description="cosine_restarts: epochs of the first cycle")
    t_mult: int = Field(1, ge=1, description="cosine_restarts: cycle length multiplier")
    eta_min: Float = Field(0.0, description="cosine, cosine_restarts: lowest learning rate")
    step_size: int = Field(1, ge=1, description="step: epochs between decays")
    gamma: Float = Field(0.95, gt=0, le=1, description="step: decay factor (step_size=1: exponential)")
    factor: Float = Field(0.5, gt=0, lt=1, description="plateau: decay factor")
    patience: int = Field(3, ge=0, description="plateau: epochs without improvement of the monitor")
    min_lr: Float = Field(0.0, description="plateau: floor")


class TrainSection(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    monitor: str = Field("val_loss", description="validation metric for early stopping and ranking")
    mode: Literal["min", "max"] = Field("min", description="whether `monitor` improves down or up")
    patience: int = Field(0, ge=0, description="early stopping after this many flat epochs; 0 = off")
    min_delta: Float = Field(0.0, description="smallest change that counts as an improvement")
    keep_top_k: int = Field(2, ge=1, description="checkpoints kept, ranked by `monitor`")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1)")
    cpus_per_worker: Float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="null = use GPUs when the cluster has any")
    amp: bool = Field(True, description="mixed precision on GPU (ignored on CPU)")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts; -1 = unlimited")
    seed: int = 0


class SparsitySection(Section):
    dense_frac: Float = Field(1 / 3, ge=0, le=1, description="share of epochs trained dense")
    iht_frac: Float = Field(
        1 / 3, ge=0, le=1, description="share with hard thresholding; the rest keep the support fixed"
    )

    def problems(self) -> Problems:
        if self.dense_frac + self.iht_frac > 1 + 1e-9:
            yield "", "dense_frac and iht_frac in [0, 1] with a sum <= 1"


class DistillSection(Section):
    teacher: str = Field("", description="checkpoint folder or run of the teacher")
    alpha: Float = Field(0.5, ge=0, le=1, description="weight of the soft (teacher) term")
    temperature: Float = Field(2.0, gt=0)

    def problems(self) -> Problems:
        if not self.teacher:
            yield "teacher", "a teacher checkpoint is required"


class RouteSection(Section):
    max_lightweight_error: Float = Field(
        0.02,
        ge=0,
        lt=1,
        description="routers: the threshold is calibrated (validation split) so that at most this share "
        "of the requests routed lightweight needed the powerful model",
    )


# ---------------------------------------------------------------------------------------------
# The model section: `arch` + that family's config dataclass, each field typed as in the dataclass


def _yaml_types(tp):
    """A dataclass annotation with every float accepting YAML's numeric strings (as Float)."""
    if tp is float:
        return Float
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_yaml_types(a) for a in args)]  # noqa: UP007 (built at run time)
    if origin in (list, tuple) and args:
        return list[_yaml_types(args[0])]
    return tp


@functools.cache
def family_schema(arch: str, config_cls: type) -> type[Section]:
    """The pydantic model of one family's `model:` section (arch + the dataclass's fields)."""
    hints = typing.get_type_hints(config_cls)
    fields: dict[str, Any] = {"arch": (Literal[arch], arch)}
    for f in dataclasses.fields(config_cls):
        default = (
            Field(default=f.default)
            if f.default is not dataclasses.MISSING
            else Field(default_factory=f.default_factory)
        )
        fields[f.name] = (_yaml_types(hints[f.name]), default)
    doc = config_cls.__doc__ or ""
    doc = None if doc.startswith(f"{config_cls.__name__}(") else doc  # dataclass's generated signature
    return create_model(f"model[{arch}]", __base__=Section, __doc__=doc or f"arch: {arch}", **fields)


def _fail(key: str, message: str, value=None) -> ValidationError:
    """A validation error at `key` of the section being validated ("" = the section itself)."""
    error = PydanticCustomError("config", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "model", [{"type": error, "loc": (key,) if key else (), "input": value}]
    )


class ModelSection(BaseModel):
    """`arch` + that arch's options (flat in YAML; `params` holds the options given)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    arch: str = "sequence_classifier"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _validate_family(cls, raw):
        from pipeline.models import MODEL_CONFIGS, make_config

        if isinstance(raw, ModelSection):
            return raw
        if not isinstance(raw, dict):
            raise PydanticCustomError("config", "expected a mapping, got {got}", {"got": repr(raw)})
        arch = raw.get("arch", "sequence_classifier")
        if not isinstance(arch, str) or arch not in MODEL_CONFIGS:
            raise _fail("arch", f"unknown arch {arch!r}; known: {sorted(MODEL_CONFIGS)}", arch)
        params = family_schema(arch, MODEL_CONFIGS[arch]).model_validate(raw).model_dump(exclude_unset=True)
        params.pop("arch", None)
        try:
            make_config(arch, **params)  # the family's own range checks (dims may come from the data)
        except (TypeError, ValueError) as e:
            first = str(e).split(" ", 1)[0]
            raise _fail(first if first in _field_names(arch) else "", str(e)) from e
        return {"arch": arch, "params": params}

    @model_serializer(mode="plain")
    def _flat(self) -> dict:
        return {"arch": self.arch, **self.params}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        from pipeline.models import MODEL_CONFIGS

        return {
            "title": "model",
            "description": "arch + that family's options",
            "anyOf": [family_schema(a, c).model_json_schema() for a, c in sorted(MODEL_CONFIGS.items())],
        }


def _field_names(arch: str) -> list[str]:
    from pipeline.models import MODEL_CONFIGS

    return [f.name for f in dataclasses.fields(MODEL_CONFIGS[arch])]


# ---------------------------------------------------------------------------------------------
# The training config


class _Problems(ValueError):
    """Cross-field problems of a whole config, carried through pydantic to the error translator."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        super().__init__("; ".join(f"{k}: {m}" for k, m in items))


class Config(Section):
    """A training config (`tunestack train`); also the training half of a tune file."""

    data: DataSection
    model: ModelSection
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=TrainSection)
    sparsity: SparsitySection = Field(default_factory=SparsitySection)
    distill: DistillSection | None = None
    route: RouteSection = Field(default_factory=RouteSection)
    name: str = Field("run", description='run names are "<name>-<timestamp>"')

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, raw):
        """`optim:` with nothing under it (YAML null) means the defaults, as an absent section."""
        if isinstance(raw, dict):
            keep = {"data", "model", "distill"}
            return {k: v for k, v in raw.items() if v is not None or k in keep}
        return raw

    @model_validator(mode="after")
    def _cross_checks(self):
        items = list(self._problems())
        if items:
            raise _Problems(items)
        return self

    def _problems(self) -> Problems:
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, Section):
                for key, message in section.problems():
                    yield f"{name}.{key}" if key else name, message
        from pipeline.models import DATA_SOURCES

        arch, source = self.model.arch, self.data.source
        sources = DATA_SOURCES.get(arch, ())
        if source not in sources:
            yield (
                "model.arch",
                f"arch {arch!r} trains on data.source {' or '.join(map(repr, sources))}, not {source!r}",
            )
        metrics = family_metrics(arch)
        if not self.train.monitor.startswith("val_"):
            yield "train.monitor", "must be a validation metric (val_…)"
        elif metrics and self.train.monitor not in metrics:
            yield "train.monitor", f"{self.train.monitor!r} is not a metric of {arch!r}; one of {metrics}"
        if self.distill is not None and arch != "sequence_classifier":
            yield "distill", "distillation needs a classifier"

    # -- what the rest of the code reads -----------------------------------------------------

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the training config; the model section flat (arch + options)."""
        return self.model_dump(include=set(Config.model_fields))

    def family_config(self, source: str = "<config>"):
        """The arch's validated config dataclass (pipeline.models); ConfigError when the family
        refuses it (e.g. a rank above the input size the data filled in)."""
        from pipeline.models import make_config

        try:
            return make_config(self.model.arch, **self.model.params)
        except (TypeError, ValueError) as e:
            first = str(e).split(" ", 1)[0]
            key = f"model.{first}" if first in _field_names(self.model.arch) else "model"
            raise ConfigError(source, key, str(e)) from e

    def with_model(self, arch: str | None = None, params: dict | None = None) -> Config:
        """A copy with the model section replaced (validation is the caller's: the data fills dims)."""
        model = ModelSection.model_construct(
            arch=arch or self.model.arch, params=dict(self.model.params if params is None else params)
        )
        return self.model_copy(update={"model": model})

    @property
    def uses_sparsity(self) -> bool:
        p = self.model.params
        return (
            p.get("cell", "fastgrnn") == "fastgrnn"
            and min(p.get("w_sparsity", 1.0), p.get("u_sparsity", 1.0)) < 1.0
        )


def family_metrics(arch: str) -> list[str]:
    """The validation metrics (val_…) a family's training reports; [] when its Task is unknown."""
    from pipeline.train.tasks import TASKS

    task = TASKS.get(arch)
    return [f"val_{m}" for m in getattr(task, "metrics", ())]


# Every training section by name (the README's config reference is checked against these)
SECTIONS: dict[str, type[Section]] = {
    name: next(a for a in typing.get_args(f.annotation) or (f.annotation,) if isinstance(a, type))
    for name, f in Config.model_fields.items()
    if name not in ("model", "name")
}


# ---------------------------------------------------------------------------------------------
# Tune sections (pipeline.tune.spec turns a validated TuneConfig into what Ray Tune runs)


class AshaSection(Section):
    time_attr: Literal["training_iteration", "epoch"] = "training_iteration"
    grace_period: int = Field(2, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: Float = Field(3.0, gt=1, description="1/this of the trials go on at each rung")
    max_t: int | None = Field(None, ge=1, description="the last rung; null = train.epochs")
    brackets: int = Field(1, ge=1)

    def problems(self) -> Problems:
        if self.max_t is not None and self.max_t < self.grace_period:
            yield "max_t", "must be >= grace_period"


class TuneSection(Section):
    num_samples: int = Field(1, ge=1, description="repeats of the plan/grid; draws of the sampled keys")
    metric: str | None = Field(None, description='what "best" means (default: train.monitor)')
    mode: Literal["min", "max"] | None = Field(None, description="default: train.mode")
    search_alg: Literal["random", "optuna", "hyperopt"] = "random"
    max_concurrent: int = Field(0, ge=0, description="0 = as many as the cluster's CPUs/GPUs fit")
    trial_cpus: Float = Field(0.25, gt=0, le=8, description="CPU held by each trial's driver")
    storage: str | None = Field(
        None, description="experiment storage URI (default $TUNESTACK_HOME/runs/tune)"
    )
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list,
        description="configurations tried first: values of sampled search keys (each runs every plan entry)",
    )
    asha: AshaSection | None = Field(
        default_factory=AshaSection, description="early stopping across trials; null runs every trial out"
    )

    def problems(self) -> Problems:
        if self.asha is not None:
            for key, message in self.asha.problems():
                yield f"asha.{key}", message


class TuneConfig(Config):
    """A tune file (`tunestack tune`): a training config plus its search space and Tune settings."""

    search: dict[str, Any] = Field(
        default_factory=dict,
        description="sampled per trial: {section: {key: {choice|uniform|loguniform|randint|grid: args}}} "
        "or dotted keys",
    )
    plan: dict[str, list] | None = Field(None, description="every combination of these lists is tried")
    exclude: list[dict[str, Any]] | None = Field(None, description="plan combinations left out")
    tune: TuneSection = Field(default_factory=TuneSection)
    _search: dict[str, dict] = PrivateAttr(default_factory=dict)  # flattened: dotted key → {dist: args}
    _plan: list[dict[str, Any]] = PrivateAttr(default_factory=lambda: [{}])

    def training(self) -> Config:
        """The training half (what `tunestack train` runs, and each trial's base)."""
        return Config.model_validate(self.to_dict())

    def _problems(self) -> Problems:
        yield from super()._problems()
        yield from self._search_problems()
        alg = self.tune.search_alg
        if alg != "random" and self._plan != [{}]:
            yield "tune.search_alg", "a plan or grid needs search_alg: random"
        elif alg != "random" and importlib.util.find_spec(alg) is None:
            yield "tune.search_alg", f"{alg} is not installed (pip install {alg}), or use random"
        metric = self.tune.metric
        if metric is not None:
            metrics = family_metrics(self.model.arch)
            if not metric.startswith("val_"):
                yield "tune.metric", "must be a validation metric (val_…)"
            elif metrics and metric not in metrics:
                yield "tune.metric", f"{metric!r} is not a metric of {self.model.arch!r}; one of {metrics}"

    def _search_problems(self) -> Problems:
        from pipeline.tune.space import expand_plan, flatten_search, sample_values

        try:
            self._search = flatten_search(self.search, "")
            self._plan = expand_plan(self._search, self.plan, self.exclude, "")
        except ConfigError as e:
            yield from e.problems
            return
        base = self.to_dict()
        # Every searched or planned key must be a config key of the right type: try one value of each.
        sample = sample_values(self._search)
        bad_keys = False
        for key, value in {**sample, **self._plan[0]}.items():
            for message in _override_problems(base, key, value):
                bad_keys = True
                yield f"search.{key}" if key in self._search else f"plan.{key}", message
        # ... and every plan entry a valid config with the sampled keys (model.cell: gru with a
        # FastGRNN-only option fails here, not in a trial an hour in): the first few that do not.
        failing = 0
        for combo in self._plan if not bad_keys and self._plan != [{}] else []:
            try:
                with_overrides(base, {**sample, **combo}, "")
            except ConfigError as e:
                failing += 1
                if failing <= 3:
                    entry = ", ".join(f"{k}={v}" for k, v in combo.items())
                    yield (
                        "plan",
                        f"the entry {{{entry}}}: {e.problems[0][0]}: {e.problems[0][1]} (leave it out with exclude:)",
                    )
        sampled = [k for k, v in self._search.items() if "grid" not in v]
        for i, point in enumerate(self.tune.points_to_evaluate):
            where = f"tune.points_to_evaluate[{i}]"
            if not point:
                yield where, "expected a mapping of sampled search keys to values, got {}"
            for key, value in point.items():
                if key not in sampled:
                    planned = any(key in combo for combo in self._plan)
                    why = (
                        "a plan or grid key (a point runs every plan entry)"
                        if planned
                        else "not a sampled search key"
                    )
                    yield f"{where}.{key}", f"{why}; sampled keys: {sampled}"
                    continue
                for message in _override_problems(base, key, value):
                    yield f"{where}.{key}", message

    @property
    def search_space(self) -> dict[str, dict]:
        """The search flattened to dotted keys: {"optim.lr": {"loguniform": [...]}}."""
        return self._search

    @property
    def plan_entries(self) -> list[dict[str, Any]]:
        """The expanded plan (grid keys included), [{}] when there is none."""
        return self._plan


def _override_problems(base: dict, key: str, value) -> list[str]:
    """Messages of what is wrong with `key=value` on the training config `base` ([] when fine)."""
    try:
        with_overrides(base, {key: value}, "")
    except ConfigError as e:
        return [m for k, m in e.problems if k == key or k.startswith((f"{key}.", f"{key}["))] or [
            f"{k}: {m}" for k, m in e.problems
        ]
    return []


# ---------------------------------------------------------------------------------------------
# Loading: YAML → overrides → validation; pydantic's errors become "file: key: message"


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError naming the file otherwise."""
    path = str(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, "<file>", f"cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(path, "<file>", f"not valid YAML ({e})") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "<top>", f"expected a mapping, got {type(raw).__name__}")
    return raw


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
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(source, key, f"{part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def with_overrides(base: dict, overrides: dict[str, Any], source: str) -> Config:
    """The validated training config of `base` with {dotted key: value} set (a trial's config)."""
    raw = copy.deepcopy(base)
    apply_overrides(
        raw,
        [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in overrides.items()],
        source,
    )
    return validate(Config, raw, source)


def validate(schema: type[BaseModel], raw: Any, source: str):
    """`schema.model_validate(raw)`, every problem translated into one ConfigError naming `source`."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "<top>", f"expected a mapping, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError.many(source, problems_of(e, schema, raw)) from None


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate a training config (a YAML mapping or a saved resolved config)."""
    return validate(Config, raw, source)


def load_tune_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TuneConfig:
    """Read a config file, apply `key.sub=value` overrides, validate all of it (tune sections too)."""
    raw = read_yaml(path)
    apply_overrides(raw, overrides, str(path))  # `--set tune.asha.max_t=4` as well as `train.epochs=4`
    return validate(TuneConfig, raw, str(path))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The training config of a file (`tunestack train`); the whole file is validated, a tune
    file's search included, though training runs its defaults once."""
    return load_tune_config(path, overrides).training()


# -- pydantic error → (key, message) ------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "float_type": "float",
    "float_parsing": "float",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "string_type": "str",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def problems_of(error: ValidationError, schema: type[BaseModel], raw: Any) -> list[tuple[str, str]]:
    """(dotted key, message) for every error pydantic found, in the file's terms."""
    out: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc, kind, value = err["loc"], err["type"], err.get("input")
        ctx = err.get("ctx") or {}
        if kind == "value_error" and isinstance(ctx.get("error"), _Problems):
            prefix = dotted(loc)
            out += [(f"{prefix}.{k}" if prefix else k, m) for k, m in ctx["error"].items]
            continue
        key = dotted(loc)
        if kind == "extra_forbidden":
            message = _unknown_key(schema, loc, raw)
        elif kind == "missing":
            message = "section is required" if len(loc) == 1 else "required"
        elif kind in _TYPE_NAMES:
            message = f"expected {_TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})"
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}, got {value!r}"
        elif kind == "value_error":
            message = str(ctx.get("error", err["msg"]))
        elif kind == "config":  # raised here with the message as the file should read it
            message = err["msg"]
        else:
            message = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
            if value is not None and not isinstance(value, (dict, list)):
                message += f", got {value!r}"
        out.append((key or "<top>", message))
    return out


def dotted(loc) -> str:
    """('optim', 'betas', 1) → "optim.betas[1]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _unknown_key(schema: type[BaseModel], loc, raw) -> str:
    """'unknown key; valid: [...]' with the keys of the section the unknown key sits in."""
    cls, node = schema, raw
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        field = cls.model_fields.get(part) if isinstance(part, str) and cls else None
        if field is None:
            return "unknown key"
        cls = next((a for a in (field.annotation, *typing.get_args(field.annotation)) if _is_model(a)), None)
        if cls is ModelSection:
            arch = node.get("arch", "sequence_classifier") if isinstance(node, dict) else None
            return f"unknown key for arch {arch!r}; valid: {['arch', *_field_names(arch)]}"
    return f"unknown key; valid: {list(cls.model_fields) if cls else []}"


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def json_schema(kind: str) -> dict:
    """The JSON Schema of a file kind: "train" (Config), "tune" (TuneConfig)."""
    schema = {"train": Config, "tune": TuneConfig}[kind].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
