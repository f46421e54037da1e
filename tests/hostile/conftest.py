"""Fixtures of the hostile-input suite: apps with roomy or tight limits, a seeded database, and a tally.

The suite throws generated and hand-picked garbage at the API (in process, on Dramatiq's StubBroker) and
at the workers (through the real stack of ``tests/e2e``).  Every answer it gets is checked the same way
(:func:`check_answer`) and counted in :data:`TALLY`, whose figures (cases sent, 5xx seen) are printed at
the end of the run for docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from pipeline.settings import WebSettings

# The stack (real web + worker processes on Kafka and PostgreSQL) of the end-to-end suite, reused here.
from tests.livestack import Stack  # noqa: F401
from tests.web_support import TEST_SETTINGS, make_client
from web.ids import IdSigner, record_id

#: Every status ``POST /api/user`` and ``POST /api/users`` may answer (409 only to a keyed post whose key is
#: in flight, 503 only when Kafka or, for a keyed post, PostgreSQL fails).
DOCUMENTED_POST_STATUSES = frozenset({202, 400, 401, 409, 413, 415, 422, 503})


@dataclass
class Tally:
    """What the suite sent: cases per source, and every 5xx answer seen."""

    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)

    def record(self, source: str, status: int, what: str) -> None:
        self.cases[source] += 1
        if status >= 500:
            self.server_errors.append(f"{source}: {status} for {what}")


TALLY = Tally()


def check_answer(
    response: Any, *, source: str, what: str, allowed: frozenset[int] | None = None
) -> dict[str, Any] | None:
    """Count ``response`` and check the promises every answer keeps; returns the JSON body (if any).

    No 5xx (503 only where a backing service is down, which never happens on the StubBroker); a status in
    ``allowed``; every 4xx/5xx is ``{"error": {"code": str, "message": str}}`` and nothing else in ``error``.
    """
    status = response.status_code
    content_type = _header(response, "content-type")
    TALLY.record(source, status, what)
    assert status < 500, f"{status} for {what}: {response.text[:500]}"
    if allowed is not None:
        assert status in allowed, f"undocumented {status} for {what}: {response.text[:500]}"
    if status < 400:
        return response.json() if content_type.startswith("application/json") else None
    assert content_type.startswith("application/json"), (what, response.headers)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (what, body)
    assert set(body["error"]) == {"code", "message"}, (what, body)
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], (what, body)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], (what, body)
    return body


def _header(response: Any, name: str) -> str:
    """A header of an httpx response, or of a schemathesis one (whose values are lists)."""
    value = response.headers.get(name, "")
    return value[0] if isinstance(value, list) and value else value or ""


class Answer:
    """What a direct ASGI call got back: the parts of an httpx response that the checks read."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def asgi_post(
    app: Any, path: str, headers: dict[str, str], pieces: Iterator[bytes], *, method: str = "POST"
) -> tuple[Answer, int]:
    """Call ``app`` directly with a body sent as ``pieces`` (chunked, possibly endless).

    Returns the answer and how many body bytes the app pulled, to show where it stopped reading.
    TestClient cannot do this: it reads a body whole before sending it.
    """
    pulled = 0
    status, answer_headers, parts = 0, {}, []
    pending = next(pieces, b"")  # an empty body is still one (empty) http.request message

    async def receive() -> dict[str, Any]:
        nonlocal pulled, pending
        if pending is None:
            return {"type": "http.disconnect"}
        piece, pending = pending, next(pieces, None)
        pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": pending is not None}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if "content-length" not in {k.lower() for k in headers}:
        raw_headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return Answer(status, answer_headers, b"".join(parts)), pulled


#: Limits roomy enough for the hand-picked monsters (100k levels of nesting, megabyte strings).
ROOMY = {"max_body_bytes": 2 * 1024 * 1024, "max_batch_bytes": 8 * 1024 * 1024, "max_batch_records": 10_000}


@pytest.fixture
def roomy_client(web_broker: StubBroker) -> Iterator[TestClient]:
    """A TestClient whose limits let a 100k-level or megabyte body reach the parser."""
    with make_client(web_broker, **ROOMY) as client:
        yield client


@pytest.fixture
def test_settings() -> WebSettings:
    """The limits of ``web_support`` (16 KiB a record, 64 KiB a batch, 50 records)."""
    return TEST_SETTINGS


# ======================================================================================================
# A database with one row of every kind, so that the read routes answer with content, not only 404s
# ======================================================================================================


@dataclass(frozen=True)
class Seeded:
    """Ids of the rows :func:`seeded_database` wrote: a submission of every status, and a batch."""

    submissions: dict[str, str]
    batch_id: str
    queued_id: str


SEED_NAMES = ["Ada Lovelace", "Robert'); DROP TABLE users;--", "100% _under_ \\back", "李小龙 🐉", "O'Brien"]


@pytest.fixture
def seeded_database(pipeline_database: Any) -> Seeded:
    """The pipeline's session database (its own, migrated) holding users, submissions and a batch.

    Seeded for each test (other suites may truncate the session database between tests); ids are signed
    with ``TEST_SETTINGS.id_secret`` so that the apps of this suite recognise them.
    """
    signer = IdSigner(TEST_SETTINGS.id_secret)
    batch_id = signer.new_batch_id()
    now = datetime.datetime.now(datetime.UTC)
    submissions: dict[str, str] = {}
    with pipeline_database.connection_context(), pipeline_database.atomic():
        user_ids = []
        for age, name in enumerate(SEED_NAMES, start=15):
            cursor = pipeline_database.execute_sql(
                "INSERT INTO users (name, age, email, phone_number, address, additional_info, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (
                    name,
                    age * 3,
                    "ada@example.org",
                    "+441234567890",
                    json.dumps({"line1": "1 Road", "city": "London"}),
                    json.dumps({"hobby": ["chess"], "nested": {"deep": [1, 2.5, None, True]}}),
                    now,
                ),
            )
            row = cursor.fetchone()
            if row is None:  # seeded by an earlier use of the session database
                row = pipeline_database.execute_sql(
                    "SELECT id FROM users WHERE name = %s AND age = %s", (name, age * 3)
                ).fetchone()
            user_ids.append(row[0])
        rows = [
            ("stored", None, None, [], user_ids[0]),
            ("duplicate", None, None, [], user_ids[0]),
            ("invalid", batch_id, 1, [{"field": "age", "message": "must be of integer type"}], None),
            ("failed", batch_id, 2, [{"field": "_system", "message": "OperationalError: gone"}], None),
            ("stored", batch_id, 3, [], user_ids[1]),
        ]
        for status, batch, row_number, errors, user_id in rows:
            submission_id = record_id(batch, row_number) if batch else signer.new_submission_id()
            submissions.setdefault(status, submission_id)
            pipeline_database.execute_sql(
                "INSERT INTO submissions"
                " (id, batch_id, row, status, errors, user_id, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (submission_id, batch, row_number, status, json.dumps(errors), user_id, now, now),
            )
        pipeline_database.execute_sql(
            "INSERT INTO batches (id, count, source, created_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (batch_id, 4, "csv", now),
        )
    return Seeded(submissions=submissions, batch_id=batch_id, queued_id=signer.new_submission_id())
