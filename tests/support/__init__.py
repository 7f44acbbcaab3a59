"""What tests share (import from here, never from another test module).

    tests.support               paths, the real SEC data, tree digests, free ports, wait_until
    tests.support.procs         processes of Ray clusters a test starts itself, and ending them
    tests.support.two_nodes     a two-node ray.cluster_utils.Cluster in a child process, running a body
    tests.support.serve_world   tiny real models trained in-process, registered; reference answers
    tests.support.store_docs    small synthetic companyfacts documents, a quick ingest, a store's rows
    tests.support.golden        the digest of a store's contents ingest's golden test records
    tests.support.faults        storage that fails midway (a full disk) for the fault drills
    tests.support.pickle_scan   find pickles among files (artifacts are never pickle)
    tests.support.s3server      moto's S3 server process (the s3_server / s3_prefix fixtures)

Fixtures stay in conftest.py files; the helpers they use live here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pipeline.runtime import free_port, free_ports

__all__ = [
    "COMPANIES",
    "REPO",
    "SHARED_DATA",
    "US_GAAP",
    "free_port",
    "free_ports",
    "require_us_gaap",
    "tree_digest",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
US_GAAP = SHARED_DATA / "us-gaap"
COMPANIES = {"AAPL": 12_154, "GOOG": 10_639, "MSFT": 15_957}  # unique facts, from shared/data/README.md

T = TypeVar("T")


def require_us_gaap() -> Path:
    """The real SEC companyfacts folder; the test is skipped, saying why, when it is absent."""
    if not US_GAAP.is_dir():
        pytest.skip(f"real SEC data not found at {US_GAAP} (a fresh clone has no ../shared/data)")
    return US_GAAP


def tree_digest(root: str | os.PathLike) -> dict[str, bytes]:
    """Every file under root with its bytes: equal digests mean a byte-identical tree."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def wait_until(
    condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy (returned) or `timeout` seconds pass
    (AssertionError naming `what`). What a test waits on instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
