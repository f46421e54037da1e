"""Hostile input through the real stack (uvicorn, ``dramatiq pipeline`` workers, Kafka, PostgreSQL).

SQL-looking and other odd values are stored literally; records PostgreSQL cannot store end ``invalid``
without taking their chunk down; records on the ``users`` topic that are not Dramatiq messages go to the
failed topic with their reason while the worker carries on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.e2e.conftest import ROOT, Stack

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

SQL_LOOKING = [
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    "1; SELECT pg_sleep(30)",
    "$$; DELETE FROM submissions; $$",
    "%_\\%",
    'x" || (SELECT current_user) || "',
    "E'\\x41' ::text",
    "\\N",
]


def post_user(api: Any, body: Any) -> str:
    response = api.post(
        "/api/user",
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_sql_looking_values_are_stored_literally(stack: Stack) -> None:
    # Given users whose every field looks like SQL
    tag = uuid.uuid4().hex[:8]
    bodies = [
        {
            "name": f"{text} {tag}",
            "age": 30,
            "email": None,
            "address": {"line1": text, "city": "'; --"},
            text: text,  # an extra field, kept in additional_info under a key that looks like SQL
            "numbers": [10**30, 1e308, 5e-324, -0.0],
        }
        for text in SQL_LOOKING
    ]
    with stack.client() as api:
        # When
        ids = [post_user(api, body) for body in bodies]
        outcomes = [stack.outcome(api, submission_id) for submission_id in ids]
        listed = api.get("/api/users", params={"name": tag, "limit": 100}).json()["items"]
    # Then: stored, byte for byte, and the tables are all still there
    for body, outcome in zip(bodies, outcomes, strict=True):
        assert outcome["status"] == "stored", outcome
        user = outcome["user"]
        assert user["name"] == body["name"]
        assert user["address"] == body["address"]
        assert user["additional_info"][body["address"]["line1"]] == body["address"]["line1"]
        assert user["additional_info"]["numbers"][0] == 10**30
    assert sorted(u["name"] for u in listed) == sorted(b["name"] for b in bodies)
    names = [
        row[0] for row in stack.sql("SELECT name FROM users WHERE name LIKE %s ORDER BY name", f"% {tag}")
    ]
    assert names == sorted(b["name"] for b in bodies)
    assert stack.sql("SELECT count(*) FROM submissions WHERE id = ANY(%s)", ids) == [(len(ids),)]


def test_records_postgresql_cannot_store_end_invalid_and_their_chunk_is_stored(stack: Stack) -> None:
    # Given a batch (one chunk) of good records around records whose *keys* hold NUL or a lone surrogate
    tag = uuid.uuid4().hex[:8]
    body = (
        "["
        f'{{"name": "Good One {tag}", "age": 20}},'
        f'{{"name": "Nul Key {tag}", "age": 21, "a\\u0000b": 1}},'
        f'{{"name": "Surrogate Key {tag}", "age": 22, "\\ud800": 1}},'
        f'{{"name": "Good Two {tag}", "age": 23}}'
        "]"
    ).encode()
    with stack.client() as api:
        # When
        response = api.post("/api/users", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
        batch = stack.batch(api, response.json()["batch_id"])
    # Then: the two good records are stored, the two bad ones invalid (not the whole chunk "failed")
    assert batch["counts"]["stored"] == 2, batch
    assert batch["counts"]["invalid"] == 2 and batch["counts"]["failed"] == 0, batch
    assert [item["row"] for item in batch["items"]] == [2, 3]
    for item in batch["items"]:  # the error names the key, spelled with escapes
        assert item["errors"] and "\x00" not in json.dumps(item["errors"], ensure_ascii=False)


def dlq(stack: Stack, action: str) -> str:
    """Output of ``python -m pipeline dlq <action> users`` with the stack's environment."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "dlq", action, "users"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_records_that_are_not_dramatiq_messages_go_to_the_failed_topic_and_the_worker_goes_on(
    stack: Stack,
) -> None:
    # Given garbage on the users topic: not JSON, JSON but not a message, a message for no actor, nothing
    marker = uuid.uuid4().hex
    garbage = {
        "not json": b"\x00\xff\xfe not json at all " + marker.encode(),
        "invalid utf-8 json": b'{"x": "\xff", "m": "' + marker.encode() + b'"}',
        "json array": json.dumps([marker, 1, 2]).encode(),
        "json object": json.dumps({"hello": marker}).encode(),
        "message without fields": json.dumps({"queue_name": "users", "m": marker}).encode(),
        "empty": b"",
    }
    unknown_actor = json.dumps(
        {
            "queue_name": "users",
            "actor_name": f"no_such_actor_{marker}",
            "args": [],
            "kwargs": {},
            "options": {},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        }
    ).encode()
    before = dlq(stack, "list").count("DecodeError")
    producer = KafkaProducer(bootstrap_servers=stack.env["KAFKA_BOOTSTRAP_SERVERS"].split(","), acks="all")
    try:
        topic = f"{stack.env['KAFKA_TOPIC_PREFIX']}users"
        for index, value in enumerate([*garbage.values(), unknown_actor]):
            # Keys spread the records over the partitions (and so over the consumers).
            producer.send(topic, key=f"{marker}-{index}".encode(), value=value).get(timeout=30)
        producer.send(topic, key=f"{marker}-tombstone".encode(), value=None).get(timeout=30)
    finally:
        producer.close()

    # When they have been consumed
    deadline = time.monotonic() + 90
    shown: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        shown = [json.loads(line) for line in dlq(stack, "show").splitlines() if line.strip()]
        mine = [f for f in shown if marker in (f["raw"] or "") or marker in json.dumps(f["message"] or {})]
        if len(mine) >= 5:  # 4 markers in the raw garbage, and the message for no actor
            break
        time.sleep(1)

    # Then: each is on the failed topic with its reason, and the worker is still alive
    raws = {f["raw"] for f in shown if f["message"] is None and f["reason"].startswith("DecodeError")}
    for name, value in garbage.items():
        if marker.encode() in value:
            assert value.decode("utf-8", "replace") in raws, f"{name} is not on the failed topic: {shown}"
    assert "" in raws  # the empty record (and the tombstone) too
    listed = dlq(stack, "list")
    assert listed.count("DecodeError") - before >= len(garbage) + 1, listed  # + the tombstone
    assert "(not a Dramatiq message)" in listed
    [no_actor] = [
        f for f in shown if f["message"] and f["message"]["actor_name"] == f"no_such_actor_{marker}"
    ]
    assert "ActorNotFound" in no_actor["reason"]
    assert all(worker.poll() is None for worker in stack.workers), "a worker process died"

    # And a normal submission after them is still stored
    with stack.client() as api:
        outcome = stack.outcome(api, post_user(api, {"name": f"After Garbage {marker[:8]}", "age": 44}))
    assert outcome["status"] == "stored"
