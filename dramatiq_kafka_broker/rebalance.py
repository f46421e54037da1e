"""What a consumer does when its group moves partitions to or from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from dramatiq.logging import get_logger
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError

from . import compat
from .offsets import PartitionState, decode_acked

if TYPE_CHECKING:
    from .consumer import _KafkaConsumer


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Commits what was acked before partitions leave, and picks up their state when they come.

    kafka-python 3 runs these callbacks on its IO thread while the consumer thread waits inside ``poll``
    (or ``close``), so they never run alongside ``__next__``; they must not call blocking consumer APIs,
    hence :mod:`.compat`'s coroutines.
    """

    def __init__(self, consumer: _KafkaConsumer) -> None:
        self.logger = get_logger(__name__, type(self))
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        consumer = self.consumer
        revoked = [tp for tp in revoked if tp in consumer.states]
        if not revoked:
            return
        consumer.drain_acks()
        offsets = consumer.offsets_to_commit(revoked)
        if offsets:
            try:
                await compat.commit_offsets(consumer.kafka, offsets, consumer.broker.send_timeout_ms)
                consumer.committed(offsets)
            except KafkaError as e:
                self.logger.warning("Commit of revoked partitions of %s failed: %s", consumer.topic, e)
        for tp in revoked:
            # Kept aside until the assignment is known: if the partition comes back to us, what is in flight
            # stays in flight instead of being fetched and run a second time.
            consumer.revoked[tp] = consumer.states.pop(tp)
        # Unacked messages of those partitions go to their next owner; drop what was not handed out.
        first_dropped: dict[TopicPartition, int] = {}
        for message in consumer.buffer:
            if message.partition in revoked:
                consumer.revoked[message.partition].outstanding -= 1
                first_dropped.setdefault(message.partition, message.offset)
        for tp, offset in first_dropped.items():
            # Should the partition come back, fetching starts again at the first message not handed out.
            consumer.revoked[tp].forget_from(offset)
        consumer.buffer = type(consumer.buffer)(m for m in consumer.buffer if m.partition not in revoked)
        self.logger.info(
            "Partitions revoked from %s: %s", consumer.topic, sorted(tp.partition for tp in revoked)
        )

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self.consumer
        assigned = list(assigned)
        commits = await compat.committed_offsets(consumer.kafka, assigned)
        for tp in assigned:
            committed = commits.get(tp)
            previous = consumer.revoked.pop(tp, None)
            if previous is not None and committed is not None and committed.offset == previous.committed:
                # Nobody moved the partition on since we last owned it: carry on where we were.  Acks that
                # came in while it was away are in its state but were never committed: commit them now.
                consumer.states[tp] = previous
                if previous.position is not None:
                    consumer.kafka.seek(tp, previous.position)
                consumer.dirty = True
                continue
            consumer.epoch += 1
            state = consumer.states[tp] = PartitionState(consumer.epoch)
            if committed is not None and committed.offset >= 0:
                state.skip = decode_acked(committed.offset, committed.metadata)
        consumer.revoked.clear()
        self.logger.info(
            "Partitions assigned to %s: %s", consumer.topic, sorted(tp.partition for tp in assigned)
        )
        if not assigned:
            self.logger.warning(
                "No partition of %s is left for this consumer: its group has more consumers than the topic "
                "has partitions, so some worker processes idle. Run fewer, or give the topic more partitions "
                "(kafka-topics.sh --alter --partitions N; KAFKA_PARTITIONS for new topics).",
                consumer.topic,
            )
