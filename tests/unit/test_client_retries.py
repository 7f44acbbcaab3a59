"""serve.client.TunestackClient against a real local HTTP server (no Ray): idempotent calls are
retried on dropped connections and 502/503/504 with backoff; promote/rollback are sent once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve.client import TunestackClient, TunestackError


class Flaky(BaseHTTPRequestHandler):
    """Each path answers from its script, one entry per request: an HTTP status, or "drop" (close
    the connection without answering); 200 once the script runs out."""

    scripts: dict[str, list] = {}
    seen: dict[str, int] = {}

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen[self.path] = self.seen.get(self.path, 0) + 1
        script = self.scripts.get(self.path, [])
        step = script.pop(0) if script else 200
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = json.dumps(
            {"route": "powerful", "model_version": "v0001"} if step == 200 else {"detail": f"s{step}"}
        )
        self.send_response(step)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Flaky.scripts, Flaky.seen = {}, {}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def client(url, **kw):
    return TunestackClient(url, token="t", retries=3, backoff_s=0.01, max_backoff_s=0.02, timeout=5, **kw)


def test_idempotent_calls_are_retried_until_they_succeed(server):
    Flaky.scripts = {"/v1/route": [503, "drop", 502], "/v1/encode": [504]}
    c = client(server)
    assert c.route([0.5] * 5)["model_version"] == "v0001"
    assert c.encode("Revenues", "USD", 1.0)["route"] == "powerful"
    assert Flaky.seen == {"/v1/route": 4, "/v1/encode": 2}
    assert c.stats == {"requests": 2, "retries": 4, "failed": 0}


def test_retries_give_up_and_say_why(server):
    Flaky.scripts = {"/v1/route": [503] * 10}
    c = client(server)
    with pytest.raises(TunestackError) as e:
        c.route([0.5] * 5)
    assert e.value.status == 503 and Flaky.seen["/v1/route"] == 4 and c.stats["failed"] == 1


def test_client_errors_and_management_calls_are_not_retried(server):
    Flaky.scripts = {
        "/v1/route": [422],
        "/v1/models/router/rollback": [503],
        "/v1/models/router/promote": ["drop"],
    }
    c = client(server)
    with pytest.raises(TunestackError) as e:
        c.route([0.5] * 5)
    assert e.value.status == 422
    with pytest.raises(TunestackError) as e:
        c.rollback("router")  # a retried rollback would roll back twice
    assert e.value.status == 503
    with pytest.raises(TunestackError) as e:
        c.promote("router", "v0002")
    assert e.value.status is None
    assert Flaky.seen == {"/v1/route": 1, "/v1/models/router/rollback": 1, "/v1/models/router/promote": 1}
    assert c.stats == {"requests": 3, "retries": 0, "failed": 3}
