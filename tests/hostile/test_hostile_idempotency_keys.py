"""Hostile ``Idempotency-Key`` headers, and hostile bodies sent with a key, in process on Dramatiq's
StubBroker and the real PostgreSQL: every answer documented, never a 5xx, and a bad key never written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.hostile.conftest import DOCUMENTED_POST_STATUSES, asgi_post, check_answer
from tests.web_support import enqueued, make_client
from web.idempotency import MAX_KEY_LENGTH

pytestmark = pytest.mark.postgres

JSON = {"content-type": "application/json"}
ROUTES = {"/api/user": b'{"name": "Ada", "age": 36}', "/api/users": b'[{"name": "Ada", "age": 36}]'}
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app(pipeline_database: Any) -> Iterator[tuple[TestClient, StubBroker, Any]]:
    """One app for the module, and a counter of the keys its database holds."""
    broker = StubBroker()

    def stored_keys() -> list[str]:
        with pipeline_database.connection_context():
            return [row[0] for row in pipeline_database.execute_sql("SELECT key FROM idempotency_keys")]

    with make_client(broker) as client:
        yield client, broker, stored_keys
    broker.close()


def post(
    client: TestClient, path: str, key: str, body: bytes | None = None, content_type: str = "application/json"
):
    """POST with ``key`` as the raw header value (any latin-1 text: NUL, CR, LF, bytes over 0x7f)."""
    headers = {"content-type": content_type, "content-length": str(len(body or ROUTES[path]))}
    headers["idempotency-key"] = key
    answer, _ = asgi_post(client.app, path, headers, iter([body if body is not None else ROUTES[path]]))
    check_answer(
        answer, source="idempotency", what=f"{path} key={key[:40]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    return answer


def valid(key: str) -> bool:
    return 1 <= len(key) <= MAX_KEY_LENGTH and all(0x21 <= ord(c) <= 0x7E for c in key)


def check_key(app: tuple[TestClient, StubBroker, Any], path: str, key: str) -> None:
    """Post with ``key``: 400 exactly for a key that breaks the rule, with nothing enqueued and nothing
    remembered; a valid one is accepted, replayed, refused as reused (the same key on both routes), or
    in flight (each call here runs on an event loop of its own, which ends before its post's key is
    settled in the background)."""
    client, broker, stored_keys = app
    enqueued(broker)
    answer = post(client, path, key)
    if valid(key):
        assert answer.status_code in {202, 409, 422}, answer.text
        return
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_idempotency_key")
    assert enqueued(broker) == [] and key not in stored_keys()


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "\x00",
        "key\x00with-nul",
        "line\r\nInjected: header",
        "\n",
        "tab\t",
        "é",
        "\xff" * 10,
        "k" * (MAX_KEY_LENGTH + 1),
        "k" * 100_000,
        " padded ",
        "%00",  # (visible ASCII: a key like any other, shown here to be taken literally below)
    ],
)
@pytest.mark.parametrize("path", list(ROUTES))
def test_a_hostile_key_is_400_and_never_written(app, path, key):
    check_key(app, path, key)


@pytest.mark.parametrize(
    "key",
    ["';DROP/**/TABLE/**/idempotency_keys;--", "%s%s%s", "{}", "\\x00", "../../etc/passwd", "$(reboot)", "*"],
)
def test_keys_that_look_like_code_are_taken_literally(app, key):
    client, broker, stored_keys = app
    key = f"{key}-{uuid.uuid4().hex[:6]}"
    # When (through the TestClient: one event loop for both, as in a server)
    first, again = (
        client.post("/api/user", content=ROUTES["/api/user"], headers={**JSON, "Idempotency-Key": key})
        for _ in range(2)
    )
    # Then
    assert first.status_code == again.status_code == 202, first.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert key in stored_keys()
    enqueued(broker)


@FUZZ
@given(
    key=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=2 * MAX_KEY_LENGTH),
    path=st.sampled_from(list(ROUTES)),
)
def test_any_key_gets_a_documented_answer_and_only_a_valid_one_is_remembered(app, key, path):
    check_key(app, path, key)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/api/user", b"{", "application/json", 400),
        ("/api/user", b"[1]", "application/json", 422),
        ("/api/user", b"{}" + b" " * 20_000, "application/json", 413),
        ("/api/users", b"[", "application/json", 400),
        ("/api/users", b"[]", "application/json", 422),
        ("/api/users", b"a,b\n" + b"1,2\n" * 20_000, "text/csv", 413),
        ("/api/users", b"--nob0undary\r\n", "multipart/form-data; boundary=b0undary", 400),
    ],
)
def test_a_hostile_body_with_a_key_is_refused_and_leaves_the_key_free(app, path, body, content_type, status):
    client, broker, stored_keys = app
    key = f"hostile-body-{uuid.uuid4()}"
    # When
    answer = post(client, path, key, body, content_type)
    # Then: refused as without a key, and the key not held: the corrected post may use it
    assert answer.status_code == status, answer.text
    assert key not in stored_keys()
    accepted = post(client, path, key)
    assert accepted.status_code == 202, accepted.text
    assert json.loads(accepted.content)
    enqueued(broker)
