"""What the web asks of its broker beyond Dramatiq's ``Broker``: Kafka's figures and health, and sending a
group of messages with one wait.

``KafkaBroker`` has both: its ``admin`` (:class:`~dramatiq_kafka_broker.KafkaAdmin`) and its
``enqueue_many``.  Other brokers (Dramatiq's ``StubBroker`` in the unit tests) have neither; for them
:func:`operations_of` gives operations that answer "not known" (figures are None, failed-message operations
raise :class:`Unknown`), and the Enqueuer sends one message at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
import dramatiq

from dramatiq_kafka_broker import FailedMessage, FailedRanges
from web.errors import KafkaUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Unknown(Exception):
    """The broker cannot tell: it has no Kafka operations (``/readyz`` then says ``"unknown"``)."""


class BrokerOperations(Protocol):
    """What the web asks of a broker's operations (``KafkaBroker.admin``); a figure is None when not known."""

    def ping(self) -> None:
        """Raise unless Kafka answers and every declared queue has its topics.

        Raises:
          Unknown: If the broker cannot tell.
        """

    def lag(self, queue_name: str) -> dict[int, int] | None:
        """Messages of a queue (or ``.DQ``) not yet acked by its consumer group, per partition."""

    def failed_count(self, queue_name: str) -> int | None:
        """How many failed messages the queue's failed-message topic holds."""

    def under_replicated(self, queue_name: str) -> dict[str, int] | None:
        """For each of the queue's topics, how many partitions have fewer in-sync replicas than replicas."""

    # Failed messages (``web/failed.py``): a broker without them raises Unknown.
    def failed_ranges(self, queue_name: str) -> FailedRanges:
        """Per partition of the failed-message topic, the offsets ``(first, end)`` it holds now."""

    def failed_messages(
        self, queue_name: str, *, limit: int | None = None, within: FailedRanges | None = None
    ) -> Iterator[FailedMessage]:
        """The failed messages, oldest first per partition, kept to ``within``."""

    def replay_failed(
        self, queue_name: str, *, limit: int | None = None, within: FailedRanges | None = None
    ) -> tuple[int, int]:
        """Put the failed messages of ``within`` back on their queue; (replayed, left)."""

    def purge_failed(self, queue_name: str, *, within: FailedRanges | None = None) -> int:
        """Delete the failed messages of ``within``; how many."""


class _NoOperations:
    """The operations of a broker that has none: no figure is known, and ``ping`` cannot tell."""

    def ping(self) -> None:
        raise Unknown("this broker cannot be inspected")

    def lag(self, queue_name: str) -> None:
        return None

    def failed_count(self, queue_name: str) -> None:
        return None

    def under_replicated(self, queue_name: str) -> None:
        return None

    def failed_ranges(self, queue_name: str) -> FailedRanges:
        raise Unknown("this broker keeps no failed-message topic")

    def failed_messages(self, queue_name: str, **bounds: Any) -> Iterator[FailedMessage]:
        raise Unknown("this broker keeps no failed-message topic")

    def replay_failed(self, queue_name: str, **bounds: Any) -> tuple[int, int]:
        raise Unknown("this broker keeps no failed-message topic")

    def purge_failed(self, queue_name: str, **bounds: Any) -> int:
        raise Unknown("this broker keeps no failed-message topic")


_NO_OPERATIONS = _NoOperations()


def operations_of(broker: dramatiq.Broker) -> BrokerOperations:
    """The broker's operations: a KafkaBroker's ``admin``, or, for a broker that has none, operations that
    answer "not known"."""
    admin: BrokerOperations | None = getattr(broker, "admin", None)
    return _NO_OPERATIONS if admin is None else admin


@runtime_checkable
class BatchBroker(Protocol):
    """A broker that enqueues a group of messages with one wait for Kafka's acknowledgements (KafkaBroker)."""

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> list[dramatiq.Message[Any]]:
        """Enqueue the messages and return once all of them are acknowledged."""


async def ask_kafka(
    call: Callable[[], T],
    *,
    what: str,
    timeout: float | None,
    retry_after: int,
    passing: tuple[type[BaseException], ...] = (),
) -> T:
    """Run ``call`` (blocking calls of the broker's operations) in the thread pool, within ``timeout``
    seconds (``None``: no limit, for a call that changes something and must not be left midway).

    Raises:
      KafkaUnavailable: 503 ``kafka_unavailable`` when Kafka does not answer in time or the call fails
        (logged as on ``what``); exceptions of ``passing`` go through as they are.
    """
    try:
        if timeout is None:
            return await anyio.to_thread.run_sync(call)
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except passing:
        raise
    except TimeoutError:
        logger.warning("%s: Kafka did not answer within %s s", what, timeout)
        raise KafkaUnavailable("Kafka did not answer in time", retry_after=retry_after) from None
    except Exception as exc:  # whatever the client library raises, the operator needs "Kafka is down"
        logger.warning("%s: cannot reach Kafka: %s: %s", what, type(exc).__name__, exc)
        raise KafkaUnavailable(f"cannot reach Kafka: {type(exc).__name__}", retry_after=retry_after) from None
