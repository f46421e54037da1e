"""The only place the web process sends messages.

Messages are built by actor *name* (``dramatiq.Message``), so the web never imports the actors (nor
builds the worker's broker).  The queue, the names and the payloads are :mod:`pipeline.contract`, which
``pipeline/actors.py`` declares its actors from:

* ``validate_users([{"id", "row": None, "data", "errors": []}, ...], None, "json")`` piped into
  ``persist_users`` — the submissions of ``POST /api/user`` (:func:`singles_message`);
* ``validate_users([{"id", "row", "data", "errors"}, ...], batch_id, source)`` piped into ``persist_users``
  — one chunk of a batch (:func:`chunk_message`);
* ``register_batch(batch_id, count, source)`` — sent after every chunk of the batch is durable.

Both go straight to the first stage of the worker's pipeline (two Kafka trips to a row, not three
through ``process_user``/``process_users``), and the single posts that arrive together travel as one
message, the way Kafka's producer lingers (:class:`~web.group_commit.GroupCommit`): under no load a post
is sent at once; while a send is in flight, the posts that come wait for it to end, at most the linger,
then go together.

``broker.enqueue`` returns once Kafka has acknowledged the message, so it blocks: callers on the event
loop use :meth:`Enqueuer.send_async` (or :meth:`Enqueuer.send_single`), which awaits it in a thread pool,
for a bounded time.  Broker failures (Dramatiq's ``BrokerError`` tree, a bare ``ConnectionError``/
``TimeoutError``, no answer in time) become ``QueueUnavailable`` (503 with ``Retry-After``; for every post
of a failed message); anything else is a bug and propagates.  A Kafka that answers but lacks what the app
needs (``KafkaSetupError``: a topic the app may not create, a right it lacks) is one too, and its message,
which says what an operator must do, is the 503's.
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

from dramatiq_kafka_broker import KafkaSetupError
from pipeline.contract import (
    PERSIST_USERS,
    QUEUE,
    REGISTER_BATCH,
    SINGLE_SOURCE,
    VALIDATE_USERS,
    BatchRecord,
)
from web.broker_features import BatchBroker
from web.errors import QueueUnavailable
from web.group_commit import GroupCommit
from web.metrics import Metrics

logger = logging.getLogger(__name__)

#: Errors of a broker that mean "the queue cannot take it now", not "our bug" (``TimeoutError`` is also
#: what waiting on a future past its deadline raises).
_UNAVAILABLE = (BrokerError, ConnectionError, TimeoutError)
#: Threads making broker calls, per application.
DEFAULT_MAX_THREADS = 32
#: Longest wait of a single post for others to share its message, in milliseconds (``SINGLE_LINGER_MS``).
DEFAULT_LINGER_MS = 5
#: Most single posts in one message (``SINGLE_MAX_RECORDS``).
DEFAULT_MAX_RECORDS = 100
#: Most bytes of request bodies in one message of single posts.  Kafka takes a record of at most 1 MiB
#: (``max_request_size``) and a body may grow up to 3x when re-encoded (``\u`` escapes): a post larger than
#: this travels alone, in a message of its own.
DEFAULT_MAX_GROUP_BYTES = 256 * 1024
_SINGLE_FAILURE = "the queue cannot take the submission right now; retry later"
_BATCH_FAILURE = (
    "the queue stopped taking the batch midway; retry the whole batch "
    "(records already accepted are processed, and stored users are deduplicated)"
)


def _message(actor_name: str, *args: Any, options: dict[str, Any] | None = None) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options=options or {}
    )


def single_record(submission_id: str, data: dict[str, Any]) -> BatchRecord:
    """The record of one ``POST /api/user`` submission, as ``validate_users`` takes it."""
    return {"id": submission_id, "row": None, "data": data, "errors": []}


def pipeline_message(records: list[BatchRecord], batch_id: str | None, source: str) -> dramatiq.Message[Any]:
    """``validate_users(records, batch_id, source)`` piped into ``persist_users``: the first stage of the
    worker's pipeline, its ``pipe_target`` the next as ``dramatiq.pipeline`` builds it (the worker's
    ``Pipelines`` middleware sends that one with the validation's result)."""
    persist = _message(PERSIST_USERS)
    return _message(VALIDATE_USERS, records, batch_id, source, options={"pipe_target": persist.asdict()})


def singles_message(records: list[BatchRecord]) -> dramatiq.Message[Any]:
    """The pipeline message of one or several ``POST /api/user`` submissions (:func:`single_record`)."""
    return pipeline_message(records, None, SINGLE_SOURCE)


def chunk_message(batch_id: str, source: str, records: list[BatchRecord]) -> dramatiq.Message[Any]:
    """The pipeline message of one chunk of a batch; ``source`` is ``json``, ``ndjson`` or ``csv``."""
    return pipeline_message(records, batch_id, source)


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
        A :class:`~web.broker_features.BatchBroker` (KafkaBroker) is given groups with one wait.
      retry_after(int): Seconds to put in ``Retry-After`` when the broker fails.
      timeout(float): Seconds to wait for one broker call (a group of chunks is one call).
      metrics(Metrics): Counts the failures.
      max_threads(int): Threads of the pool that makes the broker calls.
      linger_ms(int): Longest wait of a single post for others to share its message, in milliseconds
        (:class:`~web.group_commit.GroupCommit`); 0 sends each post as a message of its own.
      max_records(int): Most single posts in one message.
      max_group_bytes(int): Most bytes of bodies in one message of single posts.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        retry_after: int,
        timeout: float,
        metrics: Metrics | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
        linger_ms: int = DEFAULT_LINGER_MS,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_group_bytes: int = DEFAULT_MAX_GROUP_BYTES,
    ) -> None:
        self.broker = broker
        self.retry_after = retry_after
        self.timeout = timeout
        self.metrics = metrics
        self.linger_ms = linger_ms
        self.max_records = max_records
        self.max_group_bytes = max_group_bytes
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._coalescer: GroupCommit[BatchRecord] | None = None

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
        if isinstance(self.broker, BatchBroker) and len(messages) > 1:
            self.broker.enqueue_many(messages)
        else:
            for message in messages:
                self.broker.enqueue(message)

    def send_many(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Enqueue several messages and wait until all are acknowledged (blocking)."""
        if not messages:
            return
        try:
            self._executor.submit(self._enqueue_all, list(messages)).result(timeout=self.timeout)
        except _UNAVAILABLE as exc:
            raise self._unavailable(messages[0].actor_name, exc, _BATCH_FAILURE) from None

    async def send_async(self, message: dramatiq.Message[Any]) -> None:
        """Enqueue one message and wait for the acknowledgement: one hop to the pool, awaited without
        blocking the event loop."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.broker.enqueue, message), self.timeout
            )
        except _UNAVAILABLE as exc:
            raise self._unavailable(message.actor_name, exc, _SINGLE_FAILURE) from None

    @property
    def waiting_singles(self) -> int:
        """Single posts waiting to share a message (0 when coalescing is off or has not started)."""
        return self._coalescer.waiting if self._coalescer is not None else 0

    async def send_records(self, records: list[BatchRecord]) -> None:
        """Send single posts' records as one message (:func:`singles_message`) and await its durability."""
        await self.send_async(singles_message(records))

    async def send_single(self, record: BatchRecord, *, size: int) -> None:
        """Send one post's record (of a body of ``size`` bytes), with the posts that arrive with it unless
        ``linger_ms`` is 0; return once the message carrying it is durable, or raise ``QueueUnavailable``."""
        if self.linger_ms <= 0:
            await self.send_records([record])
            return
        loop = asyncio.get_running_loop()
        coalescer = self._coalescer
        if coalescer is None or coalescer.loop is not loop:  # one per event loop (an app may see several)
            coalescer = self._coalescer = GroupCommit(
                self.send_records,
                linger=self.linger_ms / 1000,
                max_records=self.max_records,
                max_bytes=self.max_group_bytes,
            )
        await coalescer.submit(record, size=size)
