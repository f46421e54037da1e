"""Middleware that makes Dramatiq's hand-offs durable on Kafka: :class:`DurablePipelines` and
:class:`DurableRetries`, drop-in replacements for Dramatiq's ``Pipelines`` and ``Retries``.

Use them in place of Dramatiq's own with :class:`~dramatiq_kafka_broker.KafkaBroker`::

    broker = KafkaBroker(middleware=[..., DurablePipelines(), DurableRetries(max_retries=5), ...])
"""

from __future__ import annotations

import contextlib
from typing import Any

import dramatiq
from dramatiq.errors import BrokerConnectionError
from dramatiq.logging import get_logger
from dramatiq.middleware import Pipelines, Retries

from .errors import RecordTooLarge

_logger = get_logger(__name__)


class _FailWhenHandOffFails:
    """Fails a message whose after-processing hand-off (next pipeline stage, retry) could not be enqueued;
    waits for Kafka instead when Kafka is what could not be reached.

    Dramatiq logs and swallows errors of ``after_process_message`` hooks, so such a message would be acked
    with its next stage or its retry never enqueued: an accepted submission lost.  Failed instead, it is
    nacked onto the failed-message topic (where it can be replayed) and its ``on_retry_exhausted`` callback
    is told, as if its retries had run out.

    Kafka being unreachable -- a ``BrokerConnectionError`` raised by the hand-off, or by the actor itself
    (``process_user`` enqueues its pipeline) -- is no fault of the message: retrying it spends, within
    seconds, the retries that exist for bad data and a broken database, then fails a message that would have
    succeeded.  So it spends no retry and fails nothing: the message is left un-acked, its consumer makes
    way for a new one, and that one delivers the message again once Kafka answers (the worker's consumer
    thread waits for Kafka between attempts).  A record Kafka refuses as too large is refused every time:
    that message fails.  A broker that cannot redeliver a message so (``StubBroker``) keeps the behaviour
    above.
    """

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        failed_before = message.failed
        if _kafka_away(exception) and not failed_before and _redeliver_later(message):
            return
        try:
            super().after_process_message(  # type: ignore[misc]
                broker, message, result=result, exception=exception
            )
        except BrokerConnectionError as error:
            if _kafka_away(error) and not failed_before and _redeliver_later(message):
                # Whatever the hook had decided (Retries may have failed the message before its
                # on_retry_exhausted could be sent) is decided again when the message runs again.
                message.failed = False
                _logger.warning("%s waits for Kafka, un-acked: %s", message, error)
                return
            self._fail(broker, message, error, failed_before)
            raise
        except Exception as error:
            self._fail(broker, message, error, failed_before)
            raise

    @staticmethod
    def _fail(broker: dramatiq.Broker, message: Any, error: Exception, already_failed: bool) -> None:
        message.stuff_exception(error)
        message.fail()
        callback = message.options.get("on_retry_exhausted") or broker.get_actor(
            message.actor_name
        ).options.get("on_retry_exhausted")
        if callback and not already_failed:
            data = message.asdict()
            data["options"] = {**data["options"], "traceback": f"{type(error).__name__}: {error}"}
            # Best effort: Kafka may be what failed; the failed topic keeps the message anyway.
            with contextlib.suppress(Exception):
                broker.get_actor(callback).send(data, {"retries": None, "max_retries": None})


def _kafka_away(error: BaseException | None) -> bool:
    """Whether ``error`` says Kafka could not be reached (or acknowledge in time): a pause, not a fault.

    Not a record Kafka refuses as too large, which it refuses every time: that message fails.
    """
    return isinstance(error, BrokerConnectionError) and not isinstance(error, RecordTooLarge)


def _redeliver_later(message: Any) -> bool:
    """Leave ``message`` un-acked, to be delivered again once Kafka answers; False when its broker cannot."""
    # (a Dramatiq MessageProxy hands unknown attributes to its Message, which has none of this name)
    redeliver = getattr(message, "redeliver_later", None)
    if redeliver is None:
        return False
    redeliver()
    return True


class DurablePipelines(_FailWhenHandOffFails, Pipelines):
    """Dramatiq's ``Pipelines``; a next stage that cannot be enqueued fails the message."""


class DurableRetries(_FailWhenHandOffFails, Retries):
    """Dramatiq's ``Retries``; a retry that cannot be enqueued fails the message."""
