"""A Dramatiq broker on Apache Kafka, built on kafka-python.

This module is the only one in the project that imports kafka-python, and it knows nothing about users.

Topics (``prefix`` is the broker's ``topic_prefix``)::

    <prefix><queue>        the queue: one topic, ``partitions`` partitions
    <prefix><queue>.DQ     its delay queue (Dramatiq's ``dq_name``): messages with an ``eta``
    <prefix><queue>.XQ     its failed messages (Dramatiq's ``xq_name``), with the failure reason in headers

Consumers join one consumer group per topic (``<prefix><group_id>.<topic>``), so that any number of worker
processes on any number of hosts share a queue's partitions.

Delivery is at least once:

* ``enqueue`` returns only once Kafka has acknowledged the record (``acks=all``, idempotent producer).
* Offsets are committed per partition up to the lowest offset that has not been acked yet; workers ack out
  of order, so the consumer tracks every offset it handed out.  Offsets acked *above* that commit point are
  written into the commit's metadata string, so that after a restart or a rebalance the next owner of the
  partition skips them instead of running them again.  What a ``kill -9`` can redeliver is therefore bounded
  by the messages in flight plus those acked during the last ``commit_interval_ms``.

Errors raised by kafka-python are translated once, here, into :class:`KafkaConnectionError` (a Dramatiq
``BrokerConnectionError``), which the worker and the web service already know how to handle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from queue import Empty, SimpleQueue
from typing import Any

import dramatiq
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import BrokerConnectionError, DecodeError, DramatiqError, QueueJoinTimeout, QueueNotFound
from dramatiq.logging import get_logger
from dramatiq.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
)
from kafka.structs import OffsetAndMetadata

#: Partitions of each topic the broker creates.
DEFAULT_PARTITIONS = 6
#: Replication factor of each topic the broker creates.
DEFAULT_REPLICATION_FACTOR = 1
#: How long ``enqueue`` waits for Kafka's acknowledgement before it raises, in milliseconds: longer than a
#: Kafka cluster takes to move the partitions of a crashed node (its ``broker.session.timeout.ms``, 9 s,
#: then an election and a metadata refresh: 9 to 14 s measured here), so that losing one node of several
#: delays writes but fails none.
DEFAULT_SEND_TIMEOUT_MS = 20_000
#: Most time between two offset commits of a busy consumer, in milliseconds.
DEFAULT_COMMIT_INTERVAL_MS = 100
#: Retention of the failed-message topics, in milliseconds (14 days).
DEFAULT_DEAD_LETTER_RETENTION_MS = 14 * 24 * 3600 * 1000
#: Time after which a silent consumer is dropped from its group, in milliseconds.
DEFAULT_SESSION_TIMEOUT_MS = 10_000
#: Attempts of an admin call that fails because a group coordinator or a partition leader is on the move
#: (:data:`_MOVING`), and the pause before the second one, in seconds (it grows with each attempt).
ADMIN_ATTEMPTS = 3
ADMIN_RETRY_BACKOFF_S = 0.5
#: The errors of a node that is not (or not yet) the one in charge: asking again, after a fresh metadata
#: lookup, reaches the one that is.
_MOVING = (
    NotCoordinatorError,
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotLeaderForPartitionError,
    LeaderNotAvailableError,
)
#: Longest slice of a single ``poll``, in milliseconds, so that acks are committed while idle.
_POLL_SLICE_MS = 50
#: Longest a consumer may spend rejoining its group before it is replaced by a new one, in seconds.
_REJOIN_PATIENCE_S = 3 * DEFAULT_SESSION_TIMEOUT_MS / 1000
#: Kafka's default limit for the metadata string of an offset commit (``offset.metadata.max.bytes``).
_MAX_COMMIT_METADATA = 4000

#: Headers written on failed-message records.
HEADER_REASON = "dramatiq-failure"
HEADER_QUEUE = "dramatiq-queue"
HEADER_ORIGIN = "dramatiq-origin"

_TOPIC_ALREADY_EXISTS = 36


class KafkaConnectionError(BrokerConnectionError):
    """Kafka could not be reached, or did not acknowledge a request in time."""


class MessageFailed(DramatiqError):
    """Raised by ``join(..., fail_fast=True)`` when a message of the queue failed during the join."""


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


class KafkaBroker(Broker):
    """A Dramatiq broker that carries messages on Apache Kafka.

    Parameters:
      bootstrap_servers(str | list[str]): Kafka's ``host:port`` addresses.
      middleware(list[Middleware]): The middleware to add to this broker (Dramatiq's defaults when None).
      topic_prefix(str): Put in front of every topic and consumer group name.
      group_id(str): Base name of the consumer groups; one group per topic is derived from it.
      client_id(str): Reported to Kafka by every client.
      partitions(int): Partitions of the topics this broker creates.  Existing topics are used as they are.
      replication_factor(int): Replication factor of the topics this broker creates.
      min_insync_replicas(int | None): ``min.insync.replicas`` of the topics this broker creates: how many
        replicas must have a message before Kafka acknowledges it (the producer uses ``acks=all``). None
        means 2 when the replication factor is 3 or more (one node may go, and nothing acknowledged is on one
        node only), else the Kafka brokers' own default.
      dead_letter_retention_ms(int): ``retention.ms`` of the failed-message topics this broker creates.
      send_timeout_ms(int): How long ``enqueue`` waits for Kafka's acknowledgement before raising.
      commit_interval_ms(int): Most time between offset commits while messages are being acked.
      client_options(dict): kafka-python options given to every client (security, timeouts...); each
        client takes the ones it knows.
      producer_options(dict), consumer_options(dict), admin_options(dict): Options for one kind of client.

    >>> from pipeline.brokers.kafka import KafkaBroker
    >>> broker = KafkaBroker(bootstrap_servers="127.0.0.1:9092", topic_prefix="dev.")
    >>> dramatiq.set_broker(broker)
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str] = "127.0.0.1:9092",
        middleware: list[dramatiq.Middleware] | None = None,
        topic_prefix: str = "",
        group_id: str = "dramatiq",
        client_id: str = "dramatiq",
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = DEFAULT_REPLICATION_FACTOR,
        min_insync_replicas: int | None = None,
        dead_letter_retention_ms: int = DEFAULT_DEAD_LETTER_RETENTION_MS,
        send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS,
        commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS,
        client_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
        consumer_options: dict[str, Any] | None = None,
        admin_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.queues: set[str] = set()
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic_prefix = topic_prefix
        self.group_id = group_id
        self.client_id = client_id
        self.partitions = partitions
        self.replication_factor = replication_factor
        if min_insync_replicas is None and replication_factor >= 3:
            min_insync_replicas = 2
        if min_insync_replicas is not None and not 1 <= min_insync_replicas <= replication_factor:
            raise ValueError(
                f"min_insync_replicas must be from 1 to the replication factor ({replication_factor}), "
                f"not {min_insync_replicas}: Kafka would refuse every write"
            )
        self.min_insync_replicas = min_insync_replicas
        self.dead_letter_retention_ms = dead_letter_retention_ms
        self.send_timeout_ms = send_timeout_ms
        self.commit_interval_ms = commit_interval_ms
        self.client_options = dict(client_options or {})
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        self.admin_options = dict(admin_options or {})

        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._admin_lock = threading.Lock()
        self._ready_topics: set[str] = set()
        self._scope = threading.local()

    # -- names ------------------------------------------------------------------------------------------
    def topic_for(self, queue_name: str) -> str:
        """The Kafka topic that carries ``queue_name`` (a queue, ``.DQ`` or ``.XQ`` name)."""
        return self.topic_prefix + queue_name

    def group_for(self, queue_name: str) -> str:
        """The consumer group that consumes ``queue_name``."""
        return f"{self.topic_prefix}{self.group_id}.{queue_name}"

    # -- clients ----------------------------------------------------------------------------------------
    def _options(self, client: type, specific: dict[str, Any]) -> dict[str, Any]:
        known = client.DEFAULT_CONFIG  # type: ignore[attr-defined]
        options = {k: v for k, v in self.client_options.items() if k in known}
        options.update(specific)
        options.setdefault("bootstrap_servers", self.bootstrap_servers)
        options.setdefault("client_id", self.client_id)
        # A client that cannot reach Kafka gives up after the send timeout, not kafka-python's 30 s.
        if "bootstrap_timeout_ms" in known:
            options.setdefault("bootstrap_timeout_ms", self.send_timeout_ms)
        return options

    @property
    def producer(self) -> KafkaProducer:
        """The broker's producer, created on first use (kafka-python's producer is thread-safe)."""
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    request_timeout = min(30_000, self.send_timeout_ms)
                    options = self._options(
                        KafkaProducer,
                        {
                            "acks": "all",
                            "enable_idempotence": True,
                            "linger_ms": 0,  # enqueue waits for its ack: lingering only adds latency
                            "max_block_ms": self.send_timeout_ms,
                            "request_timeout_ms": request_timeout,
                            "delivery_timeout_ms": self.send_timeout_ms + request_timeout,
                            **self.producer_options,
                        },
                    )
                    try:
                        self._producer = KafkaProducer(**options)
                    except KafkaError as e:
                        raise KafkaConnectionError(str(e)) from None
        return self._producer

    @property
    def admin(self) -> KafkaAdminClient:
        """The broker's admin client, created on first use."""
        if self._admin is None:
            with self._lock:
                if self._admin is None:
                    options = self._options(
                        KafkaAdminClient, {"request_timeout_ms": self.send_timeout_ms, **self.admin_options}
                    )
                    try:
                        self._admin = KafkaAdminClient(**options)
                    except KafkaError as e:
                        raise KafkaConnectionError(str(e)) from None
        return self._admin

    def _admin_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an admin client method.  A client that failed is replaced; a call that failed because a
        group coordinator or a partition leader is moving to another node (one node of a cluster went away)
        is made again on the fresh client, up to :data:`ADMIN_ATTEMPTS` times.  (Kafka being unreachable
        is not retried here: callers such as ``/readyz`` want to know at once.)"""
        for attempt in range(1, ADMIN_ATTEMPTS + 1):
            try:
                with self._admin_lock:
                    return getattr(self.admin, name)(*args, **kwargs)
            except KafkaError as e:
                self._discard_client("_admin", self._admin)
                if not isinstance(e, _MOVING) or attempt == ADMIN_ATTEMPTS:
                    raise KafkaConnectionError(f"{name}: {e}") from None
                self.logger.debug("%s failed (%s); trying again", name, e)
                time.sleep(ADMIN_RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard_client(self, attribute: str, failed: Any = None) -> None:
        """Drop a client after a failure, so that the next call builds a fresh one.

        kafka-python 3.0.12's clients do not always recover by themselves once Kafka has restarted (a
        metadata refresh can wait forever), so a client that failed is replaced rather than trusted.  With
        ``failed``, only that client is dropped (not a fresh one another thread built meanwhile).
        """
        with self._lock:
            client = getattr(self, attribute)
            if client is None or (failed is not None and client is not failed):
                return
            setattr(self, attribute, None)
        if client is not None:
            try:
                client.close(timeout=0) if attribute == "_producer" else client.close()
            except Exception as e:  # a broken client may fail to close; it is dropped all the same
                self.logger.debug("Closing a failed Kafka client: %s", e)

    def _new_consumer(self, *topics: str, **specific: Any) -> KafkaConsumer:
        options = self._options(
            KafkaConsumer,
            {
                "enable_auto_commit": False,
                "auto_offset_reset": "earliest",
                "session_timeout_ms": DEFAULT_SESSION_TIMEOUT_MS,
                "heartbeat_interval_ms": DEFAULT_SESSION_TIMEOUT_MS // 4,
                **self.consumer_options,
                **specific,
            },
        )
        try:
            return KafkaConsumer(*topics, **options)
        except KafkaError as e:
            raise KafkaConnectionError(str(e)) from None

    # -- the Broker contract ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the producer (after delivering what it holds) and the admin client."""
        with self._lock:
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        if producer is not None:
            producer.close(timeout=self.send_timeout_ms / 1000)
        if admin is not None:
            admin.close()

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue and its delay queue.  Topics are created on first use (enqueue, consume, join)."""
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)

        delayed_name = dq_name(queue_name)
        self.delay_queues.add(delayed_name)
        self.emit_after("declare_delay_queue", delayed_name)

    def _ensure_topics(self, queue_name: str) -> None:
        """Create the queue's three topics unless they exist; existing topics are used as they are."""
        canonical = q_name(queue_name)
        if canonical in self._ready_topics:
            return
        if canonical not in self.queues:
            raise QueueNotFound(canonical)
        configs = {}
        if self.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        base = {"num_partitions": self.partitions, "replication_factor": self.replication_factor}
        topics = {
            self.topic_for(canonical): {**base, "configs": dict(configs)},
            self.topic_for(dq_name(canonical)): {**base, "configs": dict(configs)},
            self.topic_for(xq_name(canonical)): {
                **base,
                "configs": {**configs, "retention.ms": str(self.dead_letter_retention_ms)},
            },
        }
        result = self._admin_call("create_topics", topics, raise_errors=False)
        for topic in result.get("topics", []):
            if topic["error_code"] not in (0, _TOPIC_ALREADY_EXISTS):
                reason = topic.get("error_message") or topic["error_code"]
                raise KafkaConnectionError(f"cannot create topic {topic['name']!r}: {reason}")
        self._admin_call("wait_for_topics", list(topics), timeout_ms=self.send_timeout_ms)
        self._ready_topics.add(canonical)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 1000) -> Consumer:
        """Create a consumer for a queue (or a delay queue) that joins the queue's consumer group.

        Parameters:
          queue_name(str): The queue to consume.
          prefetch(int): The most messages handed out and not yet acked.
          timeout(int): How long ``__next__`` waits for a message before it returns None, in milliseconds.

        Raises:
          QueueNotFound: If the queue hasn't been declared.
        """
        if q_name(queue_name) not in self.queues:
            raise QueueNotFound(queue_name)
        self._ensure_topics(queue_name)
        return _KafkaConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message and return once Kafka has acknowledged it.

        Parameters:
          message(Message): The message to enqueue.  ``message.options["partition_key"]``, when set, is the
            record key, so that messages with the same key keep their order.
          delay(int): The minimum amount of time, in milliseconds, to delay the message by.

        Raises:
          QueueNotFound: If the queue hasn't been declared.
          KafkaConnectionError: If Kafka did not acknowledge the message within ``send_timeout_ms``.
        """
        return self.enqueue_many([message], delay=delay)[0]

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Enqueue many messages with one wait: return once Kafka has acknowledged all of them.

        If this raises, some of the messages may have been delivered and others not.
        """
        prepared: list[tuple[Message[Any], str]] = []
        for message in messages:
            queue_name = message.queue_name
            if q_name(queue_name) not in self.queues:
                raise QueueNotFound(queue_name)
            if delay is not None:
                queue_name = dq_name(queue_name)
                message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
            self._ensure_topics(queue_name)
            prepared.append((message, self.topic_for(queue_name)))

        for message, _ in prepared:
            self.emit_before("enqueue", message, delay)
        futures = [self._send(topic, m.encode(), m.options.get("partition_key")) for m, topic in prepared]
        pending = getattr(self._scope, "pending", None)
        if pending is not None:
            # Inside ``batch()``: the block's end waits for these acks (and emits after_enqueue).
            pending.extend((f, message, delay) for f, (message, _) in zip(futures, prepared, strict=True))
            return [message for message, _ in prepared]
        self._wait(futures)
        for message, _ in prepared:
            self.emit_after("enqueue", message, delay)
        return [message for message, _ in prepared]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Send what this thread enqueues inside the block, and wait for all the acks once, at its end.

        ``actor.send()`` inside the block returns as soon as the record is handed to the producer; leaving the
        block returns only once Kafka has acknowledged all of them, or raises :class:`KafkaConnectionError`.
        A plain ``send()`` loop so gets the speed of ``enqueue_many``.  Blocks nest (the outermost waits).

        >>> with broker.batch():
        ...     for user in users:
        ...         process_user.send(user)
        """
        if getattr(self._scope, "pending", None) is not None:
            yield
            return
        self._scope.pending = pending = []
        try:
            yield
        finally:
            self._scope.pending = None
        self._wait([future for future, _, _ in pending])
        for _, message, delay in pending:
            self.emit_after("enqueue", message, delay)

    def _send(
        self, topic: str, value: bytes, key: Any = None, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        encoded_key = None if key is None else str(key).encode("utf-8")
        producer = self.producer
        try:
            return producer.send(topic, value=value, key=encoded_key, headers=headers or [])
        except KafkaError as e:
            if not isinstance(e, MessageSizeTooLargeError):
                self._discard_client("_producer", producer)
            raise KafkaConnectionError(f"cannot send to {topic!r}: {e}") from None

    def _wait(self, futures: list[Any]) -> None:
        deadline = time.monotonic() + self.send_timeout_ms / 1000
        producer = self._producer
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as e:
                if not isinstance(e, MessageSizeTooLargeError):
                    self._discard_client("_producer", producer)
                raise KafkaConnectionError(f"Kafka did not acknowledge a message: {e}") from None

    def get_declared_queues(self) -> set[str]:
        """The names of the queues declared on this broker."""
        return self.queues.copy()

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue (or delay queue) that has not been consumed yet.

        Kafka cannot remove single records: this deletes the topic's records up to its end for every
        consumer group, as a ``DEL`` of a Redis list would.
        """
        self._ensure_topics(queue_name)
        topic = self.topic_for(queue_name)
        ends = self._offsets(topic, OffsetSpec.LATEST)
        if ends:
            self._admin_call("delete_records", ends, timeout_ms=self.send_timeout_ms)

    def flush_all(self) -> None:
        """Drop every pending message of every declared queue, its delay queue and its failed messages."""
        for queue_name in list(self.queues):
            self.flush(queue_name)
            self.flush(dq_name(queue_name))
            self.flush(xq_name(queue_name))

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool = False) -> None:
        """Wait until every message enqueued so far on a queue and its delay queue has been acked.

        That is, until the consumer groups of both topics have committed every partition up to its end.
        Meant for tests, as ``StubBroker.join`` is.

        Parameters:
          fail_fast(bool): Raise :class:`MessageFailed` at the end when messages of the queue reached
            the failed-message topic during the join (as ``StubBroker.join`` re-raises their exception).

        Raises:
          QueueJoinTimeout: When ``timeout`` milliseconds elapse first.
          QueueNotFound: If the queue hasn't been declared.
        """
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        self._ensure_topics(queue_name)
        failed_before = self.failed_count(queue_name) if fail_fast else 0
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        # Queue, then delay queue, then queue again: a retry is put on the delay queue before the original
        # is acked, and a delayed message is put back on the queue before it is acked.
        order = (queue_name, dq_name(queue_name), queue_name)
        while True:
            if all(sum(self.lag(name).values()) == 0 for name in order):
                if fail_fast and self.failed_count(queue_name) > failed_before:
                    reasons = [f.reason for f in self.failed_messages(queue_name)]
                    raise MessageFailed(reasons[-1] if reasons else "a message failed")
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.logger.warning("join(%r) timed out: %s", queue_name, self._join_state(queue_name))
                raise QueueJoinTimeout(queue_name)
            time.sleep(0.05)

    def _join_state(self, queue_name: str) -> str:
        """What a timed-out ``join`` waited for: each topic's lag per partition, and its consumer group's
        state, members and their partitions (to tell work not done from work nobody was given)."""
        parts = []
        for name in (queue_name, dq_name(queue_name)):
            try:
                lag = self.lag(name)
                group = self.group_for(name)
                described = self._admin_call("describe_groups", [group]).get(group, {})
                members = [
                    sorted(
                        p
                        for assigned in (m.get("member_assignment") or {}).get("assigned_partitions", [])
                        for p in assigned["partitions"]
                    )
                    for m in described.get("members", [])
                ]
                parts.append(f"{name}: lag {lag}, group {described.get('group_state')} members {members}")
            except Exception as error:  # a diagnostic must not hide the timeout
                parts.append(f"{name}: cannot inspect ({type(error).__name__}: {error})")
        return "; ".join(parts)

    # -- inspection ---------------------------------------------------------------------------------------
    def _partitions(self, topic: str) -> list[TopicPartition]:
        described = self._admin_call("describe_topics", [topic])
        return [TopicPartition(topic, p["partition_index"]) for d in described for p in d["partitions"]]

    def _offsets(self, topic: str, spec: OffsetSpec) -> dict[TopicPartition, int]:
        return self._offsets_of(self._partitions(topic), spec)

    def _offsets_of(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        found = self._admin_call("list_partition_offsets", dict.fromkeys(partitions, spec))
        return {tp: value.offset for tp, value in found.items()}

    def _bounds(self, topic: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """(first offset, end offset) of every partition of ``topic``, describing the topic once."""
        partitions = self._partitions(topic)
        starts = self._offsets_of(partitions, OffsetSpec.EARLIEST)
        return starts, self._offsets_of(partitions, OffsetSpec.LATEST)

    def lag(self, queue_name: str) -> dict[int, int]:
        """Messages of a queue (or ``.DQ``) not yet acked by its consumer group, per partition."""
        topic = self.topic_for(queue_name)
        starts, ends = self._bounds(topic)
        group = self.group_for(queue_name)
        committed = self._admin_call("list_group_offsets", {group: list(ends)}).get(group, {})
        lags = {}
        for tp, end in ends.items():
            start = starts.get(tp, 0)
            done = committed.get(tp)
            if done is None or done.offset < 0:
                lags[tp.partition] = max(0, end - start)
                continue
            position = max(done.offset, start)
            acked_above = sum(1 for o in _decode_acked(done.offset, done.metadata) if position <= o < end)
            lags[tp.partition] = max(0, end - position - acked_above)
        return lags

    def ping(self) -> None:
        """Raise :class:`KafkaConnectionError` unless Kafka answers a metadata request."""
        self._admin_call("list_topics")

    # -- failed messages ----------------------------------------------------------------------------------
    def dead_letter(self, message: Message[Any], reason: str, *, origin: str = "") -> None:
        """Write a message to its queue's failed-message topic and wait for Kafka's acknowledgement."""
        canonical = q_name(message.queue_name)
        self._ensure_topics(canonical)
        self._dead_letter_raw(canonical, message.encode(), reason, origin)

    def _dead_letter_raw(self, queue_name: str, value: bytes, reason: str, origin: str) -> None:
        headers = [
            (HEADER_REASON, reason.encode("utf-8", "replace")[:8192]),
            (HEADER_QUEUE, queue_name.encode("utf-8")),
            (HEADER_ORIGIN, origin.encode("utf-8")),
        ]
        self._wait([self._send(self.topic_for(xq_name(queue_name)), value, None, headers)])

    def under_replicated(self, queue_name: str) -> dict[str, int]:
        """For the queue's three topics (queue, ``.DQ``, ``.XQ``), how many partitions have fewer in-sync
        replicas than replicas: a Kafka node is away or behind, and one more loss could stop writes."""
        self._ensure_topics(queue_name)
        canonical = q_name(queue_name)
        names = {self.topic_for(n): n for n in (canonical, dq_name(canonical), xq_name(canonical))}
        described = self._admin_call("describe_topics", list(names))
        return {
            names[topic["name"]]: sum(
                1 for p in topic["partitions"] if len(p["isr_nodes"]) < len(p["replica_nodes"])
            )
            for topic in described
        }

    def failed_count(self, queue_name: str) -> int:
        """How many failed messages the queue's failed-message topic holds."""
        self._ensure_topics(queue_name)
        topic = self.topic_for(xq_name(queue_name))
        starts, ends = self._bounds(topic)
        return sum(end - starts.get(tp, 0) for tp, end in ends.items())

    def failed_messages(self, queue_name: str, *, limit: int | None = None) -> Iterator[FailedMessage]:
        """Read the queue's failed messages, oldest first per partition, without consuming them."""
        self._ensure_topics(queue_name)
        topic = self.topic_for(xq_name(queue_name))
        starts, ends = self._bounds(topic)
        wanted = {tp: end for tp, end in ends.items() if end > starts.get(tp, 0)}
        if not wanted:
            return
        reader = self._new_consumer(group_id=None, enable_auto_commit=False)
        try:
            reader.assign(list(wanted))
            for tp in wanted:
                reader.seek(tp, starts.get(tp, 0))
            seen = 0
            remaining = dict(wanted)
            deadline = time.monotonic() + self.send_timeout_ms / 1000
            while remaining and time.monotonic() < deadline:
                for tp, records in reader.poll(timeout_ms=200).items():
                    for record in records:
                        if tp not in remaining or record.offset >= remaining[tp]:
                            continue
                        yield _failed_message(record)
                        seen += 1
                        if limit is not None and seen >= limit:
                            return
                        if record.offset + 1 >= remaining[tp]:
                            del remaining[tp]
        except KafkaError as e:
            raise KafkaConnectionError(f"cannot read {topic!r}: {e}") from None
        finally:
            reader.close(autocommit=False)

    def replay_failed(self, queue_name: str, *, limit: int | None = None) -> tuple[int, int]:
        """Put failed messages back on their queue, with their retry count reset, and remove them.

        Records that are not Dramatiq messages cannot be replayed: they stay (see ``purge_failed``), and so
        does everything after them in their partition.  Returns (replayed, left).
        """
        replayable: dict[int, list[FailedMessage]] = defaultdict(list)
        blocked: set[int] = set()
        left = 0
        for failed in self.failed_messages(queue_name, limit=limit):
            if failed.message is None or failed.partition in blocked:
                blocked.add(failed.partition)
                left += 1
                continue
            replayable[failed.partition].append(failed)
        fresh = []
        for items in replayable.values():
            for item in items:
                assert item.message is not None
                options = {
                    k: v for k, v in item.message.options.items() if k not in {"retries", "traceback", "eta"}
                }
                fresh.append(
                    dataclasses.replace(item.message, queue_name=q_name(queue_name), options=options)
                )
        if fresh:
            self.enqueue_many(fresh)
            topic = self.topic_for(xq_name(queue_name))
            cut = {TopicPartition(topic, p): items[-1].offset + 1 for p, items in replayable.items()}
            self._admin_call("delete_records", cut, timeout_ms=self.send_timeout_ms)
        return len(fresh), left

    def purge_failed(self, queue_name: str) -> int:
        """Delete every failed message of a queue; returns how many there were."""
        count = self.failed_count(queue_name)
        self.flush(xq_name(queue_name))
        return count


def _failed_message(record: Any) -> FailedMessage:
    headers = {key: value for key, value in (record.headers or [])}
    reason = headers.get(HEADER_REASON, b"").decode("utf-8", "replace")
    try:
        message: Message[Any] | None = Message.decode(record.value)
    except DecodeError:
        message = None
    return FailedMessage(record.partition, record.offset, record.timestamp, reason, message, record.value)


def _encode_acked(base: int, acked: Iterable[int]) -> str:
    """Offsets acked above the commit point, as ``start+length`` ranges relative to it, base 36."""
    ranges: list[list[int]] = []
    for offset in sorted(acked):
        if ranges and offset == ranges[-1][0] + ranges[-1][1]:
            ranges[-1][1] += 1
        else:
            ranges.append([offset, 1])
    parts, size = [], 0
    for start, length in ranges:
        part = f"{_b36(start - base)}+{_b36(length)}"
        size += len(part) + 1
        if size > _MAX_COMMIT_METADATA:
            break  # What does not fit is delivered again: at-least-once still holds.
        parts.append(part)
    return "acked:" + ",".join(parts) if parts else ""


def _decode_acked(base: int, metadata: str | None) -> set[int]:
    if not metadata or not metadata.startswith("acked:"):
        return set()
    offsets: set[int] = set()
    for part in metadata[len("acked:") :].split(","):
        start, _, length = part.partition("+")
        try:
            first = base + int(start, 36)
            offsets.update(range(first, first + int(length, 36)))
        except ValueError:
            return set()
    return offsets


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


class _PartitionState:
    """What one consumer knows of one assigned partition."""

    __slots__ = ("acked", "committed", "epoch", "outstanding", "pending", "position", "skip")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.pending: deque[int] = deque()  # offsets handed out (or buffered), in order
        self.acked: set[int] = set()  # offsets in ``pending`` that were acked
        self.skip: set[int] = set()  # offsets acked by an earlier owner above its commit point
        self.position: int | None = None  # offset after the last record fetched
        self.outstanding = 0  # handed out and not acked
        self.committed: int | None = None  # the last offset this consumer committed

    def commit_point(self) -> int | None:
        while self.pending and self.pending[0] in self.acked:
            self.acked.discard(self.pending.popleft())
        if self.pending:
            return self.pending[0]
        return self.position


class _KafkaMessageProxy(MessageProxy):
    def __init__(self, message: Message[Any], partition: TopicPartition, offset: int, epoch: int) -> None:
        super().__init__(message)
        self._partition = partition
        self._offset = offset
        self._epoch = epoch


class _KafkaConsumer(Consumer, AsyncConsumerRebalanceListener):
    """Consumes one topic in its consumer group.

    ``__next__`` and ``close`` run on the worker's consumer thread, the only one that touches the
    kafka-python consumer (which is not thread-safe); ``ack`` and ``nack`` run on worker threads and only
    put the acked offset on a queue that ``__next__`` reads.
    """

    def __init__(self, broker: KafkaBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.topic = broker.topic_for(queue_name)
        self._acks: SimpleQueue[tuple[TopicPartition, int, int]] = SimpleQueue()
        self._acked_event = threading.Event()
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._revoked: dict[TopicPartition, _PartitionState] = {}
        self._buffer: deque[_KafkaMessageProxy] = deque()
        self._epoch = 0
        self._dirty = False
        self._last_commit = time.monotonic()
        self._settled_at = time.monotonic()
        self._paused = False
        self._consumer = broker._new_consumer(
            group_id=broker.group_for(queue_name), max_poll_records=min(500, self.prefetch)
        )
        try:
            # Know the topic's partitions before joining: a group leader without them assigns nothing
            # until its next metadata refresh, minutes later.
            self._consumer.partitions_for_topic(self.topic)
        except KafkaError as e:
            self._consumer.close(autocommit=False)
            raise KafkaConnectionError(f"no metadata for {self.topic!r}: {e}") from None
        self._consumer.subscribe([self.topic], listener=self)

    # -- rebalance listener ------------------------------------------------------------------------------
    # kafka-python 3 runs these on its IO thread while the consumer thread waits inside ``poll`` (or
    # ``close``), so they never run alongside ``__next__``; they must not call blocking consumer APIs,
    # hence the coordinator's async variants.
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = [tp for tp in revoked if tp in self._states]
        if not revoked:
            return
        self._drain_acks()
        offsets = self._offsets_to_commit(revoked)
        if offsets:
            try:
                await self._consumer._coordinator._commit_offsets_sync_async(
                    offsets, timeout_ms=self.broker.send_timeout_ms
                )
                self._committed(offsets)
            except KafkaError as e:
                self.logger.warning("Commit of revoked partitions of %s failed: %s", self.topic, e)
        for tp in revoked:
            # Kept aside until the assignment is known: if the partition comes back to us, what is in flight
            # stays in flight instead of being fetched and run a second time.
            self._revoked[tp] = self._states.pop(tp)
        # Unacked messages of those partitions go to their next owner; drop what was not handed out.
        first_dropped: dict[TopicPartition, int] = {}
        for message in self._buffer:
            if message._partition in revoked:
                self._revoked[message._partition].outstanding -= 1
                first_dropped.setdefault(message._partition, message._offset)
        for tp, offset in first_dropped.items():
            # Should the partition come back, fetching starts again at the first message not handed out.
            state = self._revoked[tp]
            state.position = offset
            state.pending = deque(o for o in state.pending if o < offset)
            state.acked = {o for o in state.acked if o < offset}
        self._buffer = deque(m for m in self._buffer if m._partition not in revoked)
        self.logger.info("Partitions revoked from %s: %s", self.topic, sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        self._paused = False  # new partitions start fetching; ``_pause`` pauses the whole assignment again
        commits = await self._consumer._coordinator.fetch_committed_offsets_async(assigned)
        for tp in assigned:
            committed = commits.get(tp)
            previous = self._revoked.pop(tp, None)
            if previous is not None and committed is not None and committed.offset == previous.committed:
                # Nobody moved the partition on since we last owned it: carry on where we were.  Acks that
                # came in while it was away are in its state but were never committed: commit them now.
                self._states[tp] = previous
                if previous.position is not None:
                    self._consumer.seek(tp, previous.position)
                self._dirty = True
                continue
            self._epoch += 1
            state = self._states[tp] = _PartitionState(self._epoch)
            if committed is not None and committed.offset >= 0:
                state.skip = _decode_acked(committed.offset, committed.metadata)
        self._revoked.clear()
        self.logger.info("Partitions assigned to %s: %s", self.topic, sorted(tp.partition for tp in assigned))
        if not assigned:
            self.logger.warning(
                "No partition of %s is left for this consumer: its group has more consumers than the topic "
                "has partitions, so some worker processes idle. Run fewer, or give the topic more partitions "
                "(kafka-topics.sh --alter --partitions N; KAFKA_PARTITIONS for new topics).",
                self.topic,
            )

    # -- Consumer ---------------------------------------------------------------------------------------
    def ack(self, message: MessageProxy) -> None:
        assert isinstance(message, _KafkaMessageProxy)
        self._acks.put((message._partition, message._offset, message._epoch))
        self._acked_event.set()

    def nack(self, message: MessageProxy) -> None:
        assert isinstance(message, _KafkaMessageProxy)
        exception = message._exception
        reason = f"{type(exception).__name__}: {exception}" if exception is not None else "failed"
        origin = f"{message._partition.topic}:{message._partition.partition}:{message._offset}"
        self.broker.dead_letter(message._message, reason, origin=origin)
        self.ack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Nothing to do: messages that were not acked are not committed, so their partition's next
        owner (this process after a restart, or another) receives them again."""

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        try:
            while True:
                self._drain_acks()
                if (
                    self._dirty
                    and (time.monotonic() - self._last_commit) * 1000 >= self.broker.commit_interval_ms
                ):
                    self._commit()
                if self._buffer:
                    message = self._buffer.popleft()
                    return message

                remaining_ms = int((deadline - time.monotonic()) * 1000)
                room = self.prefetch - self._outstanding()
                if room <= 0:
                    self._pause()
                    # Keeps the group membership alive; a rebalance may hand us new, unpaused partitions.
                    self._take(self._poll(0))
                    if remaining_ms <= 0:
                        return None
                    self._acked_event.wait(min(_POLL_SLICE_MS, remaining_ms) / 1000)
                    self._acked_event.clear()
                    continue

                self._resume()
                batch = self._poll(max(0, min(_POLL_SLICE_MS, remaining_ms)), room)
                if batch:
                    self._take(batch)
                    continue
                if self._dirty:
                    self._commit()
                if remaining_ms <= 0:
                    return None
        except KafkaError as e:
            raise KafkaConnectionError(f"consuming {self.topic!r}: {e}") from None

    def close(self) -> None:
        """Commit what was acked and leave the group; what was not acked is delivered again."""
        try:
            self._drain_acks()
            self._commit(force=True)
            self._consumer.close(autocommit=False)
        except KafkaError as e:
            self.logger.warning("Closing the consumer of %s: %s", self.topic, e)

    # -- internals ----------------------------------------------------------------------------------------
    def _poll(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        # kafka-python 3.0.12 loses a rebalance that a metadata change started when ``poll`` times out while
        # its JoinGroup/SyncGroup task runs: the task's assignment is never applied, and the consumer sits in
        # the group with no partitions for good.  Keeping the coordinator's own "rejoin needed" flag up while
        # a rebalance is under way makes the next ``poll`` finish it (at worst with one more join).
        coordinator = getattr(self._consumer, "_coordinator", None)
        rebalancing = coordinator is not None and (
            getattr(coordinator, "rejoining", False) or getattr(coordinator, "rejoin_needed", False)
        )
        now = time.monotonic()
        if not rebalancing:
            self._settled_at = now
        else:
            if getattr(coordinator, "rejoining", False):
                coordinator.rejoin_needed = True
            # A join needs time to finish: never poll for nothing while one is under way.
            timeout_ms = max(timeout_ms, _POLL_SLICE_MS)
            # After a Kafka restart kafka-python 3.0.12 can keep "rejoining" for good (the group waits for a
            # JoinGroup that never comes).  A consumer that has not settled in this long is replaced: the
            # worker restarts it, and what it held un-acked is delivered again.
            if now - self._settled_at > _REJOIN_PATIENCE_S:
                raise KafkaConnectionError(
                    f"the consumer of {self.topic!r} has not rejoined its group in {_REJOIN_PATIENCE_S:.0f} s"
                )
        return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)

    def _outstanding(self) -> int:
        return len(self._buffer) + sum(state.outstanding for state in self._states.values())

    def _take(self, batch: dict[TopicPartition, list[Any]]) -> None:
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
                try:
                    message = Message.decode(record.value)
                except DecodeError as e:
                    self._reject_undecodable(tp, record, e)
                    state.acked.add(record.offset)
                    self._dirty = True
                    continue
                state.outstanding += 1
                self._buffer.append(_KafkaMessageProxy(message, tp, record.offset, state.epoch))

    def _reject_undecodable(self, tp: TopicPartition, record: Any, error: Exception) -> None:
        origin = f"{tp.topic}:{tp.partition}:{record.offset}"
        self.logger.error("Record %s is not a Dramatiq message; moving it to the failed topic.", origin)
        self.broker._dead_letter_raw(
            q_name(self.queue_name), record.value or b"", f"DecodeError: {error}", origin
        )

    def _drain_acks(self) -> None:
        while True:
            try:
                tp, offset, epoch = self._acks.get_nowait()
            except Empty:
                return
            state = self._states.get(tp) or self._revoked.get(tp)
            if state is None or state.epoch != epoch:
                continue  # the partition was revoked since: its new owner has the message again
            state.acked.add(offset)
            state.outstanding -= 1
            self._dirty = True

    def _offsets_to_commit(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        offsets = {}
        for tp in partitions:
            state = self._states[tp]
            point = state.commit_point()
            if point is not None and (point != state.committed or state.acked):
                offsets[tp] = OffsetAndMetadata(point, _encode_acked(point, state.acked), -1)
        return offsets

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, done in offsets.items():
            if tp in self._states:
                self._states[tp].committed = done.offset

    def _commit(self, *, force: bool = False) -> None:
        """Commit every partition up to its lowest unacked offset (with the acked ones above it)."""
        if not (self._dirty or force):
            return
        offsets = self._offsets_to_commit(list(self._states))
        self._dirty = False
        if not offsets:
            return
        try:
            # Bounded: during a Kafka outage the consumer thread must give up and let the worker restart it.
            self._consumer.commit(offsets=offsets, timeout_ms=self.broker.send_timeout_ms)
        except CommitFailedError as e:
            self._dirty = True
            self.logger.warning("Commit on %s failed (a rebalance is under way): %s", self.topic, e)
            return
        self._last_commit = time.monotonic()
        self._committed(offsets)

    def _pause(self) -> None:
        if not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(*self._consumer.paused())
            self._paused = False
