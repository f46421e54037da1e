"""The Kafka broker: Dramatiq's transport on Apache Kafka topics."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import dramatiq
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import QueueJoinTimeout, QueueNotFound
from dramatiq.message import Message

from . import compat, topics
from .admin import KafkaAdmin
from .clients import KafkaClients
from .consumer import _KafkaConsumer
from .deadletters import failure_headers
from .errors import KafkaConnectionError, MessageFailed
from .metrics import delivery_errors
from .share.consumer import _KafkaShareConsumer
from .share.layout import ShareTopicLayout
from .share.offsets import ShareGroupAdmin
from .topics import TopicLayout

#: Partitions of each topic the broker creates: a consumer group shares P partitions among N members
#: evenly only when N divides P, and 12 divides among 1, 2, 3, 4, 6 and 12 worker processes.
DEFAULT_PARTITIONS = 12
#: Replication factor of each topic the broker creates.
DEFAULT_REPLICATION_FACTOR = 1
#: How long ``enqueue`` waits for Kafka's acknowledgement before it raises, in milliseconds: longer than a
#: Kafka cluster takes to move the partitions of a crashed node (its ``broker.session.timeout.ms``, then an
#: election and a metadata refresh), so that losing one node of several delays writes but fails none.
DEFAULT_SEND_TIMEOUT_MS = 20_000
#: Most time between two offset commits of a busy consumer, in milliseconds.
DEFAULT_COMMIT_INTERVAL_MS = 100
#: Retention of the failed-message topics, in milliseconds (14 days).
DEFAULT_DEAD_LETTER_RETENTION_MS = 14 * 24 * 3600 * 1000
#: Most failures of one queue kept in memory for ``join(fail_fast=True)`` to re-raise.
_KEPT_FAILURES = 16
#: How often ``join`` looks at the consumer groups' lag, in seconds.
_JOIN_POLL_S = 0.05


class KafkaBroker(Broker):
    """A Dramatiq broker that carries messages on Apache Kafka.

    Each queue is a topic, with a ``.DQ`` topic for delayed messages and an ``.XQ`` topic for failed ones
    (Dramatiq's ``dq_name`` and ``xq_name``).  Delivery is at least once: ``enqueue`` returns once Kafka
    has acknowledged the record (``acks=all``; unless ``confirm_delivery`` is off), and a consumer commits
    an offset only once its message was acked.

    Parameters:
      bootstrap_servers(str | list[str]): Kafka's ``host:port`` addresses.
      middleware(list[Middleware]): The middleware to add to this broker (Dramatiq's defaults when None).
      topic_prefix(str): Put in front of every topic and consumer group name.
      group_id(str): Base name of the consumer groups; one group per topic is derived from it.
      group_type(str): ``"classic"`` (consumer groups) or ``"share"`` (share groups, KIP-932: any number of
        workers per partition, an outcome per message; named ``<group>.share``; delay queues stay classic).
      group_instance_id(str | None): The stable name of this worker host, for static group membership
        (KIP-345): each consumer joins its group as ``<topic_prefix><group_instance_id>-p<process index>``
        (the index Dramatiq's command line gave the worker process), so that a worker restarted within
        the session timeout (10 s) gets its partitions back without a rebalance of the group; but a
        static member never leaves its group, so the partitions of one stopped for good wait that long.
        Each host needs a name of its own: a member that another takes the place of goes on as a dynamic
        member, with a critical log.  None (or outside a worker process started by Dramatiq's command
        line): dynamic members, which leave their group when they stop.
      client_id(str): Reported to Kafka by every client.
      create_topics(bool): Whether to create the topics a queue needs.  Off, or when Kafka refuses for want
        of rights (a managed Kafka whose operator makes the topics), the topics must exist: a missing one
        raises :class:`~.topics.MissingTopics`, which names it and says how to make it.
      partitions(int): Partitions of the topics this broker creates.  Existing topics are used as they are.
      replication_factor(int): Replication factor of the topics this broker creates.
      min_insync_replicas(int | None): ``min.insync.replicas`` of the topics this broker creates: how many
        replicas must have a message before Kafka acknowledges it.  None means 2 when the replication
        factor is 3 or more (one node may go, and nothing acknowledged is on one node only), else the
        Kafka brokers' own default.
      dead_letter_retention_ms(int): ``retention.ms`` of the failed-message topics this broker creates.
      send_timeout_ms(int): How long ``enqueue`` waits for Kafka's acknowledgement before raising.
      confirm_delivery(bool): Whether ``enqueue`` waits for Kafka's acknowledgement (``acks=all``), as
        Dramatiq's ``RabbitmqBroker`` option of this name waits for RabbitMQ's.  On by default: a message
        ``enqueue`` returned is durable.  Off, ``enqueue`` returns once the record is in the producer's
        buffer, and a message Kafka then refuses is lost: it is logged and counted
        (``dramatiq_kafka_delivery_errors_total``), not raised.  ``join``, ``flush`` and ``close`` first
        wait for the records in flight; a ``batch()`` block still waits for its messages' acks at its end.
        A worker's own hand-offs (retries, delayed messages, pipeline stages) are then not durable either.
      commit_interval_ms(int): Most time between offset commits while messages are being acked.
      fail_fast_default(bool): What ``join`` does when its ``fail_fast`` is None, as on ``StubBroker``.
      client_options(dict): kafka-python options given to every client (security, timeouts...); each
        client takes the ones it knows.
      producer_options(dict), consumer_options(dict), admin_options(dict): Options for one kind of client.

    Raises:
      ValueError: If ``min_insync_replicas`` is one Kafka could never meet.

    >>> from dramatiq_kafka_broker import KafkaBroker
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
        group_type: str = "classic",
        group_instance_id: str | None = None,
        client_id: str = "dramatiq",
        create_topics: bool = True,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = DEFAULT_REPLICATION_FACTOR,
        min_insync_replicas: int | None = None,
        dead_letter_retention_ms: int = DEFAULT_DEAD_LETTER_RETENTION_MS,
        send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS,
        confirm_delivery: bool = True,
        commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS,
        fail_fast_default: bool = True,
        client_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
        consumer_options: dict[str, Any] | None = None,
        admin_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        if group_type not in ("classic", "share"):
            raise ValueError(f"group_type must be 'classic' or 'share', not {group_type!r}")
        self.group_type = group_type
        #: How topics and groups are named, and the topics this broker creates: the one owner of those values.
        self.layout = (ShareTopicLayout if group_type == "share" else TopicLayout)(
            topic_prefix=topic_prefix,
            group_id=group_id,
            partitions=partitions,
            replication_factor=replication_factor,
            min_insync_replicas=min_insync_replicas,
            dead_letter_retention_ms=dead_letter_retention_ms,
            create_topics=create_topics,
        )
        self.queues: set[str] = set()
        self.group_instance_id = group_instance_id or None
        self._process_index: int | None = None
        self.send_timeout_ms = send_timeout_ms
        self.confirm_delivery = confirm_delivery
        self.commit_interval_ms = commit_interval_ms
        self.fail_fast_default = fail_fast_default
        self.clients = KafkaClients(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            timeout_ms=send_timeout_ms,
            client_options=client_options,
            producer_options=producer_options,
            consumer_options=consumer_options,
            admin_options=admin_options,
        )
        self.admin = (ShareGroupAdmin if group_type == "share" else KafkaAdmin)(
            self.clients,
            self.layout,
            declared_queues=self.get_declared_queues,
            ensure_topics=self.ensure_topics,
            enqueue_confirmed=self._enqueue_confirmed,
            flush=self.flush,
            forget_failures=self._forget_failures,
        )
        #: The exceptions of the messages of each queue that failed in this process (for ``join``).
        self.failures_by_queue: defaultdict[str, list[BaseException | None]] = defaultdict(list)
        self._ready_topics: set[str] = set()
        self._scope = threading.local()

    @property
    def consumer_class(self) -> type[Consumer]:
        """The class of the consumers :meth:`consume` makes (share mode: of queues); a subclass swaps it."""
        return _KafkaShareConsumer if self.group_type == "share" else _KafkaConsumer

    @property
    def topic_prefix(self) -> str:
        """Put in front of every topic and consumer group name (the layout's)."""
        return self.layout.topic_prefix

    @property
    def partitions(self) -> int:
        """Partitions of the topics this broker creates (the layout's)."""
        return self.layout.partitions

    @property
    def min_insync_replicas(self) -> int | None:
        """``min.insync.replicas`` of the topics this broker creates (the layout's)."""
        return self.layout.min_insync_replicas

    def topic_for(self, queue_name: str) -> str:
        """The Kafka topic that carries ``queue_name`` (:meth:`.TopicLayout.topic_for`)."""
        return self.layout.topic_for(queue_name)

    def group_for(self, queue_name: str) -> str:
        """The consumer group that consumes ``queue_name`` (:meth:`.TopicLayout.group_for`)."""
        return self.layout.group_for(queue_name)

    def member_instance_id(self) -> str | None:
        """The ``group_instance_id`` this process's consumers join their groups with, or None for dynamic
        members: ``<topic_prefix><group_instance_id>-p<process index>``, one name per worker process of a
        host.  Each queue has a group of its own, so the name need not say which queue."""
        if self.group_instance_id is None:
            return None
        if self._process_index is None:
            self._process_index = compat.worker_process_index()
            if self._process_index is None:
                # Without the index, two processes of the host could take the same name and fence each
                # other out of the group: dynamic members are safe.
                self.logger.warning(
                    "group_instance_id %r ignored: this is not a worker process of Dramatiq's command line, "
                    "whose index tells a host's processes apart; the consumers join as dynamic members.",
                    self.group_instance_id,
                )
                self.group_instance_id = None
                return None
        return f"{self.topic_prefix}{self.group_instance_id}-p{self._process_index}"

    def close(self) -> None:
        """Close the producer (after delivering what it holds) and the admin client."""
        with contextlib.suppress(KafkaConnectionError):  # what is still undelivered is failed by the close
            self._flush_in_flight(self.send_timeout_ms / 1000)
        self.clients.close()

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue and its delay queue.

        A broker that already talks to Kafka (a running worker or web process) creates the queue's topics
        at once, before a worker's consumers subscribe to them, so that a fresh queue is live as soon as it
        is declared; otherwise (at import time) they are created on first use, and declaring needs no Kafka.
        """
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        if self.clients.connected:
            try:
                self.ensure_topics(queue_name)
            except KafkaConnectionError as e:
                self.logger.warning("Topics of %r not ready (tried again on first use): %s", queue_name, e)
        self.emit_after("declare_queue", queue_name)

        delayed_name = dq_name(queue_name)
        self.delay_queues.add(delayed_name)
        self.emit_after("declare_delay_queue", delayed_name)

    def get_declared_queues(self) -> set[str]:
        """The names of the queues declared on this broker."""
        return self.queues.copy()

    def ensure_topics(self, queue_name: str) -> None:
        """Make sure the queue's three topics exist: create them unless they exist (existing topics are used
        as they are), or, when creating is off or refused for want of rights, find them (:mod:`.topics`).

        Raises:
          QueueNotFound: If the queue hasn't been declared.
          MissingTopics: If a topic is missing and this broker may not create it; the message says how to.
          KafkaConnectionError: If Kafka cannot be reached or refuses to create a topic for another reason.
        """
        canonical = q_name(queue_name)
        if canonical in self._ready_topics:
            return
        if canonical not in self.queues:
            raise QueueNotFound(canonical)
        topics.ensure(self.clients, self.layout, canonical)
        self._ready_topics.add(canonical)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 1000) -> Consumer:
        """Create a consumer for a queue (or a delay queue) that joins the queue's consumer group.

        Parameters:
          queue_name(str): The queue to consume.
          prefetch(int): The most messages handed out and not yet acked.
          timeout(int): How long ``__next__`` waits for a message before it returns None, in milliseconds.

        Raises:
          QueueNotFound: If the queue hasn't been declared.
          KafkaConnectionError: If Kafka cannot be reached.
        """
        if q_name(queue_name) not in self.queues:
            raise QueueNotFound(queue_name)
        self.ensure_topics(queue_name)
        if self.group_type == "share" and queue_name != q_name(queue_name):
            return _KafkaConsumer(self, queue_name, prefetch, timeout)
        return self.consumer_class(self, queue_name, prefetch, timeout)  # type: ignore[call-arg]

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message and return once Kafka has acknowledged it (with ``confirm_delivery`` off, once
        the producer has it).

        Parameters:
          message(Message): The message to enqueue.  ``message.options["partition_key"]``, when set, is the
            record key, so that messages with the same key keep their order.
          delay(int): The minimum amount of time, in milliseconds, to delay the message by.  A message
            with a delay goes to the delay queue with an ``eta``, except one with a delay of 0 or less, which
            is due now and goes to the queue itself.

        Raises:
          QueueNotFound: If the queue hasn't been declared.
          KafkaConnectionError: If Kafka did not acknowledge the message within ``send_timeout_ms``.
        """
        return self.enqueue_many([message], delay=delay)[0]

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Enqueue many messages with one wait: return once Kafka has acknowledged all of them (with
        ``confirm_delivery`` off, at once).

        If this raises, some of the messages may have been delivered and others not.

        Raises:
          QueueNotFound: If a message's queue hasn't been declared.
          KafkaConnectionError: If Kafka did not acknowledge every message within ``send_timeout_ms``.
        """
        prepared: list[tuple[Message[Any], str]] = []
        for message in messages:
            queue_name = message.queue_name
            if q_name(queue_name) not in self.queues:
                raise QueueNotFound(queue_name)
            # A message due now skips the delay queue: a zero-backoff retry runs at once, and does not
            # wait for a fresh queue's delay consumer to join its group.
            if delay is not None and delay > 0:
                queue_name = dq_name(queue_name)
                message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
            self.ensure_topics(queue_name)
            prepared.append((message, self.topic_for(queue_name)))

        for message, _ in prepared:
            self.emit_before("enqueue", message, delay)
        futures = [
            self.clients.send(topic, m.encode(), m.options.get("partition_key")) for m, topic in prepared
        ]
        pending = getattr(self._scope, "pending", None)
        if pending is not None:
            # Inside ``batch()``: the block's end waits for these acks (and emits after_enqueue).
            pending.extend((f, message, delay) for f, (message, _) in zip(futures, prepared, strict=True))
            return [message for message, _ in prepared]
        if not self.confirm_delivery:
            # Nobody waits: a record Kafka refuses is logged and counted by its errback (producer's thread).
            producer = self.clients.existing_producer
            for future, (message, _) in zip(futures, prepared, strict=True):
                future.add_errback(self._delivery_failed, message, producer)
                self.emit_after("enqueue", message, delay)
            return [message for message, _ in prepared]
        self.clients.wait(futures)
        for message, _ in prepared:
            self.emit_after("enqueue", message, delay)
        return [message for message, _ in prepared]

    def _enqueue_confirmed(self, messages: list[Message[Any]]) -> None:
        with self.batch():  # which waits for the acks even with confirm_delivery off
            self.enqueue_many(messages)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Send what this thread enqueues inside the block, and wait for all the acks once, at its end.

        ``actor.send()`` inside the block returns as soon as the record is handed to the producer; leaving the
        block returns only once Kafka has acknowledged all of them.  Blocks nest (the outermost waits).
        The block waits even with ``confirm_delivery`` off: it is how to confirm a group of messages then.

        Raises:
          KafkaConnectionError: At the block's end, if Kafka did not acknowledge every message.

        >>> with broker.batch():
        ...     for user in users:
        ...         process_user.send(user)
        """
        if getattr(self._scope, "pending", None) is not None:
            yield
            return
        pending: list[tuple[Any, Message[Any], int | None]] = []
        self._scope.pending = pending
        try:
            yield
        finally:
            self._scope.pending = None
        self.clients.wait([future for future, _, _ in pending])
        for _, message, delay in pending:
            self.emit_after("enqueue", message, delay)

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue (or delay queue) that has not been consumed yet.

        Kafka cannot remove single records: this deletes the topic's records up to its end for every
        consumer group, as a ``DEL`` of a Redis list would.  With ``confirm_delivery`` off, the records in
        flight are delivered first, so that they are dropped too.
        """
        self._flush_in_flight()
        self.admin.delete_records(queue_name)
        self._forget_failures(queue_name)

    def _forget_failures(self, queue_name: str) -> None:
        self.failures_by_queue.pop(q_name(queue_name), None)

    def flush_all(self) -> None:
        """Drop every pending message of every declared queue, its delay queue and its failed messages."""
        for queue_name in list(self.queues):
            for name in (queue_name, dq_name(queue_name), xq_name(queue_name)):
                self.flush(name)

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None) -> None:
        """Wait until every message enqueued so far on a queue and its delay queue has been acked.

        That is, until the consumer groups of both topics have committed every partition up to its end.
        Meant for tests, as ``StubBroker.join`` is.

        Parameters:
          queue_name(str): The queue to wait on.
          timeout(int | None): The most time to wait, in milliseconds.
          fail_fast(bool | None): Whether to raise when messages of the queue failed.  None means
            ``fail_fast_default`` (True, as on ``StubBroker``).  A message that failed in this process
            (a worker in the test's own process) re-raises the actor's own exception, as ``StubBroker.join``
            does, until the queue is flushed; one that reached the failed-message topic from another process
            during the join raises :class:`MessageFailed` with its exception's type name and message.

        With ``confirm_delivery`` off, it first waits for the records in flight (a message Kafka refuses
        then is logged and counted, and not waited for).

        Raises:
          QueueJoinTimeout: When ``timeout`` milliseconds elapse first.
          QueueNotFound: If the queue hasn't been declared.
          KafkaConnectionError: With ``confirm_delivery`` off, if the producer could not deliver its records.
        """
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        if fail_fast is None:
            fail_fast = self.fail_fast_default
        self.ensure_topics(queue_name)
        failed_before = self.admin.failed_count(queue_name) if fail_fast else 0
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        try:
            self._flush_in_flight(None if deadline is None else deadline - time.monotonic())
        except KafkaConnectionError:
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name) from None
            raise
        # Queue, then delay queue, then queue again: a retry is put on the delay queue before the original
        # is acked, and a delayed message is put back on the queue before it is acked.
        order = (queue_name, dq_name(queue_name), queue_name)
        while not all(sum(self.admin.lag(name).values()) == 0 for name in order):
            if deadline is not None and time.monotonic() >= deadline:
                self.logger.warning("join(%r) timed out: %s", queue_name, self.admin.group_state(queue_name))
                raise QueueJoinTimeout(queue_name)
            time.sleep(_JOIN_POLL_S)
        if fail_fast:
            self._raise_failure(queue_name, failed_before)

    def _raise_failure(self, queue_name: str, failed_before: int) -> None:
        for exception in self.failures_by_queue.get(queue_name, ()):
            raise (exception or MessageFailed("", "a message failed")) from None
        failed_now = self.admin.failed_count(queue_name)
        if failed_now > failed_before:
            *_, last = self.admin.failed_messages(queue_name)
            raise MessageFailed.from_reason(last.reason)

    def dead_letter(self, message: MessageProxy, reason: str, *, origin: str = "") -> None:
        """Write a failed message to its queue's failed-message topic and wait for Kafka's acknowledgement.

        Raises:
          KafkaConnectionError: If Kafka did not acknowledge it.
        """
        canonical = q_name(message.queue_name)
        self.ensure_topics(canonical)
        self.dead_letter_raw(canonical, message._message.encode(), reason, origin)
        kept = self.failures_by_queue[canonical]
        if len(kept) < _KEPT_FAILURES:
            kept.append(message._exception)

    def dead_letter_raw(self, queue_name: str, value: bytes, reason: str, origin: str) -> None:
        """Write a record to a queue's failed-message topic (for records that are not Dramatiq messages)."""
        headers = failure_headers(queue_name, reason, origin)
        self.clients.wait([self.clients.send(self.topic_for(xq_name(queue_name)), value, None, headers)])

    def _delivery_failed(self, message: Message[Any], producer: Any, error: BaseException) -> None:
        """The errback of a message enqueued with ``confirm_delivery`` off that Kafka did not take."""
        self.logger.error(
            "Kafka did not take message %s (%s on %r), which is lost: %s",
            message.message_id,
            message.actor_name,
            message.queue_name,
            error,
        )
        delivery_errors().labels(message.queue_name, message.actor_name).inc()
        self.clients.producer_failed(producer)

    def _flush_in_flight(self, timeout_s: float | None = None) -> None:
        """With ``confirm_delivery`` off, wait until Kafka has taken (or refused) every record handed to the
        producer (:meth:`.KafkaClients.flush_producer`).

        Raises:
          KafkaConnectionError: If that takes longer than ``timeout_s``.
        """
        if not self.confirm_delivery:
            self.clients.flush_producer(timeout_s)
