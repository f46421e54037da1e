"""The read routes on a real PostgreSQL: outcomes, batch reports, users, the age report, and outages."""

from __future__ import annotations

import pytest

from tests.web_support import assert_error, make_client
from web.ids import IdSigner, record_id

pytestmark = pytest.mark.postgres

signer = IdSigner("test-secret")


def add_user(name: str, age: int, **fields: object) -> int:
    from pipeline.models import User

    return User.create(name=name, age=age, **fields).id


def add_submission(
    submission_id: str, status: str, *, user_id: int | None = None, errors=None, batch_id=None, row=None
):
    from pipeline.models import Submission

    Submission.create(
        id=submission_id, status=status, user=user_id, errors=errors or [], batch_id=batch_id, row=row
    )


def add_batch(batch_id: str, count: int) -> None:
    from pipeline.models import Batch

    Batch.create(id=batch_id, count=count, source="csv")


@pytest.fixture
def db(clean_database):
    with clean_database.connection_context():
        yield clean_database


def test_a_stored_submission_answers_200_with_its_user(db, web_client):
    # Given
    submission_id = signer.new_submission_id()
    user_id = add_user(
        "Ada Lovelace",
        36,
        email="ada@example.com",
        phone_number="+441234",
        address={"city": "London"},
        additional_info={"hobby": "maths"},
    )
    add_submission(submission_id, "stored", user_id=user_id)
    # When
    response = web_client.get(f"/api/submissions/{submission_id}")
    # Then
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == submission_id and body["status"] == "stored" and body["errors"] == []
    user = body["user"]
    assert user["id"] == user_id
    assert (user["name"], user["age"], user["email"], user["phoneNumber"]) == (
        "Ada Lovelace",
        36,
        "ada@example.com",
        "+441234",
    )
    assert user["address"] == {"city": "London"} and user["additional_info"] == {"hobby": "maths"}
    assert user["created_at"]


def test_an_invalid_submission_answers_its_errors_and_no_user(db, web_client):
    # Given
    submission_id = signer.new_submission_id()
    errors = [{"field": "age", "message": "required field"}, {"field": "name", "message": "empty"}]
    add_submission(submission_id, "invalid", errors=errors)
    # When
    body = web_client.get(f"/api/submissions/{submission_id}").json()
    # Then
    assert body == {"id": submission_id, "status": "invalid", "errors": errors, "user": None}


def test_an_issued_id_without_outcome_is_202_queued(db, web_client):
    # Given
    submission_id = signer.new_submission_id()
    # When
    response = web_client.get(f"/api/submissions/{submission_id}")
    # Then
    assert response.status_code == 202
    assert response.json() == {"id": submission_id, "status": "queued"}


def test_a_record_id_past_the_end_of_a_registered_batch_is_404(db, web_client):
    # Given
    batch_id = signer.new_batch_id()
    add_batch(batch_id, 3)
    # Then
    assert web_client.get(f"/api/submissions/{record_id(batch_id, 3)}").status_code == 202
    assert_error(web_client.get(f"/api/submissions/{record_id(batch_id, 4)}"), 404, "not_found")


def test_a_batch_reports_counts_state_and_invalid_items_by_pages(db, web_client):
    # Given: 6 records, 5 with outcomes
    batch_id = signer.new_batch_id()
    add_batch(batch_id, 6)
    stored = add_user("A", 1)
    add_submission(record_id(batch_id, 1), "stored", user_id=stored, batch_id=batch_id, row=1)
    add_submission(record_id(batch_id, 2), "duplicate", user_id=stored, batch_id=batch_id, row=2)
    for row in (3, 5):
        add_submission(
            record_id(batch_id, row),
            "invalid",
            batch_id=batch_id,
            row=row,
            errors=[{"field": "age", "message": f"bad {row}"}],
        )
    add_submission(
        record_id(batch_id, 6),
        "failed",
        batch_id=batch_id,
        row=6,
        errors=[{"field": "_system", "message": "OperationalError: gone"}],
    )
    # When
    first = web_client.get(f"/api/batches/{batch_id}?limit=2").json()
    second = web_client.get(f"/api/batches/{batch_id}?limit=2&cursor={first['next_cursor']}").json()
    # Then
    assert first["state"] == "processing" and first["count"] == 6
    assert first["counts"] == {"queued": 1, "stored": 1, "duplicate": 1, "invalid": 2, "failed": 1}
    assert [(i["row"], i["status"]) for i in first["items"]] == [(3, "invalid"), (5, "invalid")]
    assert first["items"][0] == {
        "id": record_id(batch_id, 3),
        "row": 3,
        "status": "invalid",
        "errors": [{"field": "age", "message": "bad 3"}],
    }
    assert first["next_cursor"] == "5"
    assert [(i["row"], i["status"]) for i in second["items"]] == [(6, "failed")]
    assert second["next_cursor"] is None


def test_a_batch_is_completed_once_every_record_has_an_outcome(db, web_client):
    # Given
    batch_id = signer.new_batch_id()
    add_batch(batch_id, 2)
    for row in (1, 2):
        add_submission(
            record_id(batch_id, row), "stored", user_id=add_user(f"u{row}", row), batch_id=batch_id, row=row
        )
    # When
    body = web_client.get(f"/api/batches/{batch_id}").json()
    # Then
    assert body["state"] == "completed" and body["counts"]["queued"] == 0 and body["items"] == []


def test_a_batch_not_registered_yet_is_processing_with_unknown_count(db, web_client):
    # Given: one record processed before register_batch was
    batch_id = signer.new_batch_id()
    add_submission(record_id(batch_id, 1), "invalid", batch_id=batch_id, row=1)
    # When
    body = web_client.get(f"/api/batches/{batch_id}").json()
    # Then
    assert body["state"] == "processing" and body["count"] is None and body["counts"]["queued"] is None
    assert body["counts"]["invalid"] == 1


def test_users_are_listed_by_pages_and_filtered_by_name_literally(db, web_client):
    # Given
    ids = [add_user(name, 30) for name in ["Ada", "Bob", "ada%_x", "Robert'); DROP TABLE users;--", "李小龙"]]
    # When
    page1 = web_client.get("/api/users?limit=2").json()
    page2 = web_client.get(f"/api/users?limit=2&cursor={page1['next_cursor']}").json()
    page3 = web_client.get(f"/api/users?limit=2&cursor={page2['next_cursor']}").json()
    # Then
    assert [u["id"] for u in page1["items"] + page2["items"] + page3["items"]] == ids
    assert page3["next_cursor"] is None
    assert [u["name"] for u in web_client.get("/api/users?name=ADA").json()["items"]] == ["Ada", "ada%_x"]
    assert [u["name"] for u in web_client.get("/api/users?name=%25_").json()["items"]] == ["ada%_x"]
    assert [u["name"] for u in web_client.get("/api/users?name=drop table").json()["items"]] == [
        "Robert'); DROP TABLE users;--"
    ]
    assert [u["name"] for u in web_client.get("/api/users?name=小").json()["items"]] == ["李小龙"]


def test_the_age_report_comes_from_the_pipeline(db, web_client):
    # Given
    for age in (5, 19, 20, 40, 41, 60, 61, 150):
        add_user(f"age {age}", age)
    # When
    body = web_client.get("/api/reports/age-distribution").json()
    # Then
    assert body["total"] == 8
    assert [(g["group"], g["count"]) for g in body["groups"]] == [
        ("under 20", 2),
        ("20 to 40", 2),
        ("41 to 60", 2),
        ("over 60", 2),
    ]


def test_the_database_check_of_readyz_runs_a_query(db):
    # Given: the default database check (make_client's is a no-op)
    from web.reads import ping_database

    # Then: it does not raise
    ping_database()


@pytest.mark.parametrize(
    "path",
    ["/api/submissions/{sid}", "/api/batches/{bid}", "/api/users", "/api/reports/age-distribution"],
)
def test_read_routes_answer_503_when_the_database_is_unreachable(pipeline_database, path):
    # Given: the database pointed at a port where nothing listens
    from pipeline import db as pipeline_db

    saved = dict(pipeline_database.connect_params, database=pipeline_database.database)
    pipeline_db.configure("postgresql://bup@127.0.0.1:9/nowhere")
    try:
        with make_client() as client:
            # When
            response = client.get(path.format(sid=signer.new_submission_id(), bid=signer.new_batch_id()))
    finally:
        pipeline_database.close_all()
        pipeline_database.init(**saved)
    # Then
    assert_error(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "7"
    from web.reads import ping_database

    ping_database()  # the session's database is back for the tests that follow
