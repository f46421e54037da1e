"""``Idempotency-Key`` on ``POST /api/user`` and ``POST /api/users``, on Dramatiq's StubBroker and the real
PostgreSQL (where keys are remembered): a retried post is the same submission, never a new one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from tests.web_support import (
    LONG_WAIT_S,
    FailingBroker,
    HangingBroker,
    HeldBroker,
    assert_error,
    batch_records,
    enqueued,
    json_bytes,
    make_client,
    run,
    single_records,
    until,
)
from web.idempotency import MAX_KEY_LENGTH

pytestmark = pytest.mark.postgres

JSON = {"content-type": "application/json"}
ADA = {"name": "Ada Lovelace", "age": 36}
A_BATCH = [{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}, {"name": "Grace", "age": 85}]


@pytest.fixture
def keys(clean_database) -> Iterator[Any]:
    """The session's database with no users, outcomes or idempotency keys; yields a reader of the keys."""
    with clean_database.connection_context():
        clean_database.execute_sql("TRUNCATE idempotency_keys")

    def rows() -> list[dict[str, Any]]:
        with clean_database.connection_context():
            cursor = clean_database.execute_sql(
                "SELECT key, kind, submission_id, state, answer, locked_until > now() FROM idempotency_keys "
                "ORDER BY created_at"
            )
            names = ["key", "kind", "submission_id", "state", "answer", "locked"]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    yield rows


def sql(database: Any, statement: str, *params: Any) -> None:
    with database.connection_context():
        database.execute_sql(statement, params or None)


def new_key() -> str:
    return str(uuid.uuid4())


def post_user(client: Any, key: str | None, body: Any = ADA, **headers: str) -> Any:
    extra = {} if key is None else {"Idempotency-Key": key}
    return client.post("/api/user", content=json_bytes(body), headers={**JSON, **extra, **headers})


def post_batch(client: Any, key: str | None, body: Any = A_BATCH) -> Any:
    extra = {} if key is None else {"Idempotency-Key": key}
    return client.post("/api/users", content=json_bytes(body), headers={**JSON, **extra})


def settle(client: Any) -> None:
    """Wait until the app has written the settlements of its keys (they go in the background, after the
    202)."""
    client.portal.call(client.app.state.idempotency_keys.drain)


def assert_replayed(first: Any, again: Any) -> None:
    """``again`` is the answer ``first`` got, given again: the same 202, body and Location, said to be a
    replay (and ``first`` not)."""
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.content == first.content  # (the keys of the body in their order too)
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"


class SwitchableBroker(FailingBroker):
    """A StubBroker that fails like a Kafka that is away until ``working`` is set; with ``deliver_then_fail``
    it keeps the message before it fails (an enqueue given up on at its deadline that reached Kafka)."""

    def __init__(self, *, deliver_then_fail: bool = False) -> None:
        super().__init__()
        self.working = False
        self.deliver_then_fail = deliver_then_fail

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        if self.working:
            return StubBroker.enqueue(self, message, delay=delay)
        if self.deliver_then_fail:
            StubBroker.enqueue(self, message, delay=delay)
        raise self.error


# --- The same key twice -------------------------------------------------------------------------------------


def test_a_single_post_sent_twice_with_one_key_is_one_submission_answered_twice_alike(
    keys, web_broker, web_client
):
    # When
    key = new_key()
    first, second = post_user(web_client, key), post_user(web_client, key)
    # Then: the same 202, body and Location; the second says it is a replay; one record enqueued
    assert_replayed(first, second)
    assert first.headers["location"] == f"/api/submissions/{first.json()['id']}"
    assert [r["id"] for r in single_records(enqueued(web_broker))] == [first.json()["id"]]
    settle(web_client)
    [row] = keys()
    assert (row["kind"], row["state"], row["submission_id"]) == ("single", "accepted", first.json()["id"])
    assert row["answer"] == first.json()


def test_a_batch_sent_twice_with_one_key_is_one_batch(keys, web_broker, web_client):
    # When
    key = new_key()
    first, second = post_batch(web_client, key), post_batch(web_client, key)
    # Then
    assert_replayed(first, second)
    assert first.headers["location"] == f"/api/batches/{first.json()['batch_id']}"
    messages = enqueued(web_broker)
    assert len(batch_records(messages)) == len(A_BATCH)
    assert [m.args[0] for m in messages if m.actor_name == "register_batch"] == [first.json()["batch_id"]]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"name,age\nAda,36\nAlan,41\n", id="csv"),
        pytest.param(b'{"name": "Ada", "age": 36}\n{"name": "Alan", "age": 41}\n', id="ndjson"),
    ],
)
def test_an_uploaded_file_sent_twice_with_one_key_is_one_batch(keys, web_broker, body):
    # Given: a multipart upload, as the operator page and the CLI send files
    key = new_key()
    name = "users.csv" if body.startswith(b"name") else "users.ndjson"
    with make_client(web_broker) as client:

        def upload() -> Any:
            return client.post("/api/users", files={"file": (name, body)}, headers={"Idempotency-Key": key})

        # When
        first, second = upload(), upload()
    # Then
    assert_replayed(first, second)
    assert len(batch_records(enqueued(web_broker))) == 2


def test_posts_without_a_key_stay_new_submissions_and_touch_no_key(keys, web_broker):
    # Given
    with make_client(web_broker) as client:
        # When
        first, second = post_user(client, None), post_user(client, None)
    # Then
    assert first.json()["id"] != second.json()["id"]
    assert len(single_records(enqueued(web_broker))) == 2
    assert keys() == []


# --- Concurrent posts of one key ----------------------------------------------------------------------------


def test_while_the_first_post_of_a_key_is_being_accepted_another_gets_409(keys):
    # Given: a first post held in the enqueue (Kafka slow to acknowledge)
    release = threading.Event()
    broker = HangingBroker(release)
    key = new_key()
    with make_client(broker, single_linger_ms=0) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_user, client, key)
        deadline = time.monotonic() + 10
        while not keys() and time.monotonic() < deadline:
            time.sleep(0.01)
        # When the same post comes again meanwhile
        racing = post_user(client, key)
        release.set()
        # Then: 409 with Retry-After; the first ends 202, and a later retry gets its answer
        assert_error(racing, 409, "idempotency_key_in_flight")
        assert 1 <= int(racing.headers["retry-after"]) <= 7
        assert first.result(timeout=30).status_code == 202
        after = post_user(client, key)
    assert after.status_code == 202 and after.json() == first.result().json()
    assert len(single_records(enqueued(broker))) == 1


def test_of_many_racing_posts_of_one_key_exactly_one_enqueues(keys, web_broker):
    # Given
    key = new_key()
    with make_client(web_broker) as client, ThreadPoolExecutor(8) as pool:
        # When eight posts of one key race
        answers = list(pool.map(lambda _: post_user(client, key), range(8)))
    # Then: one is enqueued; the others are replays of its answer or 409s
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {202, 409} and 202 in statuses, statuses
    accepted = {a.json()["id"] for a in answers if a.status_code == 202}
    assert len(accepted) == 1
    assert sum(1 for a in answers if a.status_code == 202 and "idempotent-replayed" not in a.headers) == 1
    assert [r["id"] for r in single_records(enqueued(web_broker))] == list(accepted)


def _keyed_group(broker: HeldBroker) -> list[Any]:
    """A first keyed post held in its send, then nine keyed posts that come meanwhile and go together once
    it ends; the ten answers, after the settlements are written."""
    app = make_client(broker, single_linger_ms=LONG_WAIT_S * 1000).app

    async def scenario(client: Any, app: Any) -> list[Any]:
        def keyed(i: int) -> Any:
            body = {"name": f"user {i}", "age": 20 + i}
            headers = {**JSON, "Idempotency-Key": f"k{i}"}
            return asyncio.ensure_future(client.post("/api/user", content=json_bytes(body), headers=headers))

        first = keyed(0)
        await asyncio.to_thread(broker.holding.wait, LONG_WAIT_S)
        rest = [keyed(i) for i in range(1, 10)]
        await until(lambda: app.state.idempotency_keys.waiting_singles == 9)
        broker.release.set()
        answers = [await first, *await asyncio.gather(*rest)]
        await app.state.idempotency_keys.drain()
        return answers

    return run(app, scenario)


def test_keyed_posts_that_arrive_together_are_claimed_together_and_sent_as_one_message(keys):
    # Given a first keyed post whose send is in flight
    broker = HeldBroker()
    # When nine keyed posts come meanwhile
    answers = _keyed_group(broker)
    # Then the nine went to Kafka as one message, each under the id its key was claimed for
    assert [a.status_code for a in answers] == [202] * 10
    messages = enqueued(broker)
    assert [len(m.args[0]) for m in messages] == [1, 9]
    ids = [a.json()["id"] for a in answers]
    assert [r["id"] for r in single_records(messages)] == ids
    rows = {row["key"]: row for row in keys()}
    assert [rows[f"k{i}"]["submission_id"] for i in range(10)] == ids
    assert {row["state"] for row in rows.values()} == {"accepted"}


def test_every_keyed_post_of_a_failed_send_is_503_and_its_retry_keeps_its_id(keys):
    # Given a first keyed post whose send is in flight, after which Kafka fails
    broker = HeldBroker(fail_later=True)
    # When nine keyed posts come meanwhile and go together
    first, *failed = _keyed_group(broker)
    # Then each of the nine is refused, its key left for a retry at once with its id
    assert first.status_code == 202
    for answer in failed:
        assert_error(answer, 503, "queue_unavailable")
    rows = {row["key"]: row for row in keys()}
    assert [(rows[f"k{i}"]["state"], rows[f"k{i}"]["locked"]) for i in range(1, 10)] == [
        ("unsure", False)
    ] * 9
    broker.fail_later = False
    with make_client(broker) as client:
        retried = post_user(client, "k3", {"name": "user 3", "age": 23})
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] == rows["k3"]["submission_id"]


# --- Another body, another route ----------------------------------------------------------------------------


def test_a_key_sent_again_with_another_body_is_422(keys, web_client):
    # Given
    key = new_key()
    assert post_user(web_client, key).status_code == 202
    # Then: another user, the same user spelt otherwise, the other route
    assert_error(
        post_user(web_client, key, {"name": "Alan Turing", "age": 41}), 422, "idempotency_key_reused"
    )
    respelt = web_client.post(
        "/api/user", content=b'{"age": 36, "name": "Ada Lovelace"}', headers={**JSON, "Idempotency-Key": key}
    )
    assert_error(respelt, 422, "idempotency_key_reused")
    assert_error(post_batch(web_client, key, [ADA]), 422, "idempotency_key_reused")


def test_a_batch_key_sent_again_in_another_form_is_422(keys, web_client):
    # Given a batch sent as a JSON array
    key = new_key()
    assert post_batch(web_client, key).status_code == 202
    # When the same records come as NDJSON
    ndjson = b"\n".join(json_bytes(user) for user in A_BATCH)
    response = web_client.post(
        "/api/users", content=ndjson, headers={"content-type": "application/x-ndjson", "Idempotency-Key": key}
    )
    # Then
    assert_error(response, 422, "idempotency_key_reused")


# --- Bad keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * (MAX_KEY_LENGTH + 1), id="too-long"),
        pytest.param("clé".encode(), id="non-ascii"),
        pytest.param(b"caf\xe9", id="latin-1"),
        pytest.param(b"two words", id="space"),
        pytest.param(b"tab\there", id="tab"),
        pytest.param(b"del\x7f", id="del"),
    ],
)
@pytest.mark.parametrize("path", ["/api/user", "/api/users"])
def test_a_bad_key_is_400_and_nothing_is_enqueued(web_broker, web_client, value, path):
    # When
    body = json_bytes(ADA if path == "/api/user" else [ADA])
    response = web_client.post(
        path, content=body, headers=[(b"content-type", b"application/json"), (b"idempotency-key", value)]
    )
    # Then
    assert_error(response, 400, "invalid_idempotency_key")
    assert enqueued(web_broker) == []


def test_two_key_headers_are_400(web_broker, web_client):
    headers = [(b"content-type", b"application/json"), (b"idempotency-key", b"a"), (b"idempotency-key", b"b")]
    assert_error(
        web_client.post("/api/user", content=json_bytes(ADA), headers=headers), 400, "invalid_idempotency_key"
    )
    assert enqueued(web_broker) == []


def test_a_key_of_the_longest_length_and_every_visible_character_is_taken(keys, web_client):
    # Given
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    for key in (visible, ("k" + visible * 3)[:MAX_KEY_LENGTH]):
        # When
        response = post_user(web_client, key)
        # Then
        assert response.status_code == 202, response.text


# --- Callers -----------------------------------------------------------------------------------------------


def test_another_callers_key_is_another_key(keys):
    # Given two web apps with API tokens of their own, on one database
    key = new_key()
    alice_broker, bob_broker = StubBroker(), StubBroker()
    with (
        make_client(alice_broker, api_token="alice") as alice,
        make_client(bob_broker, api_token="bob") as bob,
    ):
        # When both send the same key and body
        for_alice = post_user(alice, key, authorization="Bearer alice")
        for_bob = post_user(bob, key, authorization="Bearer bob")
        again_alice = post_user(alice, key, authorization="Bearer alice")
    # Then: two submissions; each caller's retry is its own
    assert for_alice.status_code == for_bob.status_code == 202
    assert for_alice.json()["id"] != for_bob.json()["id"]
    assert_replayed(for_alice, again_alice)
    assert len(single_records(enqueued(alice_broker))) == len(single_records(enqueued(bob_broker))) == 1
    assert len(keys()) == 2


def test_without_api_token_every_client_shares_one_scope(keys, web_client):
    # Given
    key = new_key()
    first = post_user(web_client, key, authorization="Bearer one")
    # When another client (another Authorization, ignored without API_TOKEN) sends the key
    second = post_user(web_client, key, authorization="Bearer two")
    # Then
    assert_replayed(first, second)


def test_the_scope_stored_is_a_hash_never_the_token(keys, clean_database):
    # Given
    with make_client(api_token="s3cret-token") as client:
        post_user(client, new_key(), authorization="Bearer s3cret-token")
    # Then
    with clean_database.connection_context():
        [(scope,)] = clean_database.execute_sql("SELECT scope FROM idempotency_keys").fetchall()
    assert scope == hashlib.sha256(b"s3cret-token").hexdigest()


# --- The retention window -----------------------------------------------------------------------------------


def test_a_key_past_its_retention_is_a_new_submission(keys, clean_database, web_broker):
    # Given a key used two days ago (the window is one day)
    key = new_key()
    with make_client(web_broker, idempotency_key_retention_s=86400) as client:
        first = post_user(client, key)
        settle(client)
        sql(clean_database, "UPDATE idempotency_keys SET created_at = now() - interval '2 days'")
        # When
        second = post_user(client, key, {"name": "Someone Else", "age": 50})
        third = post_user(client, key, {"name": "Someone Else", "age": 50})
    # Then: a new submission, itself remembered from now on
    assert second.status_code == 202 and "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert_replayed(second, third)
    assert len(single_records(enqueued(web_broker))) == 2


def test_expired_keys_are_deleted_now_and_then(keys, clean_database, monkeypatch):
    # Given an old key and a recent one, and a deletion at every claim
    from web import idempotency

    monkeypatch.setattr(idempotency, "PRUNE_EVERY", 1)
    with make_client(idempotency_key_retention_s=3600) as client:
        post_user(client, "old")
        settle(client)
        sql(clean_database, "UPDATE idempotency_keys SET created_at = now() - interval '2 hours'")
        # When
        post_user(client, "recent")
        deadline = time.monotonic() + 10
        while len(keys()) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    # Then
    assert [row["key"] for row in keys()] == ["recent"]


# --- Retries after a 503 ------------------------------------------------------------------------------------


def test_a_retry_after_a_503_enqueues_the_same_id_once(keys):
    # Given Kafka away: the keyed post is refused
    broker = SwitchableBroker()
    key = new_key()
    with make_client(broker) as client:
        refused = post_user(client, key)
        assert_error(refused, 503, "queue_unavailable")
        [row] = keys()
        assert (row["state"], row["locked"]) == ("unsure", False)
        # When Kafka is back and the client retries with its key
        broker.working = True
        retried = post_user(client, key)
        again = post_user(client, key)
    # Then: the id claimed by the first attempt, enqueued once (by the retry), then replayed
    assert retried.status_code == 202 and retried.json()["id"] == row["submission_id"]
    assert "idempotent-replayed" not in retried.headers
    assert_replayed(retried, again)
    assert [r["id"] for r in single_records(enqueued(broker))] == [row["submission_id"]]


def test_a_503_that_reached_kafka_ends_stored_once_not_duplicate_of_itself(keys, clean_database):
    # Given an enqueue that reached Kafka but was refused to the client (its deadline ran out)
    from pipeline.worker import actors

    broker = SwitchableBroker(deliver_then_fail=True)
    key = new_key()
    body = {"name": f"Retry {uuid.uuid4().hex[:8]}", "age": 30}
    with make_client(broker) as client:
        assert_error(post_user(client, key, body), 503, "queue_unavailable")
        broker.working = True
        # When the client retries with its key
        retried = post_user(client, key, body)
    # Then: both messages carry one id; the worker ends it stored, once
    messages = [m for m in enqueued(broker) if m.actor_name == "validate_users"]
    assert [r["id"] for r in single_records(messages)] == [retried.json()["id"]] * 2
    with clean_database.connection_context():
        for message in messages:
            actors.persist_users(actors.validate_users(*message.args))
        outcomes = clean_database.execute_sql("SELECT id, status FROM submissions").fetchall()
        users = clean_database.execute_sql("SELECT count(*) FROM users").fetchone()[0]
    assert outcomes == [(retried.json()["id"], "stored")] and users == 1


def test_a_batch_refused_midway_is_the_same_batch_on_its_retry(keys):
    # Given a batch of several chunks (three records each) whose enqueue fails after the first chunk
    broker = FailingBroker(succeed=1)
    key = new_key()
    records = [{"name": f"U{n}", "age": n} for n in range(1, 8)]
    with make_client(broker, batch_chunk_size=3) as client:
        # (GROUP_CHUNKS chunks go in one call: one success lets the first group through)
        assert_error(post_batch(client, key, records), 503, "queue_unavailable")
        [row] = keys()
        # When the retry finds Kafka back
        broker.remaining = 100
        retried = post_batch(client, key, records)
    # Then: the same batch id; every record is enqueued under its id of that batch
    assert retried.status_code == 202 and retried.json() == {"batch_id": row["submission_id"], "count": 7}
    ids = {r["id"] for r in batch_records(enqueued(broker))}
    assert ids == {f"{row['submission_id']}.{n}" for n in range(1, 8)}


def test_a_keyed_batch_refused_as_read_frees_its_key_for_the_corrected_batch(keys, web_client):
    # Given a batch refused for what it holds (no records)
    key = new_key()
    assert_error(post_batch(web_client, key, []), 422, "invalid_body")
    # When the corrected batch is sent with the same key
    corrected = post_batch(web_client, key)
    # Then it is accepted, not refused as another body
    assert corrected.status_code == 202, corrected.text
    settle(web_client)
    assert [row["state"] for row in keys()] == ["accepted"]


# --- A web process that died mid-request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock", "expected"), [("now() - interval '1 second'", 202), ("now() + interval '1 hour'", 409)]
)
def test_a_key_whose_process_died_is_taken_over_once_its_lock_runs_out(keys, clean_database, lock, expected):
    # Given a key claimed by a process that died before it settled (left in flight)
    broker = SwitchableBroker()
    key = new_key()
    with make_client(broker) as client:
        post_user(client, key)
        sql(clean_database, f"UPDATE idempotency_keys SET state = 'in_flight', locked_until = {lock}")
        [row] = keys()
        broker.working = True
        # When the client retries
        retried = post_user(client, key)
    # Then: taken over with the same id once the lock ran out; 409 while it holds
    assert retried.status_code == expected, retried.text
    if expected == 202:
        assert retried.json()["id"] == row["submission_id"]
        assert [r["id"] for r in single_records(enqueued(broker))] == [row["submission_id"]]
    else:
        assert_error(retried, 409, "idempotency_key_in_flight")
        assert enqueued(broker) == []


def test_a_post_renews_its_lock_while_it_lasts(keys):
    # Given a lock of 0.3 s and an enqueue that takes longer
    release = threading.Event()
    broker = HangingBroker(release)
    key = new_key()
    with make_client(broker, single_linger_ms=0) as client, ThreadPoolExecutor(1) as pool:
        client.app.state.idempotency_keys.lock_s = 0.3
        first = pool.submit(post_user, client, key)
        time.sleep(1.0)
        # When another post comes after three locks' time
        racing = post_user(client, key)
        release.set()
        # Then: the first still holds its key
        assert_error(racing, 409, "idempotency_key_in_flight")
        assert first.result(timeout=30).status_code == 202
    assert len(single_records(enqueued(broker))) == 1


# --- PostgreSQL away ----------------------------------------------------------------------------------------


def test_a_keyed_post_is_503_when_the_database_is_unreachable_and_an_unkeyed_one_goes_on(pipeline_database):
    # Given the database pointed at a port where nothing listens
    from pipeline import db as pipeline_db

    broker = StubBroker()
    saved = dict(pipeline_database.connect_params, database=pipeline_database.database)
    pipeline_db.configure("postgresql://bup@127.0.0.1:9/nowhere")
    try:
        with make_client(broker) as client:
            # When
            keyed = post_user(client, new_key())
            unkeyed = post_user(client, None)
    finally:
        pipeline_database.close_all()
        pipeline_database.init(**saved)
    # Then: the keyed post is refused before anything is enqueued; the client retries with its key
    assert_error(keyed, 503, "database_unavailable")
    assert keyed.headers["retry-after"] == "7"
    assert unkeyed.status_code == 202
    assert len(single_records(enqueued(broker))) == 1


def test_the_answer_replayed_is_the_json_the_client_got(keys, web_client):
    # Given
    key = new_key()
    first = post_batch(web_client, key)
    # Then: stored as sent, in the order of its keys
    assert json.loads(post_batch(web_client, key).content) == first.json()
    assert list(post_batch(web_client, key).json()) == ["batch_id", "count"]


def test_one_key_twice_in_one_group_of_claims_is_claimed_once(keys, clean_database):
    # Given two posts of one key whose claims are written together, and a post of another key with them
    from web.idempotency_rows import Claim, Claiming, KeyRows

    store = KeyRows(retention_s=3600, lock_s=30, retry_after=7)
    claims = [
        Claiming("scope", "same", "f" * 64, "single", "first-id"),
        Claiming("scope", "same", "f" * 64, "single", "second-id"),
        Claiming("scope", "other", "f" * 64, "single", "third-id"),
    ]
    # When
    with clean_database.connection_context():
        store.claim_all(claims)
    # Then: the first is claimed, the second finds it in flight, the other key is claimed too
    assert claims[0].outcome == Claim("scope", "same", "first-id", taken_over=False)
    assert getattr(claims[1].outcome, "code", None) == "idempotency_key_in_flight"
    assert claims[2].outcome == Claim("scope", "other", "third-id", taken_over=False)


def test_a_retry_while_the_answer_is_being_recorded_gets_it_from_the_process(keys, web_broker, monkeypatch):
    # Given a post answered 202 whose settlement is slow to be written (it goes after the answer)
    from web.idempotency_rows import KeyRows

    release = threading.Event()
    write = KeyRows.accept_all
    monkeypatch.setattr(KeyRows, "accept_all", lambda self, rows: (release.wait(30), write(self, rows)))
    key = new_key()
    with make_client(web_broker) as client:
        first = post_user(client, key)
        assert [row["state"] for row in keys()] == ["in_flight"]
        # When the client sends it again meanwhile
        again = post_user(client, key)
        release.set()
        settle(client)
    # Then: the same answer, from the process that gave it; nothing enqueued again; then settled
    assert_replayed(first, again)
    assert len(single_records(enqueued(web_broker))) == 1
    assert [row["state"] for row in keys()] == ["accepted"]
