"""``/api/failed`` and its replay and purge under hostile input, on a real Kafka holding failed messages.

Forged, stretched, stale and garbage snapshots, bodies of every wrong shape, bad limits and missing tokens:
every answer is a documented 4xx in the one error shape (never a 5xx), and none of them replays or deletes
a failed message.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_kafka_broker import KafkaBroker
from pipeline.contract import QUEUE
from tests.broker.conftest import delete_topics, make_kafka_broker
from tests.hostile.conftest import check_answer
from tests.test_web_failed import fail, failed_ids, on_queue
from tests.web_support import make_client
from web.failed import MAX_ACTION_BODY_BYTES, SNAPSHOT_PREFIX, Snapshot

TOKEN = "hostile-failed-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: What the failed routes may answer to a hostile request (404 only on a broker without the topic).
FAILED_STATUSES = frozenset({200, 400, 401, 404, 409, 413, 415, 422})
ACTIONS = ("/api/failed/replay", "/api/failed/purge")

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def packed(value: Any) -> str:
    """A snapshot of any JSON value: the right prefix and encoding around whatever ``value`` is."""
    return SNAPSHOT_PREFIX + base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def kafka_app(kafka_bootstrap_servers: str) -> Iterator[tuple[Any, KafkaBroker, str]]:
    """An app guarded by a token, on a KafkaBroker of its own holding two failed messages, and the
    snapshot of the first; the messages are checked to be untouched after each test."""
    broker = make_kafka_broker(kafka_bootstrap_servers, f"t{uuid.uuid4().hex[:10]}.")
    broker.declare_queue(QUEUE)
    broker.ensure_topics(QUEUE)
    fail(broker, 2)
    with make_client(broker, api_token=TOKEN) as client:
        first = client.get("/api/failed", params={"limit": 1}, headers=AUTH).json()["snapshot"]
        fail(broker, 1)
        yield client, broker, first
    delete_topics(broker)
    broker.close()


@pytest.fixture
def untouched(kafka_app: tuple[Any, KafkaBroker, str]) -> Iterator[tuple[Any, KafkaBroker, str]]:
    """The module's app; after the test, both failed messages are still failed and none was replayed."""
    broker = kafka_app[1]
    before = failed_ids(broker)
    yield kafka_app
    assert failed_ids(broker) == before and len(before) == 2
    assert on_queue(broker) == []


def held(broker: KafkaBroker) -> dict[int, tuple[int, int]]:
    return broker.admin.failed_ranges(QUEUE)


def names_nothing(snapshot: str) -> bool:
    """Whether ``snapshot`` is a readable one whose every range is empty."""
    try:
        return all(first == end for first, end in Snapshot.decode(snapshot).ranges.values())
    except Exception:
        return False


def would_act(snapshot: str, ranges: dict[int, tuple[int, int]]) -> bool:
    """Whether ``snapshot`` is a valid one naming a held message (from a partition's first message)."""
    try:
        seen = Snapshot.decode(snapshot).ranges
    except Exception:
        return False
    return any(
        p in ranges and first < end and first == ranges[p][0] and end <= ranges[p][1]
        for p, (first, end) in seen.items()
    )


def forged_snapshots(broker: KafkaBroker, first: str) -> list[str]:
    """Snapshots that name messages the topic does not hold, or are no snapshot at all."""
    ranges = held(broker)
    busy = next(p for p, (a, b) in ranges.items() if b > a)
    low, high = ranges[busy]
    return [
        "",
        "f1.",
        "f2." + first[3:],
        first + "x",
        first[:-2],
        "f1.!!!!",
        "f1." + "A" * 9000,
        packed(None),
        packed({"0": [0, 1]}),
        packed([[busy, low]]),
        packed([[busy, low, high + 1]]),
        packed([[busy, low + 1, high]]),
        packed([[busy, high, low]] if high > low else [[busy, low + 1, low]]),
        packed([[busy, -1, high]]),
        packed([[busy, low, 2**63]]),
        packed([[2**31, 0, 0]]),
        packed([[max(ranges) + 1, 0, 1]]),
        packed([[busy, low, high], [busy, low, high]]),
        packed([[True, low, high]]),
        packed([[busy, float(low), high]]),
        packed([[str(busy), low, high]]),
        packed([[busy, low, high, 0]]),
        packed([[[busy], low, high]]),
        "f1.\u00e9\u00e9",
        SNAPSHOT_PREFIX
        + base64.urlsafe_b64encode(b"[" * 6000).decode(),  # nested past Python's recursion limit
        "f1.\x00",
    ]


def test_forged_snapshots_are_refused_with_a_code_and_act_on_nothing(untouched):
    # Given an app on Kafka holding failed messages, and snapshots a client forged
    client, broker, first = untouched
    for snapshot in forged_snapshots(broker, first):
        # When each is replayed, purged and paged from
        answers = [client.post(path, json={"snapshot": snapshot}, headers=AUTH) for path in ACTIONS]
        if snapshot:  # (an empty query parameter is absent, as everywhere in the API)
            answers.append(client.get("/api/failed", params={"after": snapshot}, headers=AUTH))
        # Then each is a 4xx with a code, or (a range of no message) acts on nothing
        for response in answers:
            body = check_answer(response, source="failed", what=repr(snapshot[:80]), allowed=FAILED_STATUSES)
            if response.status_code == 200:
                assert names_nothing(snapshot), snapshot
                assert response.request.method == "GET" or body in ({"replayed": 0, "left": 0}, {"purged": 0})
            else:
                assert 400 <= response.status_code < 500, (snapshot[:80], response.text)


def test_bodies_of_every_wrong_shape_are_refused(untouched):
    # Given the snapshot of a real listing
    client, _, first = untouched
    bodies: list[tuple[bytes, str]] = [
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"[]", "application/json"),
        (b"null", "application/json"),
        (b'{"snapshot": 1}', "application/json"),
        (b'{"snapshot": null}', "application/json"),
        (b'{"snapshot": ""}', "application/json"),
        (b'{"snapshot": ["' + first.encode() + b'"]}', "application/json"),
        (b'{"snapshot": "\\u0000"}', "application/json"),
        (b'{"snapshot": "\\ud800"}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b'{"snapshot": "' + first.encode() + b'"}', "text/plain"),
        (b"snapshot=" + first.encode(), "application/x-www-form-urlencoded"),
        (b'{"snapshot": "' + first.encode() + b'"}', "application/json; charset=latin-1"),
        (b'{"snapshot": "' + b"a" * (MAX_ACTION_BODY_BYTES + 1) + b'"}', "application/json"),
        (b'{"snapshot": "' + first.encode() + b'"}', ""),
    ]
    for body, media in bodies:
        for path in ACTIONS:
            # When
            headers = {**AUTH, "content-type": media} if media else AUTH
            response = client.post(path, content=body, headers=headers)
            # Then: a documented 4xx (a charset other than UTF-8 too)
            check_answer(
                response, source="failed", what=f"{path} {body[:40]!r} {media}", allowed=FAILED_STATUSES
            )
            assert 400 <= response.status_code < 500, (path, body[:40], media, response.text)


def test_bad_limits_are_refused(untouched):
    client, _, _ = untouched
    for limit in ["0", "-1", "501", "1e3", "abc", "9" * 30, "1.5", " 5", "\u0665"]:
        # When
        response = client.get("/api/failed", params={"limit": limit}, headers=AUTH)
        # Then
        check_answer(response, source="failed", what=f"limit={limit!r}", allowed=FAILED_STATUSES)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"


def test_no_token_no_listing_and_no_action(untouched):
    client, _, first = untouched
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        answers = [client.get("/api/failed", headers=headers)]
        answers += [client.post(path, json={"snapshot": first}, headers=headers) for path in ACTIONS]
        for response in answers:
            check_answer(response, source="failed", what=str(headers), allowed=FAILED_STATUSES)
            assert response.status_code == 401


@FUZZ
@given(text=st.text(max_size=300), triples=st.lists(st.lists(st.integers(-5, 2**64), max_size=4), max_size=5))
def test_generated_snapshots_never_get_a_5xx_nor_act(kafka_app, text, triples):
    # Given a generated snapshot: any text, or well-encoded lists of any integers
    client, broker, _ = kafka_app
    ranges = held(broker)
    for snapshot in (text, SNAPSHOT_PREFIX + text, packed(triples)):
        if would_act(snapshot, ranges):  # a real snapshot, by chance: it would rightly act
            continue
        for path in ACTIONS:
            # When
            response = client.post(path, json={"snapshot": snapshot}, headers=AUTH)
            # Then: refused, or (a range of nothing) acted on nothing
            body = check_answer(response, source="failed", what=repr(snapshot[:80]), allowed=FAILED_STATUSES)
            if response.status_code == 200:
                assert body in ({"replayed": 0, "left": 0}, {"purged": 0}), (snapshot, body)
    assert len(failed_ids(broker)) == 2


def test_a_broker_without_a_failed_topic_never_answers_5xx():
    # Given the app on a StubBroker
    with make_client(StubBroker()) as client:
        answers = [client.get("/api/failed"), client.get("/api/failed", params={"after": "f1.x"})]
        answers += [client.post(path, json={"snapshot": Snapshot({0: (0, 5)}).encode()}) for path in ACTIONS]
        answers += [
            client.post(path, content=b"{", headers={"content-type": "application/json"}) for path in ACTIONS
        ]
    # Then
    for response in answers:
        check_answer(response, source="failed", what=response.request.url.path, allowed=FAILED_STATUSES)
    assert [r.status_code for r in answers] == [404, 400, 404, 404, 400, 400]
