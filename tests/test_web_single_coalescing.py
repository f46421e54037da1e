"""Single posts that arrive together travel to Kafka as one message (group commit, ``web/enqueue.py``).

Each test holds the broker's first send, as a Kafka acknowledgement that takes its time, and posts while it
is in flight: what the other posts then do is the coalescer's doing, not the clock's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from dramatiq.brokers.stub import StubBroker

from tests.web_support import (
    LONG_WAIT_S,
    HeldBroker,
    assert_error,
    enqueued,
    make_client,
    run,
    single_records,
    until,
)
from web.ids import SUBMISSION, IdSigner

signer = IdSigner("test-secret")


def post(client: httpx.AsyncClient, i: int) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(client.post("/api/user", json={"name": f"user {i}", "age": 20 + i}))


async def first_post_held(client: httpx.AsyncClient, broker: HeldBroker) -> asyncio.Task[httpx.Response]:
    """Post once, and return when the broker holds that post's send."""
    first = post(client, 0)
    await asyncio.to_thread(broker.holding.wait, LONG_WAIT_S)
    return first


def test_concurrent_posts_travel_to_kafka_coalesced_in_fewer_messages():
    # Given a first post whose send is in flight, and a window longer than the test
    broker = HeldBroker()
    app = make_client(broker, single_linger_ms=LONG_WAIT_S * 1000).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        first = await first_post_held(client, broker)
        # When nine more posts come meanwhile, and then the first send ends
        rest = [post(client, i) for i in range(1, 10)]
        await until(lambda: app.state.enqueuer.waiting_singles == 9)
        broker.release.set()
        return [await first, *await asyncio.gather(*rest)]

    responses = run(app, scenario)
    # Then the nine went together, in one message, each with an id of its own and its 202
    assert [r.status_code for r in responses] == [202] * 10
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 10 and all(signer.verify(i, SUBMISSION) for i in ids)
    messages = enqueued(broker)
    assert [len(m.args[0]) for m in messages] == [1, 9]
    records = single_records(messages)
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert {r["id"]: r["data"]["name"] for r in records} == {i: f"user {n}" for n, i in enumerate(ids)}
    assert all(m.options["pipe_target"]["actor_name"] == "persist_users" for m in messages)


def test_a_lone_post_is_sent_at_once_when_nothing_else_is_in_flight():
    # Given a window far longer than the test
    broker = StubBroker()
    app = make_client(broker, single_linger_ms=3600 * 1000).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> httpx.Response:
        # When one post comes alone
        async with asyncio.timeout(LONG_WAIT_S):
            return await post(client, 0)

    # Then it did not wait for the window
    assert run(app, scenario).status_code == 202
    assert [len(m.args[0]) for m in enqueued(broker)] == [1]


def test_a_lone_post_waits_for_a_send_in_flight_no_longer_than_the_window():
    # Given a first post whose send does not end during the test, and a window of 50 ms
    broker = HeldBroker()
    app = make_client(broker, single_linger_ms=50).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> httpx.Response:
        first = await first_post_held(client, broker)
        try:
            # When another post comes
            async with asyncio.timeout(LONG_WAIT_S):
                return await post(client, 1)
        finally:
            broker.release.set()
            await first

    # Then it was sent once its window was over, while the first send was still in flight
    assert run(app, scenario).status_code == 202
    assert broker.sizes == [1, 1]


def test_every_request_of_a_failed_send_is_answered_503():
    # Given a first post whose send is in flight, after which Kafka fails
    broker = HeldBroker(fail_later=True)
    app = make_client(broker, single_linger_ms=LONG_WAIT_S * 1000).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        first = await first_post_held(client, broker)
        # When four posts come meanwhile, and travel together once the first send ends
        rest = [post(client, i) for i in range(1, 5)]
        await until(lambda: app.state.enqueuer.waiting_singles == 4)
        broker.release.set()
        responses = [await first, *await asyncio.gather(*rest)]
        responses.append(await client.get("/metrics"))
        return responses

    first, *failed, metrics = run(app, scenario)
    # Then each of the four is told the queue is unavailable, and the first one is accepted
    assert first.status_code == 202
    for response in failed:
        assert_error(response, 503, "queue_unavailable")
        assert response.headers["retry-after"] == "7"
    # (one message failed)
    assert 'enqueue_failures_total{kind="validate_users"} 1.0' in metrics.text
    assert [len(m.args[0]) for m in enqueued(broker)] == [1]


def test_with_single_linger_ms_0_every_post_is_a_message_of_its_own():
    # Given coalescing turned off, and a first post whose send is in flight
    broker = HeldBroker()
    app = make_client(broker, single_linger_ms=0).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        first = await first_post_held(client, broker)
        # When four posts come meanwhile
        rest = await asyncio.gather(*[post(client, i) for i in range(1, 5)])
        broker.release.set()
        return [await first, *rest]

    responses = run(app, scenario)
    # Then each went alone, without waiting for the first send
    assert [r.status_code for r in responses] == [202] * 5
    assert [len(m.args[0]) for m in enqueued(broker)] == [1] * 5


def test_a_message_carries_at_most_single_max_records_posts():
    # Given at most 4 posts a message, and a first post whose send is in flight
    broker = HeldBroker()
    app = make_client(broker, single_linger_ms=LONG_WAIT_S * 1000, single_max_records=4).app

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        first = await first_post_held(client, broker)
        # When eleven posts come meanwhile
        rest = [post(client, i) for i in range(1, 12)]
        await until(lambda: sum(broker.sizes) + app.state.enqueuer.waiting_singles == 11)
        broker.release.set()
        return [await first, *await asyncio.gather(*rest)]

    responses = run(app, scenario)
    # Then no message carried more than four, and the first four did not wait for the first send
    assert [r.status_code for r in responses] == [202] * 12
    assert broker.sizes[0] == 4 and max(broker.sizes) == 4 and len(broker.sizes) >= 4
    assert len(single_records(enqueued(broker))) == 12


def test_a_post_larger_than_a_messages_byte_budget_travels_alone():
    # Given a byte budget of 200 bytes of bodies a message, and a first post whose send is in flight
    broker = HeldBroker()
    app = make_client(broker, single_linger_ms=LONG_WAIT_S * 1000).app
    app.state.enqueuer.max_group_bytes = 200

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        first = await first_post_held(client, broker)
        # When a small post comes, then one of 300 bytes
        small = post(client, 1)
        await until(lambda: app.state.enqueuer.waiting_singles == 1)
        large = asyncio.ensure_future(client.post("/api/user", json={"name": "x" * 300, "age": 30}))
        # Then the small one is sent without waiting for the first send, and the large one alone
        responses = [await small, await large]
        broker.release.set()
        return [await first, *responses]

    assert [r.status_code for r in run(app, scenario)] == [202] * 3
    assert broker.sizes == [1, 1, 1]
