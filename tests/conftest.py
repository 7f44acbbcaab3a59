"""Shared fixtures: the real SEC data beside the repo, a store ingested from it once per session, and
a real S3-protocol server (moto's, over HTTP) started once per session on first use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
US_GAAP = SHARED_DATA / "us-gaap"
COMPANIES = {"AAPL": 12_154, "GOOG": 10_639, "MSFT": 15_957}  # unique facts, from shared/data/README.md


def require_us_gaap() -> Path:
    if not US_GAAP.is_dir():
        pytest.skip(f"real SEC data not found at {US_GAAP} (a fresh clone has no ../shared/data)")
    return US_GAAP


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


def tree_digest(root: str | os.PathLike) -> dict[str, bytes]:
    """Every file under root with its bytes: equal digests mean a byte-identical tree."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server process on a free loopback port, with the bucket `tunestack-test`."""
    from tests.s3server import start_s3_server

    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_prefix(s3_server, monkeypatch) -> str:
    """A fresh `s3://tunestack-test/<prefix>` for this test, with AWS_ENDPOINT_URL and credentials set
    (so pyarrow and botocore in this process reach the test server)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server.uri(s3_server.fresh_prefix())
