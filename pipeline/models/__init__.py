"""Model families, pure PyTorch (no Ray), each described once by a `Family` (pipeline.models.family).

Adding a family = one module here (a config dataclass validating itself in __post_init__, an
nn.Module taking that config, and `FAMILY = Family(...)` at the bottom) plus its config file.
Every module of this package is imported when the package is, and its FAMILY registered, so Ray
Train workers, Serve replicas and the CLI all know it. A family module outside the package is
named in a config by its dotted module path (`model.arch: my_pkg.my_family`) and imported then.

The tables keyed by arch (`FAMILIES`, `MODEL_CONFIGS`, `DATA_SOURCES`, the trainer's `TASKS`,
Serve's `PREDICTORS`) are read-only views of REGISTRY.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from pipeline.models.family import Family, FamilyView

REGISTRY: dict[str, Family] = {}
_MODULE_ARCH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def register(fam: Family) -> Family:
    """Add a family (idempotent for the same descriptor; a different one under a taken arch is an error)."""
    if fam.arch in REGISTRY and REGISTRY[fam.arch] != fam:
        raise ValueError(f"model arch {fam.arch!r} is already registered")
    REGISTRY[fam.arch] = fam
    return fam


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        fam = getattr(module, "FAMILY", None)
        if isinstance(fam, Family):
            register(fam)


def family(arch: str) -> Family:
    """The registered family of `arch`; a dotted module path is imported and its FAMILY registered
    under that path (so configs and checkpoints name it, and Ray workers import it too)."""
    if arch in REGISTRY:
        return REGISTRY[arch]
    if isinstance(arch, str) and _MODULE_ARCH.match(arch):
        try:
            module = importlib.import_module(arch)
        except ImportError as e:
            raise ValueError(f"model arch {arch!r}: cannot import that module ({e})") from e
        fam = getattr(module, "FAMILY", None)
        if not isinstance(fam, Family):
            raise ValueError(f"model arch {arch!r}: the module defines no FAMILY = Family(...)")
        from dataclasses import replace

        return register(fam if fam.arch == arch else replace(fam, arch=arch))
    raise ValueError(f"unknown model arch {arch!r}; known: {sorted(REGISTRY)}")


_discover()

# Derived tables (read-only views; kept for the code and tests that index them by arch)
FAMILIES = FamilyView(lambda f: (f.config, f.model))
MODEL_CONFIGS = FamilyView(lambda f: f.config)
DATA_SOURCES = FamilyView(lambda f: f.sources)


def register_family(arch, config_cls, model_cls, sources=("sequences",), **descriptor):
    """Register a family at run time (tests, notebooks): `Family(arch, config_cls, model_cls,
    sources, **descriptor)`. Ray workers import pipeline.models afresh, so a family trained on Ray
    must live in a module (this package, or one named by its dotted path)."""
    return register(Family(arch, config_cls, model_cls, tuple(sources), **descriptor))


def make_config(arch, **kwargs):
    """The validated config dataclass of `arch`; unknown keys raise TypeError naming them."""
    return family(arch).make_config(**kwargs)


def build_model(arch, **kwargs):
    """Build the nn.Module of `arch` from config keyword arguments (see MODEL_CONFIGS[arch])."""
    return family(arch).build(**kwargs)
