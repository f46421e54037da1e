"""Failed messages: how they are written to a queue's ``.XQ`` topic, what reading one gives back, and the
bounds that keep an operation to the messages an operator saw (:data:`FailedRanges`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dramatiq.errors import DecodeError
from dramatiq.message import Message

from .errors import FailedMessagesChanged, UnknownFailedMessages

#: Header of a failed-message record: why it failed (``"<ExceptionType>: <message>"``).
HEADER_REASON = "dramatiq-failure"
#: Header of a failed-message record: the queue it failed on.
HEADER_QUEUE = "dramatiq-queue"
#: Header of a failed-message record: where it was consumed from (``topic:partition:offset``).
HEADER_ORIGIN = "dramatiq-origin"
#: Most bytes of the reason kept in its header.
_MAX_REASON = 8192

#: Failed messages by position: per partition of a failed-message topic, the offsets ``(first, end)``,
#: ``first`` included and ``end`` not.
FailedRanges = dict[int, tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class FailedMessage:
    """A record of a failed-message (``.XQ``) topic.

    Attributes:
      partition(int): Its partition in the failed-message topic.
      offset(int): Its offset in that partition.
      timestamp(int): When it failed, in milliseconds since the epoch.
      reason(str): Why it failed (the exception Dramatiq stuffed into the message, or why it could not be
        decoded).
      message(Message | None): The Dramatiq message, or ``None`` when the record was not a Dramatiq message.
      raw(bytes): The record's value as it was consumed.
    """

    partition: int
    offset: int
    timestamp: int
    reason: str
    message: Message[Any] | None
    raw: bytes

    @classmethod
    def from_record(cls, record: Any) -> FailedMessage:
        """From a consumed kafka-python record."""
        headers = dict(record.headers or [])
        reason = headers.get(HEADER_REASON, b"").decode("utf-8", "replace")
        try:
            message: Message[Any] | None = Message.decode(record.value)
        except DecodeError:
            message = None
        return cls(record.partition, record.offset, record.timestamp, reason, message, record.value)


def failure_reason(exception: BaseException | None) -> str:
    """The reason recorded for a message that failed with ``exception``."""
    return f"{type(exception).__name__}: {exception}" if exception is not None else "failed"


def failure_headers(queue_name: str, reason: str, origin: str) -> list[tuple[str, bytes]]:
    """The headers of a failed-message record."""
    return [
        (HEADER_REASON, reason.encode("utf-8", "replace")[:_MAX_REASON]),
        (HEADER_QUEUE, queue_name.encode("utf-8")),
        (HEADER_ORIGIN, origin.encode("utf-8")),
    ]



def check_ranges(held: Mapping[int, tuple[int, int]], seen: Mapping[int, tuple[int, int]]) -> None:
    """Raise unless ``seen`` (the ranges an operator saw) can be acted on as they are now ``held`` by the
    topic: each non-empty range starting at its partition's first message (Kafka deletes records only up to
    an offset) and ending at most at its end.

    Raises:
      FailedMessagesChanged: If a range starts before its partition's first message: messages seen were
        removed since (replayed, purged or expired).
      UnknownFailedMessages: If a range names a partition the topic lacks, ends beyond its partition's end,
        starts after its first message, or ends before it starts.
    """
    for partition, (first, end) in sorted(seen.items()):
        if partition not in held:
            raise UnknownFailedMessages(f"the failed-message topic has no partition {partition}")
        held_first, held_end = held[partition]
        if not 0 <= first <= end or end > held_end:
            raise UnknownFailedMessages(
                f"partition {partition} holds offsets {held_first} to {held_end}, not {first} to {end}"
            )
        if first == end:
            continue  # nothing seen there, nothing to act on
        if first < held_first:
            raise FailedMessagesChanged(
                f"partition {partition} now starts at offset {held_first}, not {first}: failed messages were "
                "replayed, purged or expired since they were listed"
            )
        if first > held_first:
            raise UnknownFailedMessages(
                f"partition {partition} starts at offset {held_first}: a range from {first} leaves earlier "
                "messages that only it could remove"
            )
