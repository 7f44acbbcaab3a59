"""Shared fixtures: the real SEC data beside the repo, and a store ingested from it once per session."""

from __future__ import annotations

import pytest

from tests.support import require_us_gaap


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own TUNESTACK_HOME, so nothing leaks into the checkout."""
    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def us_gaap_store(tmp_path_factory) -> str:
    """The three companyfacts documents ingested into one store (hashed embedder: fast, offline)."""
    data = require_us_gaap()
    from pipeline.ingest import ingest

    uri = str(tmp_path_factory.mktemp("store") / "us-gaap")
    ingest(
        sorted(str(p) for p in data.glob("*_companyfacts.json.gz")), uri, embedder="hashed", progress=False
    )
    return uri
