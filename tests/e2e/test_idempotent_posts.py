"""``Idempotency-Key`` end to end (HTTP in, Kafka, real workers, PostgreSQL out): a post retried with its key
is the submission it was, and one enqueued twice under its id ends as it would have once."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

pytestmark = pytest.mark.slow


def keyed_post(api, path, key, **request):
    response = api.post(path, headers={"Idempotency-Key": key}, **request)
    assert response.status_code == 202, response.text
    return response


def test_a_single_post_retried_with_its_key_is_one_stored_user(stack, api, tag):
    # Given a user posted with a key, and posted again with it (its answer was lost, say)
    key = str(uuid.uuid4())
    body = {"name": f"Keyed {tag}", "age": 30}
    first = keyed_post(api, "/api/user", key, json=body)
    again = keyed_post(api, "/api/user", key, json=body)
    # Then: one submission, stored, not a duplicate of itself
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert stack.outcome(api, first.json()["id"])["status"] == "stored"
    assert stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Keyed {tag}") == [(1,)]


def test_a_post_whose_refused_enqueue_reached_kafka_ends_stored_after_its_retry(stack, api, tag):
    # Given a keyed post that reached Kafka and was stored, but whose client was told 503 (its enqueue was
    # given up on at the deadline): the web left its key unsure
    key = str(uuid.uuid4())
    body = {"name": f"Unsure {tag}", "age": 31}
    first = keyed_post(api, "/api/user", key, json=body).json()
    assert stack.outcome(api, first["id"])["status"] == "stored"
    connection = psycopg2.connect(stack.database_url)
    connection.autocommit = True
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "UPDATE idempotency_keys SET state = 'unsure', locked_until = now() WHERE key = %s", (key,)
        )
    connection.close()
    # When the client retries with its key
    retried = keyed_post(api, "/api/user", key, json=body)
    # Then: the same id, enqueued again, and still the first outcome: stored, once
    assert retried.json()["id"] == first["id"] and "idempotent-replayed" not in retried.headers
    assert stack.outcome(api, first["id"])["status"] == "stored"
    assert stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Unsure {tag}") == [(1,)]
    assert stack.sql("SELECT status FROM submissions WHERE id = %s", first["id"]) == [("stored",)]


def test_a_csv_upload_retried_with_its_key_is_one_batch(stack, api, tag):
    # Given a file uploaded with a key, and again with it
    key = str(uuid.uuid4())
    csv = f"name,age\nCsv One {tag},20\nCsv Two {tag},21\n".encode()
    first = keyed_post(api, "/api/users", key, files={"file": ("users.csv", csv, "text/csv")})
    again = keyed_post(api, "/api/users", key, files={"file": ("users.csv", csv, "text/csv")})
    # Then: one batch, every record stored once
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    batch = stack.batch(api, first.json()["batch_id"])
    assert batch["counts"]["stored"] == 2 and batch["counts"]["duplicate"] == 0
    assert stack.sql("SELECT count(*) FROM users WHERE name LIKE %s", f"Csv % {tag}") == [(2,)]
