"""Property-based fuzzing of the HTTP API from its own published OpenAPI schema (schemathesis).

Every operation of /openapi.json — inference, health, metrics and the management endpoints, sent
with a valid admin token — gets requests generated from the schema (valid and invalid), against the
real FastAPI app over in-process models (serve.app.make_local_api on a copy of the test registry;
no Ray). Each answer must be no 5xx and conform to the schema: a documented status code, the
documented content type and a body that validates against the documented response model.
Examples are bounded (MAX_EXAMPLES per operation, derandomized) so the run stays a few seconds.
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.serve_world import build_world

MAX_EXAMPLES = 30
TOKEN = "fuzz-token"
SEEN: Counter = Counter()  # (operation, status) -> answers


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from serve.app import make_local_api
    from serve.gateway import token_sha256

    tmp = tmp_path_factory.mktemp("fuzz")
    world = build_world(tmp)
    root = tmp / "fuzz-registry"
    shutil.copytree(world["root"], root)
    app = make_local_api(
        {
            "registry_root": str(root),
            "admin_token_sha256": token_sha256(TOKEN),
            "max_instances": 16,
            "max_body_bytes": 16_384,
            "reload_wait_s": 1.0,
            "jobs_dashboard_address": "http://127.0.0.1:9",  # no cluster: the Jobs API is unreachable
        }
    )
    yield app
    by_status = Counter()
    for (_op, status), n in SEEN.items():
        by_status[status] += n
    print(
        f"\nschemathesis: {sum(SEEN.values())} requests over {len({op for op, _ in SEEN})} operations; "
        f"statuses {dict(sorted(by_status.items()))}"
    )
    for op in sorted({op for op, _ in SEEN}):
        print(f"  {op}: {dict(sorted((st, n) for (o, st), n in SEEN.items() if o == op))}")


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def operations(api_schema) -> list:
    return [r.ok() for r in api_schema.get_all_operations()]


def test_every_endpoint_answers_within_its_schema_and_never_5xx(api_schema):
    """For each operation, MAX_EXAMPLES requests that fit the schema and MAX_EXAMPLES that do not."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for op in operations(api_schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def one(case):
                response = case.call_and_validate(headers=headers, checks=checks)
                SEEN[(f"{case.method} {case.path}", response.status_code)] += 1

            try:
                one()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE, op.label


def test_the_fuzzing_reached_every_operation_and_saw_no_5xx(api_schema):
    """Runs after the fuzzing (file order): every operation was exercised, none answered 5xx."""
    every = {f"{op.method.upper()} {op.path}" for op in operations(api_schema)}
    reached = {op for op, _ in SEEN}
    assert every <= reached, sorted(every - reached)
    assert not {k: n for k, n in SEEN.items() if k[1] >= 500}
