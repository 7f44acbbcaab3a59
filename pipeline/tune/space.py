"""Search spaces and training plans written in plain YAML, turned into a Ray Tune param space.

    search:                       # sampled per trial (nested like the config, or dotted keys)
      optim:
        lr: {loguniform: [1.0e-4, 1.0e-1]}
      model.hidden_size: {grid: [16, 32, 64]}
    plan:                         # every combination of these lists (the One-Pipeline "plan")
      model.cell: [fastgrnn, gru]
      train.batch_size: [64, 128]
    exclude:                      # combinations that make no sense
      - {model.cell: gru, train.batch_size: 64}

`grid` entries join the plan's cartesian product; the product minus `exclude` becomes one
`tune.grid_search` over override dicts, and Tune repeats it `num_samples` times with the sampled
keys drawn afresh. Keys are config paths (`section.key`), checked against the config schema.
"""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.errors import ConfigError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
PLAN_KEY = "plan"


class SpaceError(ConfigError):
    """A search space that cannot be used; the message names the file and the key."""


def flatten_search(search: Any, source: str, prefix: str = "search") -> dict[str, dict]:
    """{"optim": {"lr": {"loguniform": […]}}} or {"optim.lr": …} → {"optim.lr": {"loguniform": […]}}."""
    if not isinstance(search, dict):
        raise SpaceError(source, prefix, f"expected a mapping, got {search!r}")
    out: dict[str, dict] = {}
    for key, value in search.items():
        path = f"{prefix}.{key}"
        dotted = path.split(".", 1)[1]
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
            out[dotted] = _check_dist(value, source, path)
        elif isinstance(value, dict):
            out.update(flatten_search(value, source, path))
        else:
            raise SpaceError(
                source, path, f"expected one of {{{', '.join(DISTRIBUTIONS)}: …}} or a section, got {value!r}"
            )
    return out


def _check_dist(spec: dict, source: str, key: str) -> dict:
    ((kind, args),) = spec.items()
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SpaceError(source, key, f"{kind} needs a non-empty list")
    else:
        if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
            raise SpaceError(source, key, f"{kind} needs [low, high] numbers, got {args!r}")
        low, high = args
        if not low < high:
            raise SpaceError(source, key, f"{kind} needs low < high, got {args!r}")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(source, key, "loguniform needs low > 0")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise SpaceError(source, key, "randint needs integers")
    return {kind: args}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def expand_plan(search: dict[str, dict], plan: Any, exclude: Any, source: str) -> list[dict[str, Any]]:
    """Every combination of the plan's lists and the search's grids, minus the excluded ones."""
    axes: dict[str, list] = {k: v["grid"] for k, v in search.items() if "grid" in v}
    if plan is not None:
        if not isinstance(plan, dict):
            raise SpaceError(source, "plan", f"expected a mapping of key: [values], got {plan!r}")
        for key, values in plan.items():
            if not isinstance(values, list) or not values:
                raise SpaceError(source, f"plan.{key}", "expected a non-empty list of values")
            if key in axes:
                raise SpaceError(source, f"plan.{key}", "also given as a grid in search")
            axes[key] = values
    rules = exclude or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise SpaceError(source, "exclude", "expected a list of {key: value} mappings")
    for i, rule in enumerate(rules):
        for key in rule:
            if key not in axes:
                raise SpaceError(source, f"exclude[{i}].{key}", "not a plan or grid key")
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
    kept = [c for c in combos if not any(all(c[k] == v for k, v in r.items()) for r in rules)]
    if not kept:
        raise SpaceError(source, "exclude", "excludes every combination of the plan")
    return kept


def param_space(search: dict[str, dict], plan_combos: list[dict]) -> dict:
    """The Ray Tune param space: sampled keys by name, the plan as one grid over override dicts."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, spec in search.items():
        ((kind, args),) = spec.items()
        if kind == "grid":
            continue  # part of the plan
        space[key] = {
            "choice": lambda a: tune.choice(a),
            "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive, as written
        }[kind](args)
    if plan_combos and plan_combos != [{}]:
        space[PLAN_KEY] = tune.grid_search(plan_combos)
    return space


def overrides_of(trial_config: dict) -> dict[str, Any]:
    """A trial's config (sampled keys + the plan entry) → {dotted key: value}."""
    out = {k: v for k, v in trial_config.items() if k != PLAN_KEY}
    out.update(trial_config.get(PLAN_KEY) or {})
    return out


def sample_values(search: dict[str, dict]) -> dict[str, Any]:
    """One representative value per searched key (for validating the keys against the schema)."""
    out = {}
    for key, spec in search.items():
        ((kind, args),) = spec.items()
        out[key] = args[0]
    return out
