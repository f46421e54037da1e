"""The broker's errors, on top of Dramatiq's own tree::

    DramatiqError
     +-- BrokerError
     |    +-- ConnectionError (``BrokerConnectionError``)
     |         +-- KafkaConnectionError      Kafka unreachable, or no acknowledgement in time
     |              +-- RecordTooLarge       Kafka refused a record as too large: sending it again cannot help
     |              +-- KafkaSetupError      Kafka answers, but an operator must act (the message says how)
     |                   +-- MissingTopics   a queue's topics missing, and not ours to create (.topics)
     |                   +-- MissingRight    Kafka refused an operation: the app lacks a right (an ACL)
     +-- MessageFailed                       ``join(fail_fast=True)``: a message failed in another process
     +-- FailedMessagesChanged               the failed messages seen are no longer the topic's first
     +-- UnknownFailedMessages (ValueError)  offsets of failed messages the topic never held

kafka-python's errors are translated into these once, where a client is called.
"""

from __future__ import annotations

from dramatiq.errors import BrokerConnectionError, DramatiqError


class KafkaConnectionError(BrokerConnectionError):
    """Kafka could not be reached, or did not acknowledge a request in time."""


class RecordTooLarge(KafkaConnectionError):
    """The producer or Kafka refused a record as larger than it takes.

    A connection error for the callers that answer one with a 503, but no outage: the same record is refused
    every time, so a worker fails its message instead of waiting for Kafka with it."""


class KafkaSetupError(KafkaConnectionError):
    """Kafka answers, but lacks what this app needs (topics, rights): an operator must act, and the message
    says what to do.  A connection error still (the web answers 503, a worker waits): once the operator
    has acted, the same call succeeds."""


class MissingRight(KafkaSetupError):
    """Kafka refused an operation for want of a right (an ACL); the message names the right and resource."""


class MessageFailed(DramatiqError):
    """Raised by ``join(..., fail_fast=True)`` when a message of the queue failed in another process.

    A failure in the joining process re-raises the actor's own exception instead, as ``StubBroker.join``
    does; from another process only its type name and message are known, and are carried here.

    Attributes:
      exception_type(str): The name of the exception's type (``"ValueError"``), or ``""`` when unknown.
      reason(str): The exception's message.
    """

    def __init__(self, exception_type: str, reason: str) -> None:
        super().__init__(f"{exception_type}: {reason}" if exception_type else reason)
        self.exception_type = exception_type
        self.reason = reason

    @classmethod
    def from_reason(cls, reason: str) -> MessageFailed:
        """From a failed-message record's reason header (``"<Type>: <message>"``)."""
        head, sep, tail = reason.partition(": ")
        if sep and head.isidentifier():
            return cls(head, tail)
        return cls("", reason)


class FailedMessagesChanged(DramatiqError):
    """The failed messages an operation was bounded to (those an operator saw) no longer start where their
    topic does: some were removed since (replayed, purged or expired), and acting would act on others."""


class UnknownFailedMessages(DramatiqError, ValueError):
    """Bounds of failed messages that the topic does not hold: a partition it lacks, offsets beyond its end,
    or a range that does not start at a partition's first message (Kafka deletes records only from there)."""
