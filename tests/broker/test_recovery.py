"""A consumer's way back after Kafka failed it: a replaced consumer leaves its group
whatever its last commit did, and a message whose hand-off could not reach Kafka waits for Kafka un-acked,
spending no retry and failing nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import dramatiq
import kafka.errors
import pytest
from dramatiq.middleware import Pipelines, Retries

from dramatiq_kafka_broker import KafkaBroker, KafkaConnectionError, RecordTooLarge, compat
from dramatiq_kafka_broker import consumer as consumer_module
from dramatiq_kafka_broker.consumer import _KafkaConsumer
from dramatiq_kafka_broker.middleware import DurablePipelines, DurableRetries
from tests.broker.conftest import delete_topics, fast_middleware, make_kafka_broker


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def next_message(consumer: _KafkaConsumer, timeout: float = 60) -> dramatiq.broker.MessageProxy:
    deadline = time.monotonic() + timeout
    while (message := next(consumer)) is None:
        assert time.monotonic() < deadline, "no message"
    return message


@pytest.fixture
def durable_broker(kafka_bootstrap_servers: str, topic_prefix: str) -> Iterator[KafkaBroker]:
    """A KafkaBroker with the service's DurablePipelines and DurableRetries (fast backoffs)."""
    chosen: list[dramatiq.Middleware] = []
    for m in fast_middleware():
        if isinstance(m, Retries):
            m = DurableRetries(max_retries=3, min_backoff=50, max_backoff=200)
        elif isinstance(m, Pipelines):
            m = DurablePipelines()
        chosen.append(m)
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, middleware=chosen)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    delete_topics(broker)
    broker.close()


def test_a_consumer_whose_last_commit_fails_still_leaves_its_group(kafka_broker: KafkaBroker):
    # Given a consumer that holds an acked message, and whose commits fail (as they do while Kafka is away)
    @dramatiq.actor
    def noop() -> None: ...

    noop.send()
    consumer = kafka_broker.consume("default", prefetch=4, timeout=100)
    assert isinstance(consumer, _KafkaConsumer)
    consumer.ack(next_message(consumer))

    def commit_fails(**_: object) -> None:
        raise kafka.errors.KafkaTimeoutError("commit")

    consumer.kafka.commit = commit_fails  # type: ignore[method-assign]
    group = kafka_broker.group_for("default")

    # When it is closed
    consumer.close()

    # Then it has left its group all the same: a member left behind would hold every rebalance of the group
    def members() -> int:
        described = kafka_broker.clients.admin_call("describe_groups", [group]).get(group) or {}
        return len(described.get("members") or [])

    assert members() == 0


def test_a_message_left_for_redelivery_makes_way_for_a_new_consumer_that_delivers_it_again(
    kafka_broker: KafkaBroker,
):
    # Given a consumer that handed out a message
    @dramatiq.actor
    def noop() -> None: ...

    sent = noop.send()
    consumer = kafka_broker.consume("default", prefetch=4, timeout=100)
    message = next_message(consumer)

    # When the message is left for redelivery (its hand-off could not reach Kafka) and "acked"
    message.redeliver_later()
    consumer.ack(message)

    # Then the consumer makes way: the worker closes it and makes a new one...
    with pytest.raises(KafkaConnectionError):
        next(consumer)
    consumer.close()
    # ...which delivers the message again; an ack of the first delivery, given to the new consumer by the
    # worker, is not taken for one of its own
    consumer = kafka_broker.consume("default", prefetch=4, timeout=100)
    try:
        consumer.ack(message)
        assert consumer._acks.empty()
        again = next_message(consumer)
        assert again.message_id == sent.message_id
    finally:
        consumer.close()


def test_an_actor_that_cannot_reach_kafka_runs_again_once_it_can_with_no_retry_spent(
    durable_broker: KafkaBroker,
):
    # Given an actor that cannot reach Kafka the first time it runs
    runs: list[int] = []

    @dramatiq.actor(max_retries=0)
    def sends_on(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise KafkaConnectionError("Kafka did not acknowledge a message: KafkaTimeoutError")

    retries_seen: list[object] = []
    original = DurableRetries.after_process_message

    def spy(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        try:
            return original(self, broker, message, result=result, exception=exception)
        finally:
            retries_seen.append(message.options.get("retries"))

    # When it is sent and a worker runs it
    worker = dramatiq.Worker(durable_broker, worker_timeout=100, worker_threads=2)
    try:
        DurableRetries.after_process_message = spy  # type: ignore[method-assign]
        sends_on.send(1)
        worker.start()
        wait_until(lambda: len(runs) >= 2, timeout=90)
        durable_broker.join("default", timeout=60_000)
    finally:
        worker.stop()
        DurableRetries.after_process_message = original  # type: ignore[method-assign]

    # Then it ran again (max_retries=0: a retry would have failed it), spent no retry, and nothing failed
    assert len(runs) == 2
    assert retries_seen == [None, None]
    assert durable_broker.admin.failed_count("default") == 0


def test_a_next_stage_that_cannot_be_enqueued_waits_for_kafka_and_fails_nothing(
    durable_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
):
    # Given a two-stage pipeline whose second stage cannot be enqueued the first time (Kafka away)
    first_runs: list[int] = []
    second_runs: list[int] = []

    @dramatiq.actor(max_retries=0)
    def first(n: int) -> int:
        first_runs.append(n)
        return n

    @dramatiq.actor(max_retries=0)
    def second(n: int) -> None:
        second_runs.append(n)

    enqueue = durable_broker.enqueue
    refused = threading.Event()

    def enqueue_once_refused(message, *, delay=None):  # type: ignore[no-untyped-def]
        if message.actor_name == "second" and not refused.is_set():
            refused.set()
            raise KafkaConnectionError("Kafka did not acknowledge a message: KafkaTimeoutError")
        return enqueue(message, delay=delay)

    monkeypatch.setattr(durable_broker, "enqueue", enqueue_once_refused)

    # When the pipeline runs
    worker = dramatiq.Worker(durable_broker, worker_timeout=100, worker_threads=2)
    try:
        dramatiq.pipeline([first.message(7), second.message()]).run()
        worker.start()
        wait_until(lambda: second_runs, timeout=90)
        durable_broker.join("default", timeout=60_000)
    finally:
        worker.stop()

    # Then the first stage ran again once Kafka took messages, the second ran once, and nothing failed
    assert first_runs == [7, 7]
    assert second_runs == [7]
    assert durable_broker.admin.failed_count("default") == 0


def test_a_worker_whose_consumers_cannot_rejoin_one_after_another_gives_up_instead_of_idling(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
):
    # Given consumers that never settle in their group (as when a member nobody polls holds its rebalances)
    monkeypatch.setattr(compat, "rebalance_under_way", lambda kafka: True)
    monkeypatch.setattr(consumer_module, "REJOIN_PATIENCE_S", 0.0)

    class GaveUp(Exception):
        pass

    def give_up(self: _KafkaConsumer, reason: str) -> None:
        raise GaveUp(reason)

    monkeypatch.setattr(_KafkaConsumer, "give_up", give_up)
    kafka_broker.declare_queue("default")

    # When the worker replaces each one that gives up rejoining
    outcomes = []
    for _ in range(consumer_module.REJOIN_ATTEMPTS):
        consumer = kafka_broker.consume("default", prefetch=1, timeout=100)
        try:
            next(consumer)
        except (KafkaConnectionError, GaveUp) as error:
            outcomes.append(type(error))
        finally:
            consumer.close()

    # Then the first ones are replaced, and the last one ends the process (to be restarted by its supervisor)
    attempts = consumer_module.REJOIN_ATTEMPTS
    assert outcomes == [KafkaConnectionError] * (attempts - 1) + [GaveUp]


def test_a_next_stage_kafka_refuses_as_too_large_fails_its_message_instead_of_waiting(
    durable_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
):
    # Given a two-stage pipeline whose second stage is always refused as too large
    first_runs: list[int] = []

    @dramatiq.actor(max_retries=0)
    def first(n: int) -> int:
        first_runs.append(n)
        return n

    @dramatiq.actor(max_retries=0)
    def second(n: int) -> None: ...

    enqueue = durable_broker.enqueue

    def enqueue_refused(message, *, delay=None):  # type: ignore[no-untyped-def]
        if message.actor_name == "second":
            raise RecordTooLarge("cannot send to 'default': MessageSizeTooLargeError")
        return enqueue(message, delay=delay)

    monkeypatch.setattr(durable_broker, "enqueue", enqueue_refused)

    # When the pipeline runs
    worker = dramatiq.Worker(durable_broker, worker_timeout=100, worker_threads=2)
    try:
        dramatiq.pipeline([first.message(7), second.message()]).run()
        worker.start()
        wait_until(lambda: durable_broker.admin.failed_count("default") == 1, timeout=60)
        durable_broker.join("default", timeout=60_000, fail_fast=False)
    finally:
        worker.stop()

    # Then the first stage ran once and failed onto the failed topic: a refusal is not an outage to wait out
    assert first_runs == [7]
