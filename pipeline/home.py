"""Where tunestack keeps things: TUNESTACK_HOME, and TUNESTACK_STORAGE for what nodes share.

    TUNESTACK_HOME      this machine's folder (default `./.tunestack`): generated data (digits,
                        routing logs) and, unless TUNESTACK_STORAGE says otherwise, everything else
    TUNESTACK_STORAGE   where the store, runs and registry live (default: TUNESTACK_HOME): a local
                        path, or a URI every node reaches (`s3://bucket/prefix`, `gs://…`; see
                        pipeline.storage for credentials and endpoints)

Every command resolves its store, runs and registry through here; `--store`, `tune.storage` and
Serve's `registry_root` still name any one of them explicitly.
"""

from __future__ import annotations

import os

from pipeline.storage import join_uri

HOME_ENV = "TUNESTACK_HOME"
STORAGE_ENV = "TUNESTACK_STORAGE"


def home() -> str:
    """The tunestack home: `$TUNESTACK_HOME`, or `.tunestack` in the current directory."""
    return os.environ.get(HOME_ENV) or os.path.join(os.getcwd(), ".tunestack")


def storage_root() -> str:
    """Where the store, runs and registry live: `$TUNESTACK_STORAGE`, else the home."""
    return os.environ.get(STORAGE_ENV) or home()


def expand(path: str) -> str:
    """A config path with `$TUNESTACK_HOME` / `$TUNESTACK_STORAGE` (even when unset: their defaults),
    other environment variables and `~` expanded. URIs pass through otherwise."""
    for name, value in ((STORAGE_ENV, storage_root), (HOME_ENV, home)):
        for ref in ("${" + name + "}", "$" + name):
            if path.startswith(ref):  # joined, so a URI keeps its options (`?region=…`) at the end
                path = join_uri(value(), path[len(ref) :])
            path = path.replace(ref, value())
    return path if "://" in path else os.path.expanduser(os.path.expandvars(path))


def default_store_uri() -> str:
    return join_uri(storage_root(), "store")


def runs_dir() -> str:
    return join_uri(storage_root(), "runs")


def registry_dir() -> str:
    return join_uri(storage_root(), "registry")
