"""A Serve config file (serve/config.yaml) validated in full at load: Ray Serve's own schema
(ServeDeploySchema, with unknown keys refused: Ray itself ignores a misspelt `num_replica`) and
this app's `args` (serve.schemas.AppArgs) for every application built by serve.app. Every
problem is reported at once, as pipeline.config does for training and tune files.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.config import dotted, problems_of, read_yaml
from pipeline.errors import ConfigError

APP_IMPORT = "serve.app:"  # applications whose `args` are AppArgs


def serve_config_problems(raw: dict) -> list[tuple[str, str]]:
    """(key, message) of everything wrong with a Serve config mapping ([] when it is valid)."""
    from ray.serve.schema import ServeDeploySchema

    from serve.schemas import AppArgs

    problems = [
        (dotted(loc), "unknown key" + "".join(f" (did you mean {m!r}?)" for m in close[:1]))
        for loc, close in unknown_keys(ServeDeploySchema, raw)
    ]
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as e:
        problems += problems_of(e, ServeDeploySchema, raw)
    apps = raw.get("applications")
    for i, app in enumerate(apps if isinstance(apps, list) else []):
        if not (isinstance(app, dict) and str(app.get("import_path", "")).startswith(APP_IMPORT)):
            continue
        args = app.get("args") or {}
        try:
            AppArgs.model_validate(args)
        except ValidationError as e:
            problems += [(f"applications[{i}].args.{k}", m) for k, m in problems_of(e, AppArgs, args)]
    return problems


def load_serve_config(path: str | Path) -> dict:
    """The Serve config at `path` as a dict; ConfigError naming the file and every bad key."""
    raw = read_yaml(path)
    problems = serve_config_problems(raw)
    if problems:
        raise ConfigError.many(str(path), problems)
    return raw


def unknown_keys(schema: type[BaseModel], raw: Any, loc: tuple = ()) -> list[tuple[tuple, list[str]]]:
    """(location, close known names) of each key in `raw` that `schema` (recursively, through
    nested models and lists of them) does not know. Ray's schemas ignore such keys; a file should not."""
    if not isinstance(raw, dict):
        return []
    fields = schema.model_fields
    names = {n: n for n in fields} | {f.alias: n for n, f in fields.items() if f.alias}
    out = []
    for key, value in raw.items():
        if key not in names:
            out.append(((*loc, key), difflib.get_close_matches(str(key), list(names), n=1)))
            continue
        nested = _model_in(fields[names[key]].annotation)
        if nested is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                out += unknown_keys(nested, item, (*loc, key, i))
        else:
            out += unknown_keys(nested, value, (*loc, key))
    return out


def _model_in(tp) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (X, X | None, list[X]), if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def serve_json_schema() -> dict:
    """JSON Schema of a Serve config file: Ray's ServeDeploySchema with `args` as AppArgs."""
    from ray.serve.schema import ServeDeploySchema

    from serve.schemas import AppArgs

    schema = ServeDeploySchema.model_json_schema()
    args = AppArgs.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs.update(args.pop("$defs", {}))
    defs["AppArgs"] = args
    app = defs.get("ServeApplicationSchema", {}).get("properties", {})
    if "args" in app:
        app["args"] = {"$ref": "#/$defs/AppArgs", "description": "serve.app:build_app's args"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
