"""The user pipeline end to end: HTTP in, Kafka, real workers, PostgreSQL out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import dramatiq
import pytest
from kafka import KafkaConsumer, TopicPartition

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def queue_messages(stack) -> Iterator[Callable[[], list[dramatiq.Message]]]:
    """Read the stack's ``users`` topic: yields ``since()``, the messages written there since the block
    began (the topic's end then), once the block has begun."""
    topic = stack.env["KAFKA_TOPIC_PREFIX"] + "users"
    consumer = KafkaConsumer(bootstrap_servers=stack.env["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        start = consumer.end_offsets(partitions)

        def since() -> list[dramatiq.Message]:
            end = consumer.end_offsets(partitions)
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, start[tp])
            messages = []
            while any(consumer.position(tp) < end[tp] for tp in partitions):
                for records in consumer.poll(timeout_ms=1000).values():
                    messages.extend(dramatiq.Message.decode(r.value) for r in records)
            return messages

        yield since
    finally:
        consumer.close()


def post_user(api, body):
    response = api.post("/api/user", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/submissions/{response.json()['id']}"
    return response.json()["id"]


@pytest.mark.smoke  # the one end-to-end test of the quick loop (-m 'not slow or smoke')
def test_a_valid_user_is_stored(stack, api, tag):
    # Given a valid user
    body = {
        "name": {"firstName": " Ada ", "lastName": f"Lovelace{tag}"},
        "age": 36,
        "email": "ada@example.org",
    }

    # When it is posted
    submission = post_user(api, body)
    outcome = stack.outcome(api, submission)

    # Then it is stored once, with the trimmed full name
    assert outcome["status"] == "stored" and outcome["errors"] == []
    assert outcome["user"]["name"] == f"Ada Lovelace{tag}"
    assert stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Ada Lovelace{tag}") == [(1,)]


def test_a_single_post_is_stored_in_two_kafka_trips_validate_then_persist(stack, api, tag):
    # Given the users topic as it is
    with queue_messages(stack) as since:
        # When a user is posted, and stored
        submission = post_user(api, {"name": f"Two Hops {tag}", "age": 33})
        assert stack.outcome(api, submission)["status"] == "stored"

        # Then two messages carried it: the pipeline's two stages, the first sent by the web (no process_user)
        carrying = [m for m in since() if submission in json.dumps(m.args)]
    assert sorted(m.actor_name for m in carrying) == ["persist_users", "validate_users"]
    assert stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Two Hops {tag}") == [(1,)]


def test_an_invalid_user_keeps_every_error(stack, api, tag):
    # Given a user with four mistakes at once
    body = {"name": "", "age": "thirty", "email": "not-an-email", "phoneNumber": "12", "tag": tag}

    # When it is posted
    outcome = stack.outcome(api, post_user(api, body))

    # Then it is invalid and each mistake is listed
    assert outcome["status"] == "invalid"
    assert {e["field"] for e in outcome["errors"]} == {"name", "age", "email", "phoneNumber"}
    assert outcome["user"] is None


def test_the_second_of_two_identical_users_is_a_duplicate_of_the_first(stack, api, tag):
    # Given the same user posted twice
    body = {"name": f"Twin {tag}", "age": 40}
    first = stack.outcome(api, post_user(api, body))
    second = stack.outcome(api, post_user(api, body))

    # Then exactly one is stored and the other points at it
    assert sorted([first["status"], second["status"]]) == ["duplicate", "stored"]
    assert first["user"]["id"] == second["user"]["id"]
    assert stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Twin {tag}") == [(1,)]


def test_sql_looking_and_unicode_names_are_stored_literally(stack, api, tag):
    names = [f"Robert'); DROP TABLE users;-- {tag}", f"Zoë Ångström 李小龍 🚀 {tag}"]
    ids = [post_user(api, {"name": name, "age": 30}) for name in names]
    stored = [stack.outcome(api, i)["user"]["name"] for i in ids]
    assert stored == names
    assert stack.sql("SELECT count(*) FROM users WHERE name = ANY(%s)", names) == [(2,)]


def test_a_csv_batch_with_nested_headers_quotes_and_bad_rows(stack, api, tag):
    # Given a CSV with dotted headers, a quoted comma, a ragged row, a bad age and a duplicate row
    csv = (
        "\ufeffname.firstName,name.lastName,age,address.line1,address.city,gender\r\n"
        f'Ann,Lee{tag},30,"1 Main St, Apt 2",Springfield,f\r\n'
        f"Bob,Ray{tag},abc,2 Oak St,Shelbyville,m\r\n"
        f"Cid,Moe{tag},41,3 Elm St\r\n"
        f"Ann,Lee{tag},30,1 Main St,Springfield,f\r\n"
    )

    # When it is posted as text/csv
    response = api.post("/api/users", content=csv.encode(), headers={"content-type": "text/csv"})
    assert response.status_code == 202, response.text
    batch = stack.batch(api, response.json()["batch_id"])

    # Then the counts add up and the bad rows are reported with their row numbers
    assert response.json()["count"] == 4
    assert batch["counts"]["stored"] == 1
    assert batch["counts"]["duplicate"] == 1
    assert batch["counts"]["invalid"] == 2
    rows = {item["row"]: item for item in batch["items"]}
    assert set(rows) == {2, 3}
    assert rows[2]["errors"][0]["field"] == "age"
    assert rows[3]["errors"][0]["field"] == "_row"
    user = stack.sql("SELECT name, address, additional_info FROM users WHERE name = %s", f"Ann Lee{tag}")
    assert user == [(f"Ann Lee{tag}", {"line1": "1 Main St, Apt 2", "city": "Springfield"}, {"gender": "f"})]


def test_json_and_ndjson_batches_are_processed(stack, api, tag):
    records = [{"name": f"N{i} {tag}", "age": 20 + i} for i in range(120)]
    as_json = api.post("/api/users", json=records[:60])
    ndjson = "\n".join(json.dumps(r) for r in records[60:]) + "\n"
    as_ndjson = api.post(
        "/api/users", content=ndjson.encode(), headers={"content-type": "application/x-ndjson"}
    )
    assert as_json.status_code == 202 and as_ndjson.status_code == 202
    for response in (as_json, as_ndjson):
        batch = stack.batch(api, response.json()["batch_id"])
        assert batch["counts"]["stored"] == 60
    assert stack.sql("SELECT count(*) FROM users WHERE name LIKE %s", f"% {tag}") == [(120,)]


def test_the_age_report_is_shared_out_by_group(stack, api):
    report = api.get("/api/reports/age-distribution").json()
    (total,) = stack.sql("SELECT count(*) FROM users")[0]
    assert report["total"] == total
    assert sum(g["count"] for g in report["groups"]) == total
    assert [g["group"] for g in report["groups"]] == ["under 20", "20 to 40", "41 to 60", "over 60"]


def test_metrics_show_the_workers_consumer_lag_and_failed_messages(stack, api):
    # Given a running stack that has processed submissions
    # When Prometheus scrapes the web process
    text = api.get("/metrics").text

    # Then the Kafka figures are there, per partition of the queue and its delay queue
    assert 'kafka_consumer_lag{partition="0",queue="users"}' in text
    assert 'kafka_consumer_lag{partition="0",queue="users.DQ"}' in text
    assert 'kafka_failed_messages{queue="users"}' in text
    assert "http_requests_total" in text
