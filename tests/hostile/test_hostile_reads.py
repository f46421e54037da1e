"""The read routes on a real PostgreSQL database seeded with a row of every kind, under hostile query strings.

Random ids (what schemathesis sends) only ever reach the 404 branch; here the ids are real, so the 200/202
answers with content are checked against the document too, whatever the query string holds.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import SEED_NAMES, check_answer
from tests.web_support import TEST_SETTINGS, make_client
from web.app import create_app

pytestmark = pytest.mark.postgres

SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(StubBroker(), config=TEST_SETTINGS, database_check=lambda: None)
)
READS = frozenset({200, 202, 400, 404})

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def client(seeded_database: Any) -> Any:
    with make_client(StubBroker()) as test_client:
        yield test_client


def documented(response: Any, operation: str, what: str) -> dict[str, Any] | None:
    """Check the answer (no 5xx, error shape) and that it is what the document says ``operation`` answers."""
    body = check_answer(response, source="reads", what=what, allowed=READS)
    SCHEMA[operation]["GET"].validate_response(response)
    return body


def test_a_submission_of_every_status_reads_as_documented(client, seeded_database):
    # Given a submission of each outcome, and one issued but not processed yet
    for status, submission_id in seeded_database.submissions.items():
        # When
        response = client.get(f"/api/submissions/{submission_id}")
        # Then
        body = documented(response, "/api/submissions/{id}", status)
        assert response.status_code == 200 and body["status"] == status
    queued = client.get(f"/api/submissions/{seeded_database.queued_id}")
    assert documented(queued, "/api/submissions/{id}", "queued")["status"] == "queued"
    assert queued.status_code == 202


def test_a_batch_row_past_its_count_is_404_and_one_within_it_is_queued(client, seeded_database):
    # Given a batch of 4 rows, of which rows 1..3 have outcomes
    batch_id = seeded_database.batch_id
    # Then
    assert client.get(f"/api/submissions/{batch_id}.4").status_code == 202
    documented(client.get(f"/api/submissions/{batch_id}.5"), "/api/submissions/{id}", "row 5")
    assert client.get(f"/api/submissions/{batch_id}.5").status_code == 404
    for row in ["0", "04", "+4", " 4", "4 ", "4.0", "\u0664"]:
        assert client.get(f"/api/submissions/{batch_id}.{quote(row)}").status_code == 404, row


def test_stored_names_that_look_like_sql_read_back_literally(client, seeded_database):
    # When every user is listed
    body = documented(client.get("/api/users?limit=1000"), "/api/users", "all users")
    # Then every seeded name is there, unchanged
    assert set(SEED_NAMES) <= {user["name"] for user in body["items"]}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("' OR '1'='1", set()),
        ("%", {"100% _under_ \\back"}),
        ("_", {"100% _under_ \\back"}),
        ("\\", {"100% _under_ \\back"}),
        ("drop table", {"Robert'); DROP TABLE users;--"}),
        ("'", {"Robert'); DROP TABLE users;--", "O'Brien"}),
        ("🐉", {"李小龙 🐉"}),
    ],
)
def test_the_name_filter_matches_its_text_literally(client, seeded_database, name, expected):
    # When
    response = client.get("/api/users", params={"name": name, "limit": 1000})
    # Then: LIKE wildcards and quotes mean themselves
    body = documented(response, "/api/users", f"name={name}")
    assert {user["name"] for user in body["items"]} & set(SEED_NAMES) == expected


query_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        ["", " ", "0", "1", "1000", "1001", "9" * 30, "1e3", "0x1", "\u0661", "%00", "NaN", "-0", "+1"]
    ),
)


@FUZZ
@given(
    limit=query_values,
    cursor=query_values,
    name=query_values,
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_any_query_string_on_the_user_list_is_answered_as_documented(client, limit, cursor, name, extra):
    # When
    response = client.get("/api/users", params={**extra, "limit": limit, "cursor": cursor, "name": name})
    # Then
    documented(response, "/api/users", f"users limit={limit!r} cursor={cursor!r} name={name!r}")


@FUZZ
@given(limit=query_values, cursor=query_values)
def test_any_query_string_on_a_real_batch_is_answered_as_documented(client, seeded_database, limit, cursor):
    # When
    response = client.get(
        f"/api/batches/{seeded_database.batch_id}", params={"limit": limit, "cursor": cursor}
    )
    # Then
    body = documented(response, "/api/batches/{id}", f"batch limit={limit!r} cursor={cursor!r}")
    if response.status_code == 200:
        assert body["count"] == 4 and {item["status"] for item in body["items"]} <= {"invalid", "failed"}


@FUZZ
@given(suffix=st.text(max_size=20))
def test_any_text_after_a_real_id_is_404_or_the_row_it_names(client, seeded_database, suffix):
    # When
    path = f"/api/submissions/{quote(seeded_database.batch_id + suffix, safe='')}"
    response = client.get(path, follow_redirects=False)
    # Then: documented, except Starlette's redirect of a trailing slash (a "%2F" is a slash once decoded)
    if suffix.endswith("/") and response.status_code == 307:
        assert "/api/submissions/" in response.headers["location"]
        return
    documented(response, "/api/submissions/{id}", f"suffix {suffix!r}")
