"""What one share consumer holds: its assigned partitions, the records it acquired and has not acknowledged,
the messages it fetched and has not handed out, and the acknowledgements it owes Kafka.

Bookkeeping only, with no call to Kafka (as :class:`~..assignment.Assignment` is for the classic consumer):
the share consumer fetches and acknowledges, and tells its :class:`ShareAssignment` what came of it; the
assignment says what to hand out, what to acknowledge, which locks to renew and which partitions to forget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from kafka.structs import TopicPartition

from ..assignment import Fetched
from .protocol import GAP, RELEASE, RENEW

M = TypeVar("M", bound=Fetched)


class AckBatch(NamedTuple):
    """Offsets of one partition acknowledged with one type (the protocol's AcknowledgementBatch)."""

    first_offset: int
    last_offset: int
    type: int


class AcquiredRange(NamedTuple):
    """Offsets a fetch acquired for this member, and their delivery count (the AcquiredRecords)."""

    first_offset: int
    last_offset: int
    delivery_count: int


def ack_batches(acks: Mapping[int, int]) -> list[AckBatch]:
    """Acknowledgements (offset -> type) as the fewest batches: consecutive offsets of one type make one."""
    batches: list[AckBatch] = []
    for offset in sorted(acks):
        kind = acks[offset]
        if batches and batches[-1].last_offset == offset - 1 and batches[-1].type == kind:
            batches[-1] = batches[-1]._replace(last_offset=offset)
        else:
            batches.append(AckBatch(offset, offset, kind))
    return batches


class ShareAssignment(Generic[M]):
    """The partitions one share consumer is assigned, the records it holds under lock, the fetched messages
    not handed out yet, and the acknowledgements not sent yet.

    A record is held from the fetch that acquired it until it is acknowledged (ACCEPT, RELEASE, REJECT or,
    for an offset with no record, GAP); held records are the consumer's to renew.  Only offsets inside the
    fetch's acquired ranges are ever held: a fetched batch may carry records another member acquired.

    Not thread-safe: the consumer calls it from its consumer thread only.
    """

    def __init__(self) -> None:
        self._assigned: set[TopicPartition] = set()
        # Held records: partition -> offset -> when its lock was last taken or renewed (monotonic seconds).
        self._held: dict[TopicPartition, dict[int, float]] = {}
        self._buffer: deque[M] = deque()
        self._acks: dict[TopicPartition, dict[int, int]] = {}

    @property
    def assigned(self) -> set[TopicPartition]:
        """The partitions the group assigned to this member."""
        return set(self._assigned)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Take the group's new assignment (the whole of it)."""
        self._assigned = set(partitions)

    def wanted(self) -> set[TopicPartition]:
        """The partitions to keep in the share sessions: those assigned, and those with records still held
        or acknowledgements still owed (an acknowledgement travels in the session of its partition)."""
        return self._assigned | {tp for tp, held in self._held.items() if held} | set(self._acks)

    def outstanding(self) -> int:
        """Records held: handed out or not, and not acknowledged yet."""
        return sum(len(held) for held in self._held.values())

    def buffered(self) -> int:
        """Fetched messages not handed out yet."""
        return len(self._buffer)

    def pop(self) -> M | None:
        """The next fetched message to hand out, or None when none is left."""
        return self._buffer.popleft() if self._buffer else None

    def take(
        self,
        partition: TopicPartition,
        acquired: Iterable[AcquiredRange],
        records: Mapping[int, Any],
        message_of: Callable[[TopicPartition, Any, int], M | None],
        now: float,
    ) -> None:
        """Hold what a fetch acquired of ``partition`` and buffer its messages.

        Parameters:
          partition(TopicPartition): The partition fetched.
          acquired(list[AcquiredRange]): The ranges acquired for this member.
          records(dict[int, record]): The fetched records by offset (a superset of the acquired ones, or
            fewer: an acquired offset with no record, such as a transaction marker's, is acknowledged GAP).
          message_of(callable): Makes the message of a record, given its partition and delivery count; None
            for a record that is not to run (the callable has acknowledged it already).
          now(float): The time of the fetch (monotonic seconds), when the locks were taken.
        """
        held = self._held.setdefault(partition, {})
        for first, last, count in acquired:
            for offset in range(first, last + 1):
                held[offset] = now
                record = records.get(offset)
                if record is None:
                    self.acknowledge(partition, offset, GAP)
                    continue
                message = message_of(partition, record, count)
                if message is not None:
                    self._buffer.append(message)

    def acknowledge(self, partition: TopicPartition, offset: int, kind: int) -> bool:
        """Owe Kafka an acknowledgement of a held record; the record is no longer held.

        Returns:
          False when the record is not held (acknowledged already, or never this member's).
        """
        held = self._held.get(partition)
        if held is None or offset not in held:
            return False
        del held[offset]
        self._acks.setdefault(partition, {})[offset] = kind
        return True

    def release_unhanded(self) -> int:
        """Release the buffered messages (never handed out), so that Kafka gives them to another member.

        Returns:
          How many were released.
        """
        released = 0
        while self._buffer:
            message = self._buffer.popleft()
            released += self.acknowledge(message.partition, message.offset, RELEASE)
        return released

    def has_acks(self) -> bool:
        """Whether acknowledgements are owed."""
        return any(self._acks.values())

    def collect_acks(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, list[AckBatch]]:
        """The acknowledgements owed for ``partitions``, as batches; they count as sent from now on (a
        request that fails loses its session, and with it the records those acknowledgements were for)."""
        collected = {}
        for tp in partitions:
            acks = self._acks.pop(tp, None)
            if acks:
                collected[tp] = ack_batches(acks)
        return collected

    def due_for_renewal(self, now: float, after_s: float) -> dict[TopicPartition, list[AckBatch]]:
        """RENEW batches for the held records whose lock was taken or renewed more than ``after_s`` ago."""
        due = {}
        for tp, held in self._held.items():
            stale = {offset: RENEW for offset, since in held.items() if now - since >= after_s}
            if stale:
                due[tp] = ack_batches(stale)
        return due

    def renewed(self, renewals: Mapping[TopicPartition, list[AckBatch]], now: float) -> None:
        """Note that Kafka renewed the locks of ``renewals`` at ``now``."""
        for tp, batches in renewals.items():
            held = self._held.get(tp, {})
            for first, last, _ in batches:
                for offset in range(first, last + 1):
                    if offset in held:
                        held[offset] = now

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget what is held of ``partitions`` and owed for them: their locks were lost (their share
        session is gone), so Kafka delivers those records again, to this member or another."""
        lost = set(partitions)
        for tp in lost:
            self._held.pop(tp, None)
            self._acks.pop(tp, None)
        self._buffer = deque(m for m in self._buffer if m.partition not in lost)

    def is_held(self, partition: TopicPartition, offset: int) -> bool:
        """Whether the record at ``offset`` of ``partition`` is held (acquired and not acknowledged)."""
        return offset in self._held.get(partition, {})
