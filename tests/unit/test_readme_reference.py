"""The README's reference sections match the code: every config key (with its type's default),
every Serve `args` key, and every HTTP endpoint is documented, and nothing documented is gone."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import SECTIONS, AshaSection, TuneSection
from pipeline.models import MODEL_CONFIGS
from serve.schemas import AppArgs

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
ROW = re.compile(r"^\| `(?P<key>[\w.]+)` \| (?P<type>[^|]+) \| (?P<default>[^|]+) \|", re.M)


def table_after(heading: str) -> dict[str, str]:
    """key -> default cell of the first table after `heading` in the README."""
    start = README.index(heading)
    rest = README[start:]
    table_start = rest.index("\n|")
    table = rest[table_start:].split("\n\n", 1)[0]
    return {m["key"]: m["default"].strip() for m in ROW.finditer(table)}


def defaults_of(cls) -> dict:
    """{key: default} of a config section (pydantic) or a model family's config (dataclass)."""
    if dataclasses.is_dataclass(cls):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
        }
    return {name: f.get_default(call_default_factory=True) for name, f in cls.model_fields.items()}


def same_default(documented: str, actual) -> bool:
    """The documented cell (`value` in backticks, YAML) equals the code's default."""
    m = re.search(r"`([^`]*)`", documented)
    if m is None:
        return False
    text = m.group(1)
    if text.endswith("…"):  # 0.3333… for 1/3
        return isinstance(actual, float) and f"{actual:.4f}".startswith(text[:-1])
    value = yaml.safe_load(text) if text != '""' else ""
    if isinstance(actual, float) and isinstance(value, (int, float)):
        return math.isclose(value, actual)
    return value == actual


SECTION_HEADINGS = {name: f"**`{name}`**" for name in SECTIONS}
MODEL_HEADINGS = {arch: f"`arch: {arch}`" for arch in MODEL_CONFIGS}


@pytest.mark.parametrize(
    "heading,cls",
    [
        *((SECTION_HEADINGS[n], c) for n, c in SECTIONS.items()),
        *((MODEL_HEADINGS[a], c) for a, c in MODEL_CONFIGS.items()),
        ("**`tune`**", TuneSection),
        ("**`tune.asha`**", AshaSection),
    ],
    ids=[*SECTIONS, *MODEL_CONFIGS, "tune", "tune.asha"],
)
def test_every_config_key_is_documented_with_its_default(heading, cls):
    documented = table_after(heading)
    defaults = defaults_of(cls)
    assert set(documented) == set(defaults), (
        f"{heading}: README lists {sorted(documented)}, code has {sorted(defaults)}"
    )
    for name, default in defaults.items():
        if name == "asha":  # a nested section, documented in its own table
            continue
        assert same_default(documented[name], default), (
            f"{heading} {name}: README says {documented[name]!r}, code default {default!r}"
        )


def test_every_serve_arg_is_documented_with_its_default():
    documented = table_after("| `args` key |")
    assert set(documented) == set(AppArgs.model_fields)
    for name, field in AppArgs.model_fields.items():
        if name in ("breaker", "families"):
            continue
        default = field.get_default(call_default_factory=True)
        assert same_default(documented[name], default), (name, documented[name], default)
    breaker = AppArgs().breaker
    for name, value in breaker.model_dump().items():
        assert re.search(rf"`{name}` \([a-z]+,\s+`{value}`", README), (
            f"breaker.{name} default {value} not documented"
        )


def test_every_http_endpoint_is_documented():
    source = (REPO / "serve" / "api.py").read_text()  # the HTTP API
    routes = re.findall(r'@app\.(get|post|put|delete)\(\s*"([^"]+)"', source)
    assert len(routes) >= 10
    for method, path in routes:
        assert f"`{method.upper()} {path}`" in README or f"`{method.upper()} {path}`," in README, (
            f"{method.upper()} {path} is not in the README's HTTP API reference"
        )


def test_every_subcommand_is_in_the_command_table():
    from pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        assert f"| `tunestack {name}" in README, (
            f"`tunestack {name}` is missing from the README's command table"
        )


def test_every_prometheus_metric_is_documented():
    source = (REPO / "serve" / "metrics.py").read_text()
    names = set(re.findall(r'"(tunestack_[a-z_]+)"', source))
    assert names, "no metrics found in serve/metrics.py"
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"metrics not in the README's /metrics row: {missing}"
