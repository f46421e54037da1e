"""The kafka-python clients a broker shares: one producer and one admin client, made on first use and
replaced after a failure, and consumers made on demand; and the producer's sends, waited for or flushed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from dramatiq.logging import get_logger
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import (
    AuthorizationError,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
    UnknownError,
)

from . import compat
from .errors import KafkaConnectionError, MissingRight, RecordTooLarge

#: Time after which a silent consumer is dropped from its group, in milliseconds.
DEFAULT_SESSION_TIMEOUT_MS = 10_000
#: Time between two heartbeats of a consumer, in milliseconds.  A member learns that its group rebalances
#: only from its next heartbeat, and the group waits for its slowest member, so every join or leave holds
#: the whole group for up to this long: short, as a heartbeat costs next to nothing.
DEFAULT_HEARTBEAT_INTERVAL_MS = 500
#: Most time between two metadata refreshes of a consumer or the producer, in milliseconds: short, so that
#: partitions added to a topic while it is in use are sent to and consumed within seconds (kafka-python's
#: default, 5 minutes, left them idle that long).  Each refresh asks for the client's own topics only (a
#: consumer's subscription, the topics the producer sends to): one small request per client.
#: ``client_options`` (or ``producer_options``, ``consumer_options``) may set another.
DEFAULT_METADATA_MAX_AGE_MS = 5_000
#: Least time between two metadata requests of a consumer or the producer, in milliseconds: short, so that
#: a fresh queue's topic is found at once (while Kafka is unreachable, connection backoff spaces them out).
METADATA_BACKOFF_MS = 10
#: Longest pause between two connection attempts of a consumer that lost Kafka, in milliseconds: how late,
#: once Kafka answers again, a consumer that outlived the outage reconnects and rejoins its group
#: (kafka-python's default lets the pauses grow to 30 s, beyond what a worker may take to resume).
CONSUMER_RECONNECT_BACKOFF_MAX_MS = 5_000
#: Attempts of an admin call that fails because a group coordinator or a partition leader is on the move
#: (:data:`_MOVING`).
ADMIN_ATTEMPTS = 3
#: The pause before the second attempt, in seconds; it grows with each attempt.
ADMIN_RETRY_BACKOFF_S = 0.5
#: The pause before flushing the producer again when a flush gave up on a batch being sent again, in seconds.
_FLUSH_RETRY_S = 0.01
#: The errors of a node that is not (or not yet) the one in charge: asking again, after a fresh metadata
#: lookup, reaches the one that is.
_MOVING = (
    NotCoordinatorError,
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotLeaderForPartitionError,
    LeaderNotAvailableError,
)


class KafkaClients:
    """The clients of one broker.

    Parameters:
      bootstrap_servers(list[str]): Kafka's ``host:port`` addresses.
      client_id(str): Reported to Kafka by every client.
      timeout_ms(int): How long a request may take before the client gives up, in milliseconds.
      client_options(dict): kafka-python options for every client; each client takes the ones it knows.
      producer_options(dict), consumer_options(dict), admin_options(dict): Options for one kind of client.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str],
        client_id: str,
        timeout_ms: int,
        client_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
        consumer_options: dict[str, Any] | None = None,
        admin_options: dict[str, Any] | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.bootstrap_servers = list(bootstrap_servers)
        self.client_id = client_id
        self.timeout_ms = timeout_ms
        self.client_options = dict(client_options or {})
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        self.admin_options = dict(admin_options or {})
        self._lock = threading.Lock()
        self._admin_lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        # A producer that failed a record nobody waited for: its errback runs on the producer's own thread,
        # which cannot close it, so the next send replaces it.
        self._failed_producer: KafkaProducer | None = None

    def options(self, client: type, specific: dict[str, Any]) -> dict[str, Any]:
        """The options for a client of this kind: the common ones it knows, then ``specific``."""
        known = client.DEFAULT_CONFIG  # type: ignore[attr-defined]
        options = {k: v for k, v in self.client_options.items() if k in known}
        options.update(specific)
        options.setdefault("bootstrap_servers", self.bootstrap_servers)
        options.setdefault("client_id", self.client_id)
        # A client that cannot reach Kafka gives up after the timeout, not kafka-python's 30 s.
        if "bootstrap_timeout_ms" in known:
            options.setdefault("bootstrap_timeout_ms", self.timeout_ms)
        # kafka-python's own metrics are exported nowhere by this app, and recording them costs CPU on
        # every request; ``client_options={"metrics_enabled": True}`` turns them back on.
        if "metrics_enabled" in known:
            options.setdefault("metrics_enabled", False)
        # The admin client asks Kafka for a topic's partitions at each call that needs them: a periodic
        # refresh would gain it nothing.
        if client is not KafkaAdminClient and "metadata_max_age_ms" in known:
            options.setdefault("metadata_max_age_ms", DEFAULT_METADATA_MAX_AGE_MS)
        return options

    @property
    def connected(self) -> bool:
        """Whether a producer or an admin client has been made (this process talks to Kafka already)."""
        return self._producer is not None or self._admin is not None

    @property
    def existing_producer(self) -> KafkaProducer | None:
        """The shared producer if one has been made (and not discarded since), without making one."""
        return self._producer

    @property
    def producer(self) -> KafkaProducer:
        """The shared producer (kafka-python's producer is thread-safe).

        Raises:
          KafkaConnectionError: If Kafka cannot be reached.
        """
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    request_timeout = min(30_000, self.timeout_ms)
                    options = self.options(
                        KafkaProducer,
                        {
                            "acks": "all",
                            "enable_idempotence": True,
                            "linger_ms": 0,  # a send waits for its ack: lingering only adds latency
                            "max_block_ms": self.timeout_ms,
                            "request_timeout_ms": request_timeout,
                            "delivery_timeout_ms": self.timeout_ms + request_timeout,
                            **self.producer_options,
                        },
                    )
                    try:
                        producer = KafkaProducer(**options)
                    except KafkaError as e:
                        raise KafkaConnectionError(str(e)) from None
                    compat.set_metadata_backoff(producer, METADATA_BACKOFF_MS)
                    self._producer = producer
        return self._producer

    @property
    def admin(self) -> KafkaAdminClient:
        """The shared admin client.

        Raises:
          KafkaConnectionError: If Kafka cannot be reached.
        """
        if self._admin is None:
            with self._lock:
                if self._admin is None:
                    options = self.options(
                        KafkaAdminClient, {"request_timeout_ms": self.timeout_ms, **self.admin_options}
                    )
                    try:
                        self._admin = KafkaAdminClient(**options)
                    except KafkaError as e:
                        raise KafkaConnectionError(str(e)) from None
        return self._admin

    def admin_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an admin client method.

        A client that failed is replaced; a call that failed because a group coordinator or a partition
        leader is moving to another node (one node of a cluster went away) is made again on the fresh
        client, up to :data:`ADMIN_ATTEMPTS` times.  Kafka being unreachable is not retried here: callers
        such as ``/readyz`` want to know at once.

        Raises:
          MissingRight: If Kafka refused the call for want of a right.
          KafkaConnectionError: If the call failed.
        """
        for attempt in range(1, ADMIN_ATTEMPTS + 1):
            try:
                with self._admin_lock:
                    return getattr(self.admin, name)(*args, **kwargs)
            except AuthorizationError as e:
                # The client is fine; the app lacks a right (an ACL), and asking again will not grant it.
                raise MissingRight(f"{name}: {e}") from None
            except KafkaError as e:
                self.discard("_admin", self._admin)
                if not isinstance(e, _MOVING) or attempt == ADMIN_ATTEMPTS:
                    raise KafkaConnectionError(f"{name}: {e}") from None
                self.logger.debug("%s failed (%s); trying again", name, e)
                time.sleep(ADMIN_RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def send(
        self, topic: str, value: bytes, key: Any = None, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        """Hand a record to the shared producer, and return its future (see :meth:`wait`).

        Parameters:
          topic(str): The topic to send to.
          value(bytes): The record's value.
          key(Any): The record's key, sent as its text in UTF-8; None for none.
          headers(list[tuple[str, bytes]]): The record's headers.

        Raises:
          RecordTooLarge: If the record is larger than the producer may send.
          KafkaConnectionError: If the producer cannot take the record (Kafka cannot be reached).
        """
        encoded_key = None if key is None else str(key).encode("utf-8")
        failed, self._failed_producer = self._failed_producer, None
        if failed is not None:
            self.discard("_producer", failed)
        producer = self.producer
        try:
            return producer.send(topic, value=value, key=encoded_key, headers=headers or [])
        except KafkaError as e:
            if isinstance(e, MessageSizeTooLargeError):
                raise RecordTooLarge(f"cannot send to {topic!r}: {e}") from None
            self.discard("_producer", producer)
            raise KafkaConnectionError(f"cannot send to {topic!r}: {e}") from None

    def wait(self, futures: Iterable[Any]) -> None:
        """Wait for Kafka's acknowledgement of records :meth:`send` returned, all within the timeout.

        Raises:
          RecordTooLarge: If Kafka refused a record as too large.
          KafkaConnectionError: If Kafka did not acknowledge a record in time.
        """
        deadline = time.monotonic() + self.timeout_ms / 1000
        producer = self._producer
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as e:
                # Even a record Kafka refused as too large: the idempotent producer then fails all it holds.
                self.discard("_producer", producer)
                error = RecordTooLarge if isinstance(e, MessageSizeTooLargeError) else KafkaConnectionError
                raise error(f"Kafka did not acknowledge a message: {e}") from None

    def producer_failed(self, producer: KafkaProducer) -> None:
        """Have the next :meth:`send` replace ``producer``, which failed a record nobody waited for.

        Replaced whatever the error: kafka-python's idempotent producer takes even a record Kafka found too
        large as fatal, and fails every later send.
        """
        self._failed_producer = producer

    def flush_producer(self, timeout_s: float | None = None) -> None:
        """Wait until Kafka has taken (or refused) every record handed to the producer; by default for as
        long as the producer may take to deliver one.

        Raises:
          KafkaConnectionError: If that takes longer than ``timeout_s``.
        """
        producer = self._producer
        if producer is None:
            return
        if timeout_s is None:
            timeout_s = producer.config["delivery_timeout_ms"] / 1000
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))
                return
            except UnknownError:
                # kafka-python 3.0.12's flush gives up with "Future not done" when Kafka refused a batch as
                # too large and the producer split it to send again: flushing again waits for the halves.
                if time.monotonic() >= deadline:
                    raise KafkaConnectionError("Kafka did not take the messages in flight in time") from None
                time.sleep(_FLUSH_RETRY_S)
            except KafkaError as e:
                raise KafkaConnectionError(f"Kafka did not take the messages in flight: {e}") from None

    def discard(self, attribute: str, failed: Any = None) -> None:
        """Drop the producer (``"_producer"``) or admin client (``"_admin"``) after a failure.

        kafka-python 3.0.12's clients do not always recover by themselves once Kafka has restarted (a
        metadata refresh can wait forever), so a client that failed is replaced rather than trusted.  With
        ``failed``, only that client is dropped (not a fresh one another thread built meanwhile).
        """
        with self._lock:
            client = getattr(self, attribute)
            if client is None or (failed is not None and client is not failed):
                return
            setattr(self, attribute, None)
        try:
            client.close(timeout=0) if attribute == "_producer" else client.close()
        except Exception as e:  # a broken client may fail to close; it is dropped all the same
            self.logger.debug("Closing a failed Kafka client: %s", e)

    def new_consumer(self, *topics: str, **specific: Any) -> KafkaConsumer:
        """A new consumer; ``specific`` options override the broker's.

        Raises:
          KafkaConnectionError: If Kafka cannot be reached.
        """
        options = self.options(
            KafkaConsumer,
            {
                "enable_auto_commit": False,
                "auto_offset_reset": "earliest",
                **self.consumer_options,
                **specific,
            },
        )
        # Tunables: the client options (``KAFKA_OPTIONS``) may set them.
        options.setdefault("session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS)
        options.setdefault("heartbeat_interval_ms", DEFAULT_HEARTBEAT_INTERVAL_MS)
        options.setdefault("reconnect_backoff_max_ms", CONSUMER_RECONNECT_BACKOFF_MAX_MS)
        try:
            return KafkaConsumer(*topics, **options)
        except KafkaError as e:
            raise KafkaConnectionError(str(e)) from None

    def close(self) -> None:
        """Close the producer (after delivering what it holds) and the admin client."""
        with self._lock:
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        if producer is not None:
            producer.close(timeout=self.timeout_ms / 1000)
        if admin is not None:
            admin.close()
