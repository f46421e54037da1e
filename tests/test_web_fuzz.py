"""Generated requests (schemathesis, from our /openapi.json) against the accepting routes: never a 5xx,
every answer as documented.  The read routes belong to the hostile-input suite.  A generated post may carry
an ``Idempotency-Key``, which is remembered in PostgreSQL: the session's test database."""

from __future__ import annotations

import pytest
import schemathesis
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.web_support import make_client


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: object, value: object) -> bytes:
    # The schema says "a string": send it as it is (schemathesis has no NDJSON serializer of its own).
    return value.encode() if isinstance(value, str) else str(value).encode()


_app = make_client(StubBroker()).app
schema = schemathesis.openapi.from_asgi("/openapi.json", _app).include(
    path_regex=r"^/api/users?$", method="POST"
)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.postgres
def test_generated_submissions_never_get_a_server_error(case, pipeline_database):
    # Given: a generated request  # When / Then
    case.call_and_validate(checks=CHECKS)
