"""The batch list and the throughput report under hostile query strings, on a real PostgreSQL database.

Cursors forged, truncated, re-encoded or taken from another route, limits and intervals of every shape:
each answer is a documented one (no 5xx, the error shape, the document's schema), and a cursor that was
not given by the API is ``400 invalid_cursor``.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile.test_hostile_reads import FUZZ, documented, query_values
from tests.web_support import assert_error, make_client

pytestmark = pytest.mark.postgres


@pytest.fixture
def client(seeded_database: Any) -> Any:
    with make_client(StubBroker()) as test_client:
        yield test_client


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Cursors that decode to something close to a real one, but are not.
FORGED = [
    _b64(b"1:" + b"a" * 129),  # an id longer than the column
    _b64(b"1:a b"),  # a space in the id
    _b64(b"1:a'; DROP TABLE batches;--"),
    _b64(b"-1:abc"),
    _b64(b"99999999999999999999:abc"),  # past year 9999
    _b64(b":abc"),
    _b64(b"12abc"),
    _b64("1:é".encode()),
    _b64(b"\xff\xfe:abc"),
    _b64(b"1:abc\x00"),
    "MTphYmM=",  # padded: accepted as the same cursor, not an error
    "MTphYmM===",
    "MTphYmM%",
]


@pytest.mark.parametrize("cursor", FORGED)
def test_a_forged_cursor_is_400_invalid_cursor_or_a_page(client, cursor):
    # When
    response = client.get("/api/batches", params={"cursor": cursor})
    # Then: a 400 with its code, or (the padded forms of a well-made cursor) a page
    documented(response, "/api/batches", f"cursor={cursor!r}")
    if response.status_code != 200:
        assert_error(response, 400, "invalid_cursor")


def test_a_cursor_of_the_batch_list_walks_every_batch_and_a_cursor_of_another_route_is_refused(client):
    # Given the first page of one batch, and the numeric cursor a batch's rows take
    first = documented(client.get("/api/batches?limit=1"), "/api/batches", "first page")
    # When
    wrong = client.get("/api/batches", params={"cursor": "3"})
    # Then
    assert_error(wrong, 400, "invalid_cursor")
    if first["next_cursor"] is not None:
        documented(
            client.get("/api/batches", params={"cursor": first["next_cursor"]}), "/api/batches", "next"
        )


@FUZZ
@given(
    limit=query_values,
    cursor=query_values,
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_any_query_string_on_the_batch_list_is_answered_as_documented(client, limit, cursor, extra):
    # When
    response = client.get("/api/batches", params={**extra, "limit": limit, "cursor": cursor})
    # Then
    documented(response, "/api/batches", f"batches limit={limit!r} cursor={cursor!r}")


@FUZZ
@given(raw=st.binary(max_size=80))
def test_any_bytes_encoded_as_a_cursor_are_answered_as_documented(client, raw):
    # When
    response = client.get("/api/batches", params={"cursor": _b64(raw)})
    # Then
    documented(response, "/api/batches", f"cursor of {raw!r}")


@FUZZ
@given(interval=query_values)
def test_any_interval_of_the_throughput_report_is_answered_as_documented(client, interval):
    # When
    response = client.get("/api/reports/throughput", params={"interval": interval})
    # Then
    body = documented(response, "/api/reports/throughput", f"interval={interval!r}")
    if response.status_code == 200:
        assert 60 <= body["interval_seconds"] <= 3600 and body["interval_seconds"] % 60 == 0


@pytest.mark.parametrize("path", ["/api/batches", "/api/reports/throughput"])
def test_both_reads_need_the_token_when_it_is_set(seeded_database, path):
    # Given
    with make_client(StubBroker(), api_token="tok-en") as guarded:
        # When
        refused = guarded.get(path)
        wrong = guarded.get(path, headers={"Authorization": "Bearer nope"})
        allowed = guarded.get(path, headers={"Authorization": "Bearer tok-en"})
    # Then
    assert_error(refused, 401, "unauthorized")
    assert_error(wrong, 401, "unauthorized")
    assert allowed.status_code == 200
