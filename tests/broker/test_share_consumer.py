"""The share consumer (``share/consumer.py``) against the real Kafka: what Dramatiq's contract asks of it that
the behaviour suite (``test_behaviour.py``, run in share mode too) does not show -- workers beyond the
partition count, a release that is delivered again at once, a record moved to the failed topic before
Kafka's delivery limit would drop it, and locks renewed while an actor runs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from dramatiq.message import Message
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import TopicPartition

from dramatiq_kafka_broker import KafkaBroker, KafkaConnectionError
from dramatiq_kafka_broker.share.consumer import DELIVERY_LIMIT, _KafkaShareConsumer
from tests.broker.conftest import delete_topics, make_kafka_broker

#: The least lock duration Kafka takes for a group (``group.share.min.record.lock.duration.ms``), in ms.
LOCK_MS = 15_000


@pytest.fixture
def one_partition_broker(kafka_bootstrap_servers: str, topic_prefix: str) -> Iterator[KafkaBroker]:
    """A KafkaBroker in share mode whose topics have one partition."""
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, group_type="share", partitions=1)
    broker.declare_queue("work")
    yield broker
    delete_topics(broker)
    broker.close()


def _send(broker: KafkaBroker, count: int) -> None:
    broker.enqueue_many(
        Message(queue_name="work", actor_name="do", args=(n,), kwargs={}, options={}) for n in range(count)
    )


def _next(consumer, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError("no message came in time")


def test_a_queue_mode_broker_uses_a_share_group_of_its_own_and_a_classic_delay_queue(one_partition_broker):
    broker = one_partition_broker
    # Then the queue's group is its classic name with .share after it, and the delay queue's is classic
    assert broker.group_for("work") == f"{broker.topic_prefix}test.work.share"
    assert broker.group_for("work.DQ") == f"{broker.topic_prefix}test.work.DQ"
    consumer = broker.consume("work")
    try:
        assert isinstance(consumer, _KafkaShareConsumer)
    finally:
        consumer.close()
    delayed = broker.consume("work.DQ")
    try:
        assert not isinstance(delayed, _KafkaShareConsumer)
    finally:
        delayed.close()


def test_a_group_type_that_is_neither_classic_nor_share_is_refused():
    with pytest.raises(ValueError, match="group_type must be 'classic' or 'share'"):
        KafkaBroker(group_type="queue")


def test_two_consumers_share_one_partition(one_partition_broker):
    # Given a queue of one partition with 20 messages, and two consumers that each hold at most 2
    broker = one_partition_broker
    first = broker.consume("work", prefetch=2, timeout=100)
    second = broker.consume("work", prefetch=2, timeout=100)
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    try:
        # (both members assigned the partition before the messages come, or the first could take them all)
        deadline = time.monotonic() + 20
        while not (first.state.assigned and second.state.assigned) and time.monotonic() < deadline:
            assert next(first) is None and next(second) is None
        assert first.state.assigned == second.state.assigned == {TopicPartition(broker.topic_for("work"), 0)}
        _send(broker, 20)
        # When both take turns, each acking what it got
        deadline = time.monotonic() + 30
        while len(seen[0] | seen[1]) < 20 and time.monotonic() < deadline:
            for index, consumer in enumerate((first, second)):
                message = next(consumer)
                if message is not None:
                    seen[index].add(message.args[0])
                    consumer.ack(message)
    finally:
        first.close()
        second.close()
    # Then every message ran once, and both consumers had some: a consumer group would have idled one
    assert seen[0] | seen[1] == set(range(20))
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_a_requeued_message_goes_to_another_consumer_at_once_delivered_again(one_partition_broker):
    broker = one_partition_broker
    _send(broker, 1)
    first = broker.consume("work", prefetch=1, timeout=100)
    message = _next(first)
    assert message.delivery_count == 1
    # When the first consumer requeues it and closes (a worker shutting down)
    first.requeue([message])
    first.close()
    # Then the next consumer gets it well before any lock could run out, delivered for the second time
    started = time.monotonic()
    second = broker.consume("work", prefetch=1, timeout=100)
    try:
        again = _next(second)
        assert (again.message_id, again.delivery_count) == (message.message_id, 2)
        assert time.monotonic() - started < 10
        second.ack(again)
    finally:
        second.close()


def test_a_message_on_its_last_delivery_is_moved_to_the_failed_topic_not_run(one_partition_broker):
    # Given a message released once more than the consumer runs a message
    broker = one_partition_broker
    _send(broker, 1)
    consumer = broker.consume("work", prefetch=1, timeout=100)
    try:
        for delivery in range(1, DELIVERY_LIMIT + 1):
            message = _next(consumer)
            assert message.delivery_count == delivery
            consumer.requeue([message])
        # When it is delivered once more
        deadline = time.monotonic() + 10
        handed = []
        while not list(broker.admin.failed_messages("work")) and time.monotonic() < deadline:
            handed.append(next(consumer))
    finally:
        consumer.close()
    # Then it was not handed out, but kept on the failed topic with the reason
    assert [m for m in handed if m is not None] == []
    (failed,) = broker.admin.failed_messages("work")
    assert failed.message is not None and failed.message.message_id == message.message_id
    assert f"delivered {DELIVERY_LIMIT + 1} times" in failed.reason
    # ...and Kafka delivers it no more
    assert sum(broker.admin.lag("work").values()) == 0


def test_a_message_held_longer_than_a_lock_stays_its_consumers(one_partition_broker):
    # Given a group whose locks last 15 s, and a consumer that holds a message (a long-running actor)
    broker = one_partition_broker
    broker.ensure_topics("work")
    group = broker.group_for("work")
    resource = ConfigResource(
        ConfigResourceType.GROUP, group, {"share.record.lock.duration.ms": str(LOCK_MS)}
    )
    assert broker.clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)
    _send(broker, 1)
    first = broker.consume("work", prefetch=1, timeout=100)
    second = broker.consume("work", prefetch=1, timeout=100)
    try:
        message = _next(first)
        # When the other consumer looks for work for longer than the lock lasts, while the first only
        # keeps polling (as a worker's consumer thread does while the actor runs)
        stolen = []
        deadline = time.monotonic() + LOCK_MS / 1000 + 5
        while time.monotonic() < deadline:
            assert next(first) is None
            stolen.append(next(second))
        # Then the first renewed its lock: the other never got the message, and it is accepted once done
        assert [m for m in stolen if m is not None] == []
        first.ack(message)
        assert next(first) is None
        deadline = time.monotonic() + 10
        while sum(broker.admin.lag("work").values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(broker.admin.lag("work").values()) == 0
    finally:
        first.close()
        second.close()


def test_a_consumer_that_could_not_leave_is_replaced_at_once_by_the_next_one(kafka_share_broker, monkeypatch):
    # Given a consumer that holds every partition of a three-partition queue
    broker = kafka_share_broker
    broker.declare_queue("work")
    first = broker.consume("work", prefetch=1, timeout=100)
    deadline = time.monotonic() + 20
    while len(first.state.assigned) < 3 and time.monotonic() < deadline:
        next(first)
    assert len(first.state.assigned) == 3

    # When it closes without leaving its group (Kafka did not answer), and the worker makes another
    def unanswered() -> None:
        raise KafkaConnectionError("no answer")

    monkeypatch.setattr(first.membership, "leave", unanswered)
    first.close()
    second = broker.consume("work", prefetch=1, timeout=100)
    try:
        # Then the new one joins as the same member and gets every partition at once, instead of sharing
        # them with a departed member until its session times out (45 s)
        assert second.member_id == first.member_id
        deadline = time.monotonic() + 10
        while len(second.state.assigned) < 3 and time.monotonic() < deadline:
            next(second)
        assert len(second.state.assigned) == 3
    finally:
        second.close()
