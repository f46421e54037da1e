"""Schemathesis against our own ``/openapi.json``: generated requests, valid and invalid, to every operation.

In process (ASGI) on Dramatiq's StubBroker, with the read routes on a real PostgreSQL database (the
pipeline's session database, seeded with a row of every kind).  Every answer must be documented: no 5xx,
the status, headers, content type and body the document promises, and every error in the one shape.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit
import time
import collections
TIMES = collections.Counter()
COUNTS = collections.Counter()
from typing import Any

import pytest
import schemathesis
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks
from web_support import TEST_SETTINGS

from hostile.conftest import check_answer
from web.app import create_app

pytestmark = pytest.mark.postgres

#: Generated cases per operation (positive and negative together); 10 operations, ~6 of them with inputs.
MAX_EXAMPLES = 400


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
    # allow_header_conformance is left to a test of its own (test_hostile_requests.py): it fails today.
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
    started = time.perf_counter()
    response = case.call()
    TIMES[case.operation.label] += time.perf_counter() - started
    COUNTS[(case.operation.label, case.media_type, response.status_code)] += 1
    # Then no 5xx, every error in shape, and the answer as documented
    check_answer(response, source="schemathesis", what=f"{case.method} {case.formatted_path}")
    case.validate_response(response, checks=CHECKS)
    # (The StubBroker keeps every message; drop them so that memory stays flat.)
    for queue in BROKER.queues.values():
        while not queue.empty():
            queue.get_nowait()


def test_zz_times():
    print(TIMES)
    for k, v in sorted(COUNTS.items(), key=str): print(k, v)
