"""A model family in one place: the descriptor every per-family table is derived from.

A family module (pipeline/models/<family>.py, or any importable module named by its dotted path
in a config's `model.arch`) defines its config dataclass, its nn.Module and, at the bottom,

    FAMILY = Family(arch="my_arch", config=MyConfig, model=MyModel, sources=("sequences",),
                    task="pipeline.train.tasks:ClassificationTask", ...)

pipeline.models discovers the FAMILY of every module in its package; that registry is the only
table. The config schema (arch → config class, data sources), the trainer (arch → task), Serve
(arch → predictor, endpoint) and export (which engine runs it) all read it. The task and the
predictor are named as "module:Class" strings and imported when first used, so this package
(pure PyTorch, no Ray) never imports the trainer or Serve above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, fields

# The HTTP endpoints Serve has (POST /v1/route, POST /v1/encode); a family answers at most one.
ENDPOINTS = ("route", "encode")


def resolve_ref(ref: str):
    """The object a "package.module:Name" string names (imported on first use)."""
    module, _, name = ref.partition(":")
    if not module or not name:
        raise ValueError(f"{ref!r} is not a 'module:Name' reference")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Family:
    """Everything tunestack knows about one model family, keyed by its `arch`."""

    arch: str  # the `model.arch` of configs and checkpoints
    config: type  # dataclass validating itself in __post_init__; its fields are the `model:` keys
    model: type  # nn.Module built as model(config); pure PyTorch
    sources: tuple[str, ...]  # the `data.source` kinds it trains on
    task: str = "pipeline.train.tasks:ClassificationTask"  # loss + metrics ("module:Class")
    monitor: tuple[str, str] = ("val_accuracy", "max")  # sensible train.monitor / mode
    endpoint: str | None = None  # the Serve endpoint its predictor answers: "route" | "encode" | None
    predictor: str | None = None  # "serve.models:RoutePredictor": registry version -> answers
    distillable: bool = False  # outputs class logits: a teacher can be distilled into it
    # "module:function" (model config dict, trained sequence lengths) -> names of weights that are
    # provably unused (an export stores them as zeros of their shape); None: every weight is used
    unused_weights: str | None = None
    description: str = ""

    def __post_init__(self):
        if not self.arch or not isinstance(self.sources, tuple) or not self.sources:
            raise ValueError(f"family {self.arch!r}: needs an arch and a tuple of data sources")
        if self.endpoint is not None and self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"family {self.arch!r}: endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}"
            )

    def make_config(self, **params):
        """The validated config dataclass; unknown keys raise TypeError naming them."""
        known = {f.name for f in fields(self.config)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for arch {self.arch!r}; valid: {sorted(known)}")
        return self.config(**params)

    def build(self, **params):
        """The family's nn.Module from config keyword arguments."""
        return self.model(self.make_config(**params))

    def task_class(self):
        return resolve_ref(self.task)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What the task's finalize() reports (as val_<name>): the task's own list."""
        return tuple(self.task_class().metrics)

    def make_task(self, cfg, meta: dict | None = None, teacher=None, features=None):
        """The task that trains and evaluates this family for a resolved `cfg`; `meta` is the
        checkpoint metadata of the run (normalization, store), `teacher` a distillation teacher,
        `features` the model's feature transform (pipeline.data.features; triplet families)."""
        cls = self.task_class()
        if hasattr(cls, "for_run"):
            return cls.for_run(cfg, meta or {}, teacher=teacher, features=features)
        return cls()

    def unused(self, model_config: dict, sequence_lengths) -> tuple[str, ...]:
        """Weights an export may leave out for a model of this config trained on these lengths."""
        return (
            tuple(resolve_ref(self.unused_weights)(model_config, sequence_lengths))
            if self.unused_weights
            else ()
        )

    def predictor_class(self):
        if self.predictor is None:
            raise LookupError(f"arch {self.arch!r} has no Serve predictor")
        return resolve_ref(self.predictor)


class FamilyView(Mapping):
    """A read-only `{arch: value}` table derived from the family registry (always current)."""

    def __init__(self, value, registry=None, where=None):
        self._value, self._registry, self._where = value, registry, where

    def _families(self) -> dict:
        if self._registry is None:
            from pipeline.models import REGISTRY

            return {a: f for a, f in REGISTRY.items() if self._where is None or self._where(f)}
        return {a: f for a, f in self._registry.items() if self._where is None or self._where(f)}

    def __getitem__(self, arch):
        from pipeline.models import family

        fams = self._families()
        if arch not in fams:
            try:
                fam = family(arch)  # a family module named by its dotted path: imported now
            except ValueError:
                raise KeyError(arch) from None
            if self._where is not None and not self._where(fam):
                raise KeyError(arch)
            return self._value(fam)
        return self._value(fams[arch])

    def __iter__(self):
        return iter(self._families())

    def __len__(self):
        return len(self._families())

    def __repr__(self):
        return f"FamilyView({dict(self)!r})"
