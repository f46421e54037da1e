"""Failed messages: how they are written to a queue's ``.XQ`` topic, and what reading one gives back."""

from __future__ import annotations

import dataclasses
from typing import Any

from dramatiq.errors import DecodeError
from dramatiq.message import Message

#: Header of a failed-message record: why it failed (``"<ExceptionType>: <message>"``).
HEADER_REASON = "dramatiq-failure"
#: Header of a failed-message record: the queue it failed on.
HEADER_QUEUE = "dramatiq-queue"
#: Header of a failed-message record: where it was consumed from (``topic:partition:offset``).
HEADER_ORIGIN = "dramatiq-origin"
#: Most bytes of the reason kept in its header.
_MAX_REASON = 8192


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
