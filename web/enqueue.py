"""The only place the web process sends messages.

Messages are built by actor *name* (``dramatiq.Message``), so the web never imports the actors (nor
builds the worker's broker).  The queue, the names and the payloads are :mod:`pipeline.contract`, which
``pipeline/actors.py`` declares its actors from:

* ``process_user({"id", "data"})`` — one submission;
* ``process_users({"batch_id", "source", "records": [{"id", "row", "data", "errors"}]})`` — one chunk;
* ``register_batch(batch_id, count, source)`` — sent after every chunk of the batch is durable.

``broker.enqueue`` returns once Kafka has acknowledged the message, so it blocks: callers on the event
loop use :meth:`Enqueuer.send_async`, which awaits it in a thread pool, for a bounded time.  Broker
failures (Dramatiq's ``BrokerError`` tree, a bare ``ConnectionError``/``TimeoutError``, no answer in time)
become ``QueueUnavailable`` (503 with ``Retry-After``); anything else is a bug and propagates.  A Kafka that
answers but lacks what the app needs (``KafkaSetupError``: a topic the app may not create, a right it lacks)
is one too, and its message, which says what an operator must do, is the 503's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
from dramatiq.errors import BrokerError

from pipeline.brokers.kafka import KafkaSetupError
from pipeline.contract import (
    PROCESS_USER,
    PROCESS_USERS,
    QUEUE,
    REGISTER_BATCH,
    BatchRecord,
    ChunkPayload,
    SubmissionPayload,
)
from web.errors import QueueUnavailable
from web.metrics import Metrics

logger = logging.getLogger(__name__)

#: Errors of a broker that mean "the queue cannot take it now", not "our bug" (``TimeoutError`` is also
#: what waiting on a future past its deadline raises).
_UNAVAILABLE = (BrokerError, ConnectionError, TimeoutError)
#: Threads making broker calls, per application.
DEFAULT_MAX_THREADS = 32
_SINGLE_FAILURE = "the queue cannot take the submission right now; retry later"
_BATCH_FAILURE = (
    "the queue stopped taking the batch midway; retry the whole batch "
    "(records already accepted are processed, and stored users are deduplicated)"
)


def _message(actor_name: str, *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})


def submission_message(submission_id: str, data: dict[str, Any]) -> dramatiq.Message[Any]:
    """``process_user`` for one submission."""
    payload: SubmissionPayload = {"id": submission_id, "data": data}
    return _message(PROCESS_USER, payload)


def chunk_message(batch_id: str, source: str, records: list[BatchRecord]) -> dramatiq.Message[Any]:
    """``process_users`` for one chunk of a batch; ``source`` is ``json``, ``ndjson`` or ``csv``."""
    payload: ChunkPayload = {"batch_id": batch_id, "source": source, "records": records}
    return _message(PROCESS_USERS, payload)


def register_batch_message(batch_id: str, count: int, source: str) -> dramatiq.Message[Any]:
    """``register_batch`` once every chunk of a batch is durable (``source`` is stored with the batch)."""
    return _message(REGISTER_BATCH, batch_id, count, source)


class Enqueuer:
    """Sends messages on a broker and turns its failures into ``QueueUnavailable``.

    Every broker call runs in the Enqueuer's own thread pool and is waited for at most ``timeout`` seconds:
    a broker that hangs (Kafka unreachable while a client bootstraps) is answered 503 in bounded time
    rather than holding the request.  A call given up on keeps running in its thread and may still
    deliver; that is safe, since only a ``202`` promises anything, and at most ``max_threads`` such calls
    hold threads (later ones wait in the pool's queue, and time out too).

    Parameters:
      broker(dramatiq.Broker): Where to send (the Kafka broker in production, a StubBroker in unit tests).
        If it has ``enqueue_many(messages)`` (returns once all are acknowledged) it is used for groups.
      retry_after(int): Seconds to put in ``Retry-After`` when the broker fails.
      timeout(float): Seconds to wait for one broker call (a group of chunks is one call).
      metrics(Metrics): Counts the failures.
      max_threads(int): Threads of the pool that makes the broker calls.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        retry_after: int,
        timeout: float,
        metrics: Metrics | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self.broker = broker
        self.retry_after = retry_after
        self.timeout = timeout
        self.metrics = metrics
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def _executor(self) -> ThreadPoolExecutor:
        # Created on first use, and again after close(): an app may live through several lifespans (tests).
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._max_threads, thread_name_prefix="enqueue")
            return self._pool

    def close(self) -> None:
        """Stop the thread pool (calls in progress finish in the background); the next send starts another."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _unavailable(self, kind: str, exc: BaseException, message: str) -> QueueUnavailable:
        reason = (
            f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError) and not str(exc) else exc
        )
        logger.warning("enqueue of %s failed: %s: %s", kind, type(exc).__name__, reason)
        if self.metrics is not None:
            self.metrics.enqueue_failures.labels(kind).inc()
        if isinstance(exc, KafkaSetupError):
            # Retrying will not help until an operator acts (makes a topic, grants a right): say what to do.
            message = f"{message.split(';')[0]}: {exc}"
        return QueueUnavailable(message, retry_after=self.retry_after)

    def _enqueue_all(self, messages: list[dramatiq.Message[Any]]) -> None:
        enqueue_many = getattr(self.broker, "enqueue_many", None)
        if enqueue_many is not None and len(messages) > 1:
            enqueue_many(messages)
        else:
            for message in messages:
                self.broker.enqueue(message)

    def send(self, message: dramatiq.Message[Any]) -> None:
        """Enqueue one message and wait for the acknowledgement (blocking)."""
        try:
            self._executor.submit(self.broker.enqueue, message).result(timeout=self.timeout)
        except _UNAVAILABLE as exc:
            raise self._unavailable(message.actor_name, exc, _SINGLE_FAILURE) from None

    def send_many(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Enqueue several messages and wait until all are acknowledged (blocking)."""
        if not messages:
            return
        try:
            self._executor.submit(self._enqueue_all, list(messages)).result(timeout=self.timeout)
        except _UNAVAILABLE as exc:
            raise self._unavailable(messages[0].actor_name, exc, _BATCH_FAILURE) from None

    async def send_async(self, message: dramatiq.Message[Any]) -> None:
        """:meth:`send` for handlers on the event loop: one hop to the pool, awaited without blocking."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.broker.enqueue, message), self.timeout
            )
        except _UNAVAILABLE as exc:
            raise self._unavailable(message.actor_name, exc, _SINGLE_FAILURE) from None
