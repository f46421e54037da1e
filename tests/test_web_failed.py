"""``/api/failed``: the failed-message topic listed, replayed and purged, on a real Kafka.

Failed messages are written the way the broker writes them (``KafkaBroker.dead_letter_raw``, which
``dead_letter`` calls when a worker gives up on a message), to the ``users`` queue of a broker on topics of
the test's own.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from kafka import TopicPartition

from dramatiq_kafka_broker import KafkaBroker
from pipeline.contract import PERSIST_USERS, PROCESS_USER, QUEUE
from tests.broker.conftest import delete_topics, make_kafka_broker
from tests.web_support import assert_error, make_client
from web.failed import Snapshot

TOKEN = "failed-T0ken"


@pytest.fixture
def failed_broker(kafka_bootstrap_servers: str) -> Iterator[KafkaBroker]:
    """A KafkaBroker on topics of this test's own, its ``users`` queue's topics made."""
    broker = make_kafka_broker(kafka_bootstrap_servers, f"t{uuid.uuid4().hex[:10]}.")
    broker.declare_queue(QUEUE)
    broker.ensure_topics(QUEUE)
    yield broker
    delete_topics(broker)
    broker.close()


@pytest.fixture
def client(failed_broker: KafkaBroker) -> Iterator[Any]:
    with make_client(failed_broker) as test_client:
        yield test_client


def fail(broker: KafkaBroker, records: int, reason: str = "OperationalError: the database went away") -> str:
    """Write a failed ``persist_users`` message carrying ``records`` submissions; return its message id."""
    message = dramatiq.Message(
        queue_name=QUEUE,
        actor_name=PERSIST_USERS,
        args=([{"id": f"s{n}", "row": n, "batch_id": None} for n in range(records)],),
        kwargs={},
        options={"retries": 5},
    )
    broker.dead_letter_raw(QUEUE, message.encode(), reason, origin="users:0:1")
    return message.message_id


def on_queue(broker: KafkaBroker) -> list[dramatiq.Message[Any]]:
    """Every message on the ``users`` topic, read without a consumer group."""
    topic = broker.topic_for(QUEUE)
    partitions = [
        TopicPartition(topic, p["partition_index"])
        for d in broker.clients.admin_call("describe_topics", [topic])
        for p in d["partitions"]
    ]
    reader = broker.clients.new_consumer(group_id=None, enable_auto_commit=False)
    try:
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        ends = reader.end_offsets(partitions)
        found: list[dramatiq.Message[Any]] = []
        for _ in range(50):
            if all(reader.position(tp) >= ends[tp] for tp in partitions):
                break
            for records in reader.poll(timeout_ms=200).values():
                found.extend(dramatiq.Message.decode(r.value) for r in records)
        return found
    finally:
        reader.close(autocommit=False)


def failed_ids(broker: KafkaBroker) -> list[str]:
    return sorted(f.message.message_id for f in broker.admin.failed_messages(QUEUE) if f.message)


def test_the_list_shows_each_failed_message_with_its_actor_reason_time_and_records(client, failed_broker):
    # Given two failed messages of 3 and 1 submissions, and a record that is no Dramatiq message
    first, second = fail(failed_broker, 3), fail(failed_broker, 1, "ValueError: bad")
    failed_broker.dead_letter_raw(QUEUE, b"\xff not json", "DecodeError: not a message", origin="users:0:9")

    # When the operator lists them
    response = client.get("/api/failed")

    # Then each is there, as the page shows it, and the snapshot covers all three
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["queue"], page["held"], page["listed"], page["more"]) == (QUEUE, 3, 3, False)
    by_id = {item["message_id"]: item for item in page["items"]}
    assert by_id[first]["actor"] == PERSIST_USERS and by_id[first]["records"] == 3
    assert by_id[first]["reason"] == "OperationalError: the database went away"
    assert by_id[second]["records"] == 1 and by_id[second]["reason"] == "ValueError: bad"
    assert by_id[None] == {
        **by_id[None],
        "actor": None,
        "records": None,
        "reason": "DecodeError: not a message",
    }
    assert all(
        item["failed_at"].endswith("Z") and item["id"] == f"{item['partition']}-{item['offset']}"
        for item in page["items"]
    )
    assert Snapshot.decode(page["snapshot"]).listed == 3


def test_the_list_pages_and_each_snapshot_covers_every_page_so_far(client, failed_broker):
    # Given five failed messages
    sent = {fail(failed_broker, 1) for _ in range(5)}

    # When they are listed two at a time
    pages = [client.get("/api/failed", params={"limit": 2}).json()]
    while pages[-1]["more"]:
        pages.append(client.get("/api/failed", params={"limit": 2, "after": pages[-1]["snapshot"]}).json())

    # Then every message is listed once, and the last snapshot covers all five
    listed = [item["message_id"] for page in pages for item in page["items"]]
    assert sorted(listed) == sorted(sent)
    assert [page["listed"] for page in pages] == [2, 4, 5]


def test_replay_puts_back_exactly_the_listed_messages_even_when_another_failed_since(client, failed_broker):
    # Given three failed messages, listed, and a fourth that failed after the listing
    listed = {fail(failed_broker, 2) for _ in range(3)}
    snapshot = client.get("/api/failed").json()["snapshot"]
    later = fail(failed_broker, 1)

    # When the operator replays what was listed
    response = client.post("/api/failed/replay", json={"snapshot": snapshot})

    # Then the three are back on the queue, retries reset, and only the later one is still failed
    assert response.status_code == 200, response.text
    assert response.json() == {"replayed": 3, "left": 0}
    replayed = on_queue(failed_broker)
    assert {m.message_id for m in replayed} == listed
    assert all("retries" not in m.options for m in replayed)
    assert failed_ids(failed_broker) == [later]


def test_purge_deletes_exactly_the_listed_messages_even_when_another_failed_since(client, failed_broker):
    # Given two failed messages, listed, and a third that failed after the listing
    for _ in range(2):
        fail(failed_broker, 1)
    snapshot = client.get("/api/failed").json()["snapshot"]
    later = fail(failed_broker, 1)

    # When the operator purges what was listed
    response = client.post("/api/failed/purge", json={"snapshot": snapshot})

    # Then the two are gone, nothing was replayed, and the later one stays
    assert response.status_code == 200, response.text
    assert response.json() == {"purged": 2}
    assert failed_ids(failed_broker) == [later]
    assert on_queue(failed_broker) == []


def test_replay_of_the_first_page_only_leaves_the_pages_not_seen(client, failed_broker):
    # Given four failed messages of which the operator saw the first page of two
    sent = {fail(failed_broker, 1) for _ in range(4)}
    page = client.get("/api/failed", params={"limit": 2}).json()

    # When that page is replayed
    response = client.post("/api/failed/replay", json={"snapshot": page["snapshot"]})

    # Then those two are replayed, and the two not seen are still failed
    assert response.json() == {"replayed": 2, "left": 0}
    seen = {item["message_id"] for item in page["items"]}
    assert {m.message_id for m in on_queue(failed_broker)} == seen
    assert failed_ids(failed_broker) == sorted(sent - seen)


def test_a_snapshot_acted_on_once_is_stale_the_second_time(client, failed_broker):
    # Given failed messages, listed and replayed
    fail(failed_broker, 1)
    snapshot = client.get("/api/failed").json()["snapshot"]
    assert client.post("/api/failed/replay", json={"snapshot": snapshot}).status_code == 200

    # When the same snapshot is replayed, purged or paged from again
    again = client.post("/api/failed/replay", json={"snapshot": snapshot})
    purge = client.post("/api/failed/purge", json={"snapshot": snapshot})
    page = client.get("/api/failed", params={"after": snapshot})

    # Then each is refused as stale, and nothing is replayed twice
    for response in (again, purge, page):
        assert_error(response, 409, "failed_messages_changed")
    assert len(on_queue(failed_broker)) == 1


def test_a_snapshot_naming_messages_the_topic_never_held_is_refused(client, failed_broker):
    # Given one failed message, and a snapshot of its partition stretched past the topic's end
    fail(failed_broker, 1)
    real = Snapshot.decode(client.get("/api/failed").json()["snapshot"])
    stretched = Snapshot({p: (first, end + 10) for p, (first, end) in real.ranges.items()}).encode()

    # When it is replayed
    response = client.post("/api/failed/replay", json={"snapshot": stretched})

    # Then it is refused and the message is still failed
    assert_error(response, 400, "invalid_snapshot")
    assert len(failed_ids(failed_broker)) == 1 and on_queue(failed_broker) == []


def test_an_empty_topic_lists_nothing_and_its_snapshot_acts_on_nothing(client, failed_broker):
    # Given no failed message
    page = client.get("/api/failed").json()
    # When its snapshot is purged after one arrived
    fail(failed_broker, 1)
    response = client.post("/api/failed/purge", json={"snapshot": page["snapshot"]})
    # Then nothing was listed and nothing deleted
    assert (page["items"], page["held"], page["more"]) == ([], 0, False)
    assert response.json() == {"purged": 0}
    assert len(failed_ids(failed_broker)) == 1


def test_every_failed_route_needs_the_token_when_it_is_set(failed_broker):
    # Given an app with API_TOKEN set and a failed message
    fail(failed_broker, 1)
    with make_client(failed_broker, api_token=TOKEN) as guarded:
        snapshot = guarded.get("/api/failed", headers={"Authorization": f"Bearer {TOKEN}"}).json()["snapshot"]
        # When the routes are called without the token (or with another)
        answers = [
            guarded.get("/api/failed"),
            guarded.post("/api/failed/replay", json={"snapshot": snapshot}),
            guarded.post(
                "/api/failed/purge", json={"snapshot": snapshot}, headers={"Authorization": "Bearer x"}
            ),
        ]
    # Then each is 401, and the message is still failed
    for response in answers:
        assert_error(response, 401, "unauthorized")
    assert len(failed_ids(failed_broker)) == 1


def test_a_broker_without_a_failed_topic_answers_404_with_a_code(web_client):
    # Given the app on Dramatiq's StubBroker, which keeps no failed-message topic
    snapshot = Snapshot({0: (0, 1)}).encode()
    # When
    answers = [
        web_client.get("/api/failed"),
        web_client.post("/api/failed/replay", json={"snapshot": snapshot}),
        web_client.post("/api/failed/purge", json={"snapshot": snapshot}),
    ]
    # Then
    for response in answers:
        assert_error(response, 404, "no_failed_topic")


def test_the_records_of_a_single_post_message_count_one(client, failed_broker):
    # Given a failed process_user message (one submission)
    message = dramatiq.Message(
        queue_name=QUEUE, actor_name=PROCESS_USER, args=({"id": "s1"},), kwargs={}, options={}
    )
    failed_broker.dead_letter_raw(QUEUE, message.encode(), "RuntimeError: x", origin="")
    # When / Then
    [item] = client.get("/api/failed").json()["items"]
    assert (item["actor"], item["records"]) == (PROCESS_USER, 1)


def test_the_dlq_command_purges_the_messages_it_asked_about_and_not_those_failing_meanwhile(
    failed_broker, monkeypatch, capsys
):
    # Given two failed messages, and a third that fails while the command waits for its answer
    from pipeline import cli_dlq

    for _ in range(2):
        fail(failed_broker, 1)
    later: list[str] = []

    def answer(question: str) -> str:
        later.append(fail(failed_broker, 1))
        return "y"

    monkeypatch.setattr("builtins.input", answer)

    # When the operator purges with `python -m pipeline dlq purge users` and says yes
    code = cli_dlq._run(failed_broker, argparse.Namespace(dlq_action="purge", queue=QUEUE, yes=False))

    # Then the two it counted are gone and the later one stays
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("purged 2")
    assert failed_ids(failed_broker) == later


def test_the_documented_bounds_are_the_codes(web_client):
    # Given the served description of GET /api/failed
    from web import failed

    parameters = {
        p["name"]: p["schema"]
        for p in web_client.get("/openapi.json").json()["paths"]["/api/failed"]["get"]["parameters"]
    }
    # Then
    assert (parameters["limit"]["default"], parameters["limit"]["maximum"]) == (
        failed.DEFAULT_LIMIT,
        failed.MAX_LIMIT,
    )
    assert parameters["after"]["maxLength"] == failed.MAX_SNAPSHOT_CHARS
