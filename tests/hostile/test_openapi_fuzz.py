"""Schemathesis against our own ``/openapi.json``: generated requests, valid and invalid, to every operation.

In process (ASGI) on Dramatiq's StubBroker, with the read routes on a real PostgreSQL database (the
pipeline's session database, seeded with a row of every kind).  Every answer must be documented: no 5xx,
the status, headers, content type and body the document promises, and every error in the one shape.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from tests.hostile.conftest import check_answer
from tests.web_support import TEST_SETTINGS
from web.app import create_app

pytestmark = pytest.mark.postgres

#: Generated cases per operation (positive and negative together); about half of the operations take
#: inputs, the others run out of distinct cases after a few.  About 2,700 requests in all, ~25 s.
MAX_EXAMPLES = 400
#: The same with ``API_TOKEN`` set (every /api answer a 401, which must be documented too).
MAX_EXAMPLES_GUARDED = 30


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """NDJSON bodies: the schema says "string"; a negative case may be any JSON value, sent one a line."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(item) for item in items).encode()


def negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' check that invalid requests are refused, minus the cases our design accepts.

    * An empty query parameter (``?cursor=``, which is also how an empty object or list is sent) is taken
      as absent, as HTML forms send them; the document could say so (``allowEmptyValue``).
    * An NDJSON or CSV body is described as ``type: string``: on the wire every body is text, so a
      "negative" non-string body is just another text, valid or not, and is judged by the parser.
    * A batch (JSON array) whose *records* break ``UserInput`` (NUL, lone surrogate, too deep, not an
      object) is accepted by design: such a record ends ``invalid`` and the rest goes on.  What the web
      does with such records is checked by ``test_generated_bodies.py``, record by record.
    """
    sent = parse_qs(urlsplit(response.request.url).query, keep_blank_values=True)
    if any(value == "" for values in sent.values() for value in values):
        return None
    if case.media_type and not case.media_type.startswith("application/json"):
        return None
    if case.operation.label == "POST /api/users" and isinstance(case.body, list) and case.body:
        return None
    return openapi_checks.negative_data_rejection(ctx, response, case)


#: The checks of schemathesis that state our promises (the stateful/auth-inference ones do not apply).
CHECKS = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    negative_data_rejection,
    openapi_checks.unsupported_method,
    openapi_checks.allow_header_conformance,
]


#: The app under test, built at import (schemathesis reads the document when the module is collected).
#: ``from_fixture`` would be nicer, but schemathesis 4.32's lazy schemas break on pytest 9 (``_nodeid``).
BROKER = StubBroker()
APP = create_app(BROKER, config=TEST_SETTINGS, database_check=lambda: None)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree; a failure prints its reproduction
    suppress_health_check=list(HealthCheck),
)
def test_every_generated_request_gets_a_documented_answer(case: Any, seeded_database: Any) -> None:
    # Given a generated request (valid or not) for one operation
    # When it is sent
    response = case.call()
    # Then no 5xx, every error in shape, and the answer as documented
    check_answer(response, source="schemathesis", what=f"{case.method} {case.formatted_path}")
    case.validate_response(response, checks=CHECKS)
    # (The StubBroker keeps every message; drop them so that memory stays flat.)
    for queue in BROKER.queues.values():
        while not queue.empty():
            queue.get_nowait()


GUARDED_BROKER = StubBroker()
GUARDED_APP = create_app(
    GUARDED_BROKER,
    config=dataclasses.replace(TEST_SETTINGS, api_token="fuzz-T0ken"),
    database_check=lambda: None,
)
guarded_schema = schemathesis.openapi.from_asgi("/openapi.json", GUARDED_APP)


@guarded_schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES_GUARDED,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_with_a_token_set_every_generated_request_gets_a_documented_answer(
    case: Any, seeded_database: Any
) -> None:
    # Given an app with API_TOKEN set, and generated requests (with random Authorization headers, or none)
    # When
    response = case.call()
    # Then: /api answers are documented 401s (WWW-Authenticate included); nothing is enqueued
    check_answer(response, source="schemathesis", what=f"guarded {case.method} {case.formatted_path}")
    case.validate_response(response, checks=CHECKS)
    if case.path.startswith("/api"):
        assert response.status_code in {401, 405}, response.text
    assert all(queue.empty() for queue in GUARDED_BROKER.queues.values())
