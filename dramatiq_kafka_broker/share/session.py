"""Share sessions: a share consumer's conversation with one partition leader (KIP-932).

A consumer opens a session with a leader by a ShareFetch of epoch 0 that names the partitions it wants;
every later ShareFetch or ShareAcknowledge to that leader carries the next epoch and names only what changed
(partitions added, with the acknowledgements owed for them; partitions forgotten); epoch -1 closes the
session.  A leader that lost the session, or saw an epoch out of turn, answers SHARE_SESSION_NOT_FOUND or
INVALID_SHARE_SESSION_EPOCH: the consumer opens a new one, and the records it held there are Kafka's to
deliver again.  Requests of one session never overlap: the consumer sends one at a time to each leader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kafka.record import MemoryRecords
from kafka.structs import TopicPartition

from .protocol import request_class
from .state import AckBatch, AcquiredRange

#: The epoch that opens a session, and the one that closes it.
OPEN, CLOSE = 0, -1
#: Most bytes one ShareFetch asks for: the leader sends the log from the group's position on, of which only
#: ``max_records`` are acquired, so asking for everything would ship (and parse) far more than is taken.
#: At least one record batch comes whatever its size (KIP-74).
MAX_FETCH_BYTES = 1 << 20
#: The largest epoch; the next one after it is 1 (the protocol's int32 wraps past 0, which opens).
_MAX_EPOCH = 2**31 - 1


class ShareSession:
    """What a consumer knows of its session with one leader: the epoch to send next, and the partitions in
    the session."""

    def __init__(self) -> None:
        self.epoch = OPEN
        self.partitions: set[TopicPartition] = set()

    @property
    def open(self) -> bool:
        """Whether the leader has the session (a request of epoch 0 was answered)."""
        return self.epoch != OPEN

    def advance(self) -> None:
        """The leader answered the request of the current epoch."""
        self.epoch = 1 if self.epoch >= _MAX_EPOCH else self.epoch + 1

    def reset(self) -> set[TopicPartition]:
        """Forget the session (the leader lost it); returns the partitions it had."""
        lost, self.partitions, self.epoch = self.partitions, set(), OPEN
        return lost


def _ack_batches(cls: Any, batches: Iterable[AckBatch]) -> list[Any]:
    return [
        cls(first_offset=b.first_offset, last_offset=b.last_offset, acknowledge_types=[b.type])
        for b in batches
    ]


def fetch_request(
    *,
    group: str,
    member_id: str,
    session: ShareSession,
    topic_id: Any,
    wanted: set[TopicPartition],
    acks: Mapping[TopicPartition, list[AckBatch]],
    max_records: int,
    max_wait_ms: int,
) -> Any:
    """The ShareFetch of ``session``'s next epoch: it adds the ``wanted`` partitions the session lacks,
    forgets those it has and no longer wants, and carries ``acks`` (of partitions in the session); the
    session's partitions become ``wanted``."""
    cls = request_class("ShareFetch")
    added = wanted - session.partitions if session.open else wanted
    forgotten = session.partitions - wanted if session.open else set()
    named = sorted(added | set(acks), key=lambda tp: tp.partition)
    partitions = [
        cls.FetchTopic.FetchPartition(
            partition_index=tp.partition,
            acknowledgement_batches=_ack_batches(
                cls.FetchTopic.FetchPartition.AcknowledgementBatch, acks.get(tp, ())
            ),
        )
        for tp in named
    ]
    session.partitions = set(wanted)
    return cls(
        group_id=group,
        member_id=member_id,
        share_session_epoch=session.epoch,
        max_wait_ms=max_wait_ms,
        min_bytes=1,
        max_bytes=MAX_FETCH_BYTES,
        max_records=max_records,
        batch_size=max_records,
        share_acquire_mode=1,  # record-limit: never acquire more than max_records (our prefetch)
        is_renew_ack=False,
        topics=[cls.FetchTopic(topic_id=topic_id, partitions=partitions)] if partitions else [],
        forgotten_topics_data=(
            [cls.ForgottenTopic(topic_id=topic_id, partitions=sorted(tp.partition for tp in forgotten))]
            if forgotten
            else []
        ),
    )


def acknowledge_request(
    *,
    group: str,
    member_id: str,
    epoch: int,
    topic_id: Any,
    acks: Mapping[TopicPartition, list[AckBatch]],
    renew: bool = False,
) -> Any:
    """A ShareAcknowledge of ``acks`` at ``epoch`` (-1 closes the session); ``renew`` when they are RENEWs."""
    cls = request_class("ShareAcknowledge")
    partition_cls = cls.AcknowledgeTopic.AcknowledgePartition
    partitions = [
        partition_cls(
            partition_index=tp.partition,
            acknowledgement_batches=_ack_batches(partition_cls.AcknowledgementBatch, batches),
        )
        for tp, batches in sorted(acks.items(), key=lambda item: item[0].partition)
    ]
    return cls(
        group_id=group,
        member_id=member_id,
        share_session_epoch=epoch,
        is_renew_ack=renew,
        topics=[cls.AcknowledgeTopic(topic_id=topic_id, partitions=partitions)] if partitions else [],
    )


def acquired_ranges(partition_data: Any) -> list[AcquiredRange]:
    """The acquired ranges of one partition of a ShareFetch answer."""
    return [
        AcquiredRange(r.first_offset, r.last_offset, r.delivery_count)
        for r in partition_data.acquired_records or ()
    ]


def records_by_offset(data: bytes | None, acquired: list[AcquiredRange]) -> dict[int, Any]:
    """The data records of a ShareFetch answer's record batches that fall in the ``acquired`` ranges, by
    offset (control records left out).  A batch with none of them is not decoded: the batches carry the
    records other members acquired too."""
    found: dict[int, Any] = {}
    if not data or not acquired:
        return found
    for batch in MemoryRecords(data):
        if getattr(batch, "is_control_batch", False):
            continue
        first, last = batch.base_offset, getattr(batch, "last_offset", None)
        if last is not None and not any(a.first_offset <= last and first <= a.last_offset for a in acquired):
            continue
        for record in batch:
            if any(a.first_offset <= record.offset <= a.last_offset for a in acquired):
                found[record.offset] = record
    return found
