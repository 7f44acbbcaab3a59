"""Shared fixtures: the real SEC data beside the repo, a store ingested from it once per session, and
a real S3-protocol server (moto's, over HTTP) started once per session on first use."""

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


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server process on a free loopback port, with the bucket `tunestack-test`."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        pytest.fail("moto's S3 server is part of the dev extra: pip install -e '.[dev]'")
    from tests.support.s3server import start_s3_server

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
