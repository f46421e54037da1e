"""The only place the web process sends messages.

Messages are built by actor *name* (``dramatiq.Message``), so the web never imports the actors and does
not depend on the order in which ``pipeline`` declares them.  The names and payloads are the contract
with ``pipeline/actors.py``:

* ``process_user({"id", "data"})`` — one submission;
* ``process_users({"batch_id", "source", "records": [{"id", "row", "data", "errors"}]})`` — one chunk;
* ``register_batch(batch_id, count, source)`` — sent after every chunk of the batch is durable.

``broker.enqueue`` returns once Kafka has acknowledged the message, so it blocks: callers on the event
loop use :meth:`Enqueuer.send_async`, which runs it in the thread pool.  Broker failures (Dramatiq's
``BrokerError`` tree, or a bare ``ConnectionError``/``TimeoutError``) become ``QueueUnavailable`` (503 with
``Retry-After``); anything else is a bug and propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.errors import BrokerError
from starlette.concurrency import run_in_threadpool

from web.errors import QueueUnavailable
from web.metrics import Metrics

logger = logging.getLogger(__name__)

#: The queue every message of the user pipeline goes to.
QUEUE_NAME = "users"
PROCESS_USER = "process_user"
PROCESS_USERS = "process_users"
REGISTER_BATCH = "register_batch"

#: Errors of a broker that mean "the queue cannot take it now", not "our bug".
_UNAVAILABLE = (BrokerError, ConnectionError, TimeoutError)


def _message(actor_name: str, *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=QUEUE_NAME, actor_name=actor_name, args=args, kwargs={}, options={})


def submission_message(submission_id: str, data: dict[str, Any]) -> dramatiq.Message[Any]:
    """``process_user`` for one submission."""
    return _message(PROCESS_USER, {"id": submission_id, "data": data})


def chunk_message(batch_id: str, source: str, records: list[dict[str, Any]]) -> dramatiq.Message[Any]:
    """``process_users`` for one chunk of a batch; ``source`` is ``json``, ``ndjson`` or ``csv``."""
    return _message(PROCESS_USERS, {"batch_id": batch_id, "source": source, "records": records})


def register_batch_message(batch_id: str, count: int, source: str) -> dramatiq.Message[Any]:
    """``register_batch`` once every chunk of a batch is durable (``source`` is stored with the batch)."""
    return _message(REGISTER_BATCH, batch_id, count, source)


class Enqueuer:
    """Sends messages on a broker and turns its failures into ``QueueUnavailable``.

    Parameters:
      broker(dramatiq.Broker): Where to send (the Kafka broker in production, a StubBroker in unit tests).
        If it has ``enqueue_many(messages)`` (returns once all are acknowledged) it is used for groups.
      retry_after(int): Seconds to put in ``Retry-After`` when the broker fails.
      metrics(Metrics): Counts the failures.
    """

    def __init__(self, broker: dramatiq.Broker, *, retry_after: int, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.retry_after = retry_after
        self.metrics = metrics

    def _unavailable(self, kind: str, exc: BaseException, message: str) -> QueueUnavailable:
        logger.warning("enqueue of %s failed: %s: %s", kind, type(exc).__name__, exc)
        if self.metrics is not None:
            self.metrics.enqueue_failures.labels(kind).inc()
        return QueueUnavailable(message, retry_after=self.retry_after)

    def send(self, message: dramatiq.Message[Any]) -> None:
        """Enqueue one message and wait for the acknowledgement (blocking)."""
        try:
            self.broker.enqueue(message)
        except _UNAVAILABLE as exc:
            raise self._unavailable(
                message.actor_name, exc, "the queue cannot take the submission right now; retry later"
            ) from None

    def send_many(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Enqueue several messages and wait until all are acknowledged (blocking)."""
        if not messages:
            return
        enqueue_many = getattr(self.broker, "enqueue_many", None)
        try:
            if enqueue_many is not None:
                enqueue_many(list(messages))
            else:
                for message in messages:
                    self.broker.enqueue(message)
        except _UNAVAILABLE as exc:
            raise self._unavailable(
                messages[0].actor_name,
                exc,
                "the queue stopped taking the batch midway; retry the whole batch "
                "(records already accepted are processed, and stored users are deduplicated)",
            ) from None

    async def send_async(self, message: dramatiq.Message[Any]) -> None:
        """:meth:`send` in the thread pool, for handlers on the event loop."""
        await run_in_threadpool(self.send, message)
