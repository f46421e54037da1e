"""What one consumer holds of its topic: the partitions assigned to it, what it knows of each, and the
messages it fetched and has not handed out yet.

Bookkeeping only, with no call to Kafka: the consumer polls, commits and seeks, and tells its
:class:`Assignment` what came of it; the assignment says what to hand out, what to commit and where to seek.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from kafka.structs import OffsetAndMetadata, TopicPartition

from .offsets import PartitionState, decode_acked, encode_acked


class Fetched(Protocol):
    """A message made of a fetched record: where it came from is all the assignment asks of it."""

    @property
    def partition(self) -> TopicPartition: ...

    @property
    def offset(self) -> int: ...


M = TypeVar("M", bound=Fetched)


class Assignment(Generic[M]):
    """The partitions one consumer holds, their state, and the fetched messages not handed out yet.

    A partition is committed up to its lowest unacked offset, with the acked ones above it in the commit's
    metadata (:mod:`.offsets`).  Each ownership of a partition has an epoch of its own, so that an ack of a
    message fetched before the partition went to another owner is dropped: that owner runs it again.

    Not thread-safe: the consumer calls it from its consumer thread, and from kafka-python's rebalance
    callbacks, which run while that thread waits inside ``poll``.
    """

    def __init__(self) -> None:
        self._states: dict[TopicPartition, PartitionState] = {}
        # Partitions revoked at the current rebalance, until the next assignment says whether they come back.
        self._revoked: dict[TopicPartition, PartitionState] = {}
        self._buffer: deque[M] = deque()
        self._epoch = 0
        self._dirty = False

    @property
    def partitions(self) -> list[TopicPartition]:
        """The partitions held, in the order they were assigned."""
        return list(self._states)

    @property
    def dirty(self) -> bool:
        """Whether something was acked since the offsets were last collected for a commit."""
        return self._dirty

    def held(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Those of ``partitions`` that are held."""
        return [tp for tp in partitions if tp in self._states]

    def outstanding(self) -> int:
        """Messages fetched and not acked yet, handed out or not."""
        return len(self._buffer) + sum(state.outstanding for state in self._states.values())

    def pop(self) -> M | None:
        """The next fetched message to hand out, or None when none is left."""
        return self._buffer.popleft() if self._buffer else None

    def take(
        self,
        batch: Mapping[TopicPartition, Iterable[Any]],
        message_of: Callable[[TopicPartition, Any, int], M | None],
    ) -> None:
        """Buffer the messages of a fetched batch.

        Records of a partition that is not held are left out, and so are those that the partition's previous
        owner acked above its commit point (they count as acked).

        Parameters:
          batch(dict[TopicPartition, list]): Records by partition, as ``poll`` returns them.
          message_of(callable): Makes the message of a record, given its partition and the partition's
            epoch; it answers None for a record that is not a message (put out of the way by then), which
            counts as acked.
        """
        for tp, records in batch.items():
            state = self._states.get(tp)
            if state is None:
                continue
            for record in records:
                state.position = record.offset + 1
                state.pending.append(record.offset)
                if record.offset in state.skip:
                    # Acked by this partition's previous owner after its last commit point.
                    state.skip.discard(record.offset)
                    state.acked.add(record.offset)
                    self._dirty = True
                    continue
                message = message_of(tp, record, state.epoch)
                if message is None:
                    state.acked.add(record.offset)
                    self._dirty = True
                    continue
                state.outstanding += 1
                self._buffer.append(message)

    def ack(self, partition: TopicPartition, offset: int, epoch: int) -> bool:
        """Record the ack of a message handed out; one of an earlier epoch is dropped.

        A partition revoked at the current rebalance still takes acks: should it come back unchanged, they
        are committed then.

        Returns:
          Whether the ack was recorded.
        """
        state = self._states.get(partition) or self._revoked.get(partition)
        if state is None or state.epoch != epoch:
            return False  # the partition went to another owner since, which has the message again
        state.acked.add(offset)
        state.outstanding -= 1
        self._dirty = True
        return True

    def offsets_to_commit(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The commit of each partition that moved on since its last one.

        Parameters:
          partitions(Iterable[TopicPartition]): Held partitions to look at; every held one when None.
        """
        offsets = {}
        for tp in self._states if partitions is None else partitions:
            state = self._states[tp]
            point = state.commit_point()
            if point is not None and (point != state.committed or state.acked):
                offsets[tp] = OffsetAndMetadata(point, encode_acked(point, state.acked), -1)
        return offsets

    def collect_commit(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The commit of every held partition that moved on since its last one; the assignment is clean until
        the next ack (or :meth:`commit_failed`)."""
        offsets = self.offsets_to_commit()
        self._dirty = False
        return offsets

    def commit_failed(self) -> None:
        """The offsets last collected were not committed: a commit is due again."""
        self._dirty = True

    def committed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """Note that ``offsets`` were committed."""
        for tp, done in offsets.items():
            if tp in self._states:
                self._states[tp].committed = done.offset

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Give up ``partitions``: their messages not handed out yet are dropped, to go to their next owner.

        Their states are kept aside until :meth:`assign`: if a partition comes back, what is in flight stays
        in flight instead of being fetched and run a second time.
        """
        revoked = set(self.held(partitions))
        for tp in revoked:
            self._revoked[tp] = self._states.pop(tp)
        first_dropped: dict[TopicPartition, int] = {}
        for message in self._buffer:
            if message.partition in revoked:
                self._revoked[message.partition].outstanding -= 1
                first_dropped.setdefault(message.partition, message.offset)
        for tp, offset in first_dropped.items():
            # Should the partition come back, fetching starts again at the first message not handed out.
            self._revoked[tp].forget_from(offset)
        self._buffer = deque(m for m in self._buffer if m.partition not in revoked)

    def assign(
        self,
        partitions: Iterable[TopicPartition],
        commits: Mapping[TopicPartition, OffsetAndMetadata | None],
    ) -> dict[TopicPartition, int]:
        """Take ``partitions``, the whole of the new assignment; the revoked ones that are not in it are
        forgotten.

        Parameters:
          partitions(Iterable[TopicPartition]): The partitions assigned.
          commits(dict[TopicPartition, OffsetAndMetadata]): The group's committed offset of each (None, or
            missing, for a partition never committed).

        Returns:
          The offset to seek each partition to, for those that carry on where this consumer left them.
        """
        seeks = {}
        for tp in partitions:
            committed = commits.get(tp)
            previous = self._revoked.pop(tp, None)
            if previous is not None and committed is not None and committed.offset == previous.committed:
                # Nobody moved the partition on since we last owned it: carry on where we were.  Acks that
                # came in while it was away are in its state but were never committed: commit them now.
                self._states[tp] = previous
                if previous.position is not None:
                    seeks[tp] = previous.position
                self._dirty = True
                continue
            self._epoch += 1
            state = self._states[tp] = PartitionState(self._epoch)
            if committed is not None and committed.offset >= 0:
                state.skip = decode_acked(committed.offset, committed.metadata)
        self._revoked.clear()
        return seeks
