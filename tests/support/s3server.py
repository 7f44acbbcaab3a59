"""A real S3-protocol server for tests: moto's server process, over HTTP on a free loopback port.

Not an in-process patch: every request tunestack, pyarrow, botocore or a Ray worker makes goes
over a socket to this process, as it would to S3. The `s3_server` fixture (tests/conftest.py)
starts one per test session, on first use, and creates one bucket; `s3_prefix` gives each test a
fresh prefix in it with the environment set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

from pipeline.runtime import free_port

BUCKET = "tunestack-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups (each would time out here)
}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@dataclass
class S3Server:
    proc: subprocess.Popen
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str = BUCKET
    log: str = ""
    env: dict = field(default_factory=dict)  # AWS_ENDPOINT_URL + credentials: what a client needs

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def uri(self, prefix: str = "", options: bool = False) -> str:
        """`s3://bucket/prefix`; with `options`, the endpoint and region in pyarrow's URI form (for a
        process without AWS_ENDPOINT_URL; credentials still come from the environment)."""
        base = f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")
        if not options:
            return base
        return f"{base}?endpoint_override={self.host_port}&scheme=http&region={CREDENTIALS['AWS_DEFAULT_REGION']}"

    def fresh_prefix(self, name: str = "t") -> str:
        return f"{name}-{uuid.uuid4().hex[:10]}"

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_s3_server(timeout: float = 60.0, attempts: int = 3) -> S3Server:
    """Start `python -m moto.server` on a free loopback port, wait until it answers, create the bucket."""
    last = ""
    for _ in range(attempts):  # the free port may be taken between choosing it and binding it
        port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
            start_new_session=True,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and not _answers(f"{endpoint}/moto-api/"):
            time.sleep(0.1)
        if proc.poll() is None and _answers(f"{endpoint}/moto-api/"):
            server = S3Server(proc, endpoint, log=log.name, env={**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
            server.client().create_bucket(Bucket=BUCKET)
            return server
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        with open(log.name) as f:
            last = f.read()[-2000:]
    raise RuntimeError(f"moto's S3 server did not start:\n{last}")
