"""The read routes refuse what they can without touching the database: made-up ids, bad parameters."""

from __future__ import annotations

import pytest

from tests.web_support import assert_error
from web.ids import IdSigner

other_signer = IdSigner("not-the-test-secret")
test_signer = IdSigner("test-secret")


# Each id is made when the test runs (ids carry the time): parallel workers collect the same test names.
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(lambda: "/api/submissions/nope", id="submission-nope"),
        pytest.param(lambda: f"/api/submissions/{other_signer.new_submission_id()}", id="submission-other"),
        pytest.param(lambda: f"/api/submissions/{other_signer.new_batch_id()}.1", id="record-other"),
        pytest.param(lambda: f"/api/submissions/{test_signer.new_batch_id()}", id="submission-is-batch"),
        pytest.param(lambda: f"/api/submissions/{test_signer.new_batch_id()}.0", id="record-zero"),
        pytest.param(lambda: "/api/batches/nope", id="batch-nope"),
        pytest.param(lambda: f"/api/batches/{other_signer.new_batch_id()}", id="batch-other"),
        pytest.param(lambda: f"/api/batches/{test_signer.new_submission_id()}", id="batch-is-submission"),
        pytest.param(lambda: "/api/submissions/%00", id="submission-nul"),
        pytest.param(lambda: "/api/batches/%F0%9F%90%89", id="batch-emoji"),
    ],
)
def test_an_id_this_service_did_not_issue_is_404(web_client, path):
    assert_error(web_client.get(path()), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=1e3",
        "cursor=-1",
        "cursor=x",
        "cursor=99999999999999999999999",
        "limit=" + "9" * 5000,
        "cursor=٣",
    ],
)
def test_bad_paging_parameters_are_400(web_client, query):
    assert_error(web_client.get(f"/api/users?{query}"), 400, "invalid_parameter")
    batch_id = test_signer.new_batch_id()
    assert_error(web_client.get(f"/api/batches/{batch_id}?{query}"), 400, "invalid_parameter")


@pytest.mark.parametrize("name", ["%00", "x" * 201])
def test_a_bad_name_filter_is_400(web_client, name):
    assert_error(web_client.get(f"/api/users?name={name}"), 400, "invalid_parameter")


def test_a_user_time_without_zone_is_written_as_utc():
    # Given: a row as a driver may hand it back, without zone
    import datetime
    from types import SimpleNamespace

    from web.reads import user_json

    row = SimpleNamespace(
        id=1,
        name="A",
        age=1,
        email=None,
        phone_number=None,
        address=None,
        additional_info=None,
        created_at=datetime.datetime(2026, 1, 2, 3, 4, 5),
    )
    # When
    shown = user_json(row)
    # Then
    assert shown is not None and shown["created_at"] == "2026-01-02T03:04:05+00:00"
    assert shown["additional_info"] == {}
