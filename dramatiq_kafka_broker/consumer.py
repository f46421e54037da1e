"""The consumer of one queue's topic in its consumer group."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, NoReturn

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import DecodeError
from dramatiq.logging import get_logger
from dramatiq.message import Message
from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    GroupAuthorizationFailedError,
    KafkaError,
    RebalanceInProgressError,
)

from . import compat
from .assignment import Assignment
from .clients import DEFAULT_SESSION_TIMEOUT_MS, METADATA_BACKOFF_MS
from .deadletters import failure_reason
from .errors import KafkaConnectionError, MissingRight
from .rebalance import _RebalanceListener

if TYPE_CHECKING:
    from .broker import KafkaBroker

#: Longest slice of a single ``poll``, in milliseconds, so that acks are committed while idle.
POLL_SLICE_MS = 50
#: Longest wait of a new consumer for its topic's metadata before it asks Kafka for every topic's, in seconds.
METADATA_WAIT_S = 1.0
#: Longest ``poll`` while the consumer (re)joins its group, in milliseconds: long enough for a join to end
#: inside it (see :meth:`_KafkaConsumer._poll`).
JOIN_POLL_MS = 1000
#: Longest a consumer may spend rejoining its group before it gives up and the worker makes a new one, in
#: seconds.
REJOIN_PATIENCE_S = 3 * DEFAULT_SESSION_TIMEOUT_MS / 1000
#: Consumers of one group in a row, each made while Kafka answered, that may give up rejoining before the
#: worker process exits (see :meth:`_KafkaConsumer.give_up`).
REJOIN_ATTEMPTS = 3
#: Exit code of a worker process whose consumer cannot recover in-process (Dramatiq's own code for "the
#: broker could not be used").
EXIT_CONSUMER_STUCK = 3

#: Consumers of each group in this process that gave up rejoining since one of them last settled.
_rejoin_failures: dict[str, int] = {}
#: The groups in which another member took this process's ``group_instance_id``: their consumers in this
#: process join as dynamic members from then on, so that the two never take the name back and forth.
_fenced_groups: set[str] = set()


class _KafkaMessageProxy(MessageProxy):
    """A message, with where it came from so that its ack reaches the right partition state."""

    def __init__(
        self,
        message: Message[Any],
        partition: TopicPartition,
        offset: int,
        epoch: int,
        consumer: _KafkaConsumer | None = None,
    ) -> None:
        super().__init__(message)
        self.partition = partition
        self.offset = offset
        self.epoch = epoch
        self.consumer = consumer
        self.redelivery_wanted = False

    def redeliver_later(self) -> None:
        """Leave the message un-acked: its consumer, asked to ack it, makes way for a new one instead, which
        fetches the message again from the last commit once Kafka answers.

        For a message whose hand-off to Kafka failed: waiting for Kafka this way spends none of the
        message's retries (which are there for bad data and broken databases) and never fails it.
        """
        self.redelivery_wanted = True


class _KafkaConsumer(Consumer):
    """Consumes one topic in its consumer group.

    ``__next__`` and ``close`` run on the worker's consumer thread, the only one that touches the
    kafka-python consumer (which is not thread-safe); ``ack`` and ``nack`` run on worker threads and only
    put the acked offset on a queue that ``__next__`` reads.  What the consumer holds -- its partitions,
    what it knows of each, the messages fetched and not handed out -- is its :class:`.Assignment`, which
    says what to hand out and what to commit; the consumer makes the calls to Kafka.
    """

    def __init__(self, broker: KafkaBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.topic = broker.topic_for(queue_name)
        self.assignment: Assignment[_KafkaMessageProxy] = Assignment()
        self._acks: SimpleQueue[tuple[TopicPartition, int, int]] = SimpleQueue()
        self._acked_event = threading.Event()
        self._redeliver = False
        self._last_commit = time.monotonic()
        self._settled_at = time.monotonic()
        self.group = broker.group_for(queue_name)
        self.instance_id = None if self.group in _fenced_groups else broker.member_instance_id()
        try:
            self.kafka = broker.clients.new_consumer(
                group_id=self.group,
                group_instance_id=self.instance_id,
                max_poll_records=min(500, self.prefetch),
            )
        except KafkaConnectionError:
            # Kafka is away: consumers that could not rejoin meanwhile were waiting for it, not stuck.
            _rejoin_failures.pop(self.group, None)
            raise
        if self.instance_id is not None:
            self.logger.info("Joining group %s as static member %s.", self.group, self.instance_id)
        compat.set_metadata_backoff(self.kafka, METADATA_BACKOFF_MS)
        self.listener = _RebalanceListener(self._partitions_revoked, self._partitions_assigned)
        self.kafka.subscribe([self.topic], listener=self.listener)
        try:
            # Wait for the metadata of the subscription before the first poll joins the group.  A group
            # leader that joins without the topic's partitions assigns nothing until its next metadata
            # refresh, minutes later; one that joins before the answer for its new subscription has come
            # assigns them, but then takes the answer for a change and makes the group rebalance again,
            # which held a fresh queue's first messages and retries meanwhile.
            deadline = time.monotonic() + METADATA_WAIT_S
            while compat.known_partitions(self.kafka, self.topic) is None:
                if time.monotonic() > deadline:
                    self.kafka.partitions_for_topic(self.topic)  # asks Kafka for every topic's
                    break
                time.sleep(0.002)
        except KafkaError as e:
            self.kafka.close(autocommit=False)
            raise KafkaConnectionError(f"no metadata for {self.topic!r}: {e}") from None

    def ack(self, message: MessageProxy) -> None:
        assert isinstance(message, _KafkaMessageProxy)
        if message.consumer is not None and message.consumer is not self:
            # Fetched by the consumer this one replaced, which never committed it: this one fetches it
            # again (its partition states are not that consumer's, whatever their epochs say).
            return
        if message.redelivery_wanted:
            self._redeliver = True
        else:
            self._acks.put((message.partition, message.offset, message.epoch))
        self._acked_event.set()

    def nack(self, message: MessageProxy) -> None:
        """Move the message to its queue's failed-message topic, then ack it."""
        assert isinstance(message, _KafkaMessageProxy)
        origin = f"{message.partition.topic}:{message.partition.partition}:{message.offset}"
        self.broker.dead_letter(message, failure_reason(message._exception), origin=origin)
        self.ack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Nothing to do: messages that were not acked are not committed, so their partition's next
        owner (this process after a restart, or another) receives them again."""

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        try:
            while True:
                if self._redeliver:
                    # Raised here, the worker closes this consumer (committing what was acked) and makes a
                    # new one once Kafka answers; the new one fetches what was left un-acked.
                    raise KafkaConnectionError(
                        f"a message of {self.topic!r} could not be handed on to Kafka; it is fetched again"
                    )
                if self.instance_id is not None and compat.fenced(self.kafka):
                    self._fenced()
                self._drain_acks()
                if (
                    self.assignment.dirty
                    and (time.monotonic() - self._last_commit) * 1000 >= self.broker.commit_interval_ms
                ):
                    self._commit()
                message = self.assignment.pop()
                if message is not None:
                    return message

                remaining_ms = int((deadline - time.monotonic()) * 1000)
                room = self.prefetch - self.assignment.outstanding()
                if room <= 0:
                    self._pause()
                    # Keeps the group membership alive; a rebalance may hand us new, unpaused partitions.
                    self.assignment.take(self._poll(0), self._message_of)
                    if remaining_ms <= 0:
                        return None
                    self._acked_event.wait(min(POLL_SLICE_MS, remaining_ms) / 1000)
                    self._acked_event.clear()
                    continue

                self._resume()
                batch = self._poll(max(0, min(POLL_SLICE_MS, remaining_ms)), room)
                if batch:
                    self.assignment.take(batch, self._message_of)
                    continue
                if self.assignment.dirty:
                    self._commit()
                if remaining_ms <= 0:
                    return None
        except GroupAuthorizationFailedError:
            # A plan whose consumer groups are made by the operator (Heroku's multi-tenant plans).
            group = self.group.removeprefix(self.broker.topic_prefix)
            raise MissingRight(
                f"the app may not use the consumer group {self.group!r} (READ on the group is missing); "
                f"make it with the service's tools, on Heroku `heroku kafka:consumer-groups:create {group}`"
            ) from None
        except FencedInstanceIdError:
            self._fenced()
        except KafkaError as e:
            raise KafkaConnectionError(f"consuming {self.topic!r}: {e}") from None

    def close(self) -> None:
        """Commit what was acked and leave the group; what was not acked is delivered again.

        The kafka-python consumer is closed even when the commit fails (as it does while Kafka is away): one
        left open stays a member of the group -- its IO thread heartbeats, or its JoinGroup stays pending
        -- without ever polling, and the group waits for it at every rebalance (up to
        ``max_poll_interval_ms``) while no consumer gets a partition.
        """
        try:
            self._drain_acks()
            self._commit(force=True)
        except KafkaError as e:
            self.logger.warning("Committing before closing the consumer of %s: %s", self.topic, e)
        try:
            self.kafka.close(autocommit=False, timeout_ms=self.broker.send_timeout_ms)
        except Exception as e:
            # Not known to be out of the group, it could hold the group's rebalances: only a new process
            # is sure to be rid of it.
            self.give_up(f"the consumer of {self.topic!r} could not be closed: {type(e).__name__}: {e}")

    def give_up(self, reason: str) -> NoReturn:
        """End the worker process, with :data:`EXIT_CONSUMER_STUCK`, for a consumer that cannot recover
        in-process.

        A worker process never lives on consuming nothing: when its consumer cannot be closed, or one new
        consumer after another (:data:`REJOIN_ATTEMPTS`, each made while Kafka answered) cannot rejoin its
        group, the process exits non-zero.  Dramatiq's main process then stops the other worker processes
        and exits with that code, so the supervisor (Heroku, systemd, Docker's restart policy) starts the
        workers again; what they held un-acked is delivered again.
        """
        self.logger.critical("%s; exiting (code %d) to be restarted.", reason, EXIT_CONSUMER_STUCK)
        logging.shutdown()  # (flush what is logged: os._exit skips it)
        os._exit(EXIT_CONSUMER_STUCK)

    def _fenced(self) -> NoReturn:
        """Make way for a dynamic consumer: another member joined the group with this consumer's
        ``group_instance_id``, and Kafka put it in this one's place.

        Joining again under the same name would put this process back in the other's place, and the other
        would do the same: the two would take the partitions from each other for as long as both run, and a
        process that exited instead would do it again at each restart its supervisor makes.  As a dynamic
        member, this process goes on sharing the work and fences nobody; what it held un-acked is delivered
        again to the partitions' owner.

        Raises:
          KafkaConnectionError: Always, so that the worker closes this consumer and makes a new one.
        """
        _fenced_groups.add(self.group)
        self.logger.critical(
            "Another worker uses group_instance_id %s in group %s and took this consumer's place: this "
            "process goes on as a dynamic member of the group. Give each worker host a name of its own.",
            self.instance_id,
            self.group,
        )
        raise KafkaConnectionError(f"fenced in group {self.group!r} by another {self.instance_id!r}")

    # -- rebalances (relayed by the listener, on kafka-python's IO thread) --------------------------------
    async def _partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        """Commit what was acked of the partitions taken away, then give them up."""
        revoked = self.assignment.held(partitions)
        if not revoked:
            return
        self._drain_acks()
        offsets = self.assignment.offsets_to_commit(revoked)
        if offsets:
            try:
                await compat.commit_offsets(self.kafka, offsets, self.broker.send_timeout_ms)
                self.assignment.committed(offsets)
            except KafkaError as e:
                self.logger.warning("Commit of revoked partitions of %s failed: %s", self.topic, e)
        # Unacked messages of those partitions go to their next owner.
        self.assignment.revoke(revoked)
        self.logger.info("Partitions revoked from %s: %s", self.topic, sorted(tp.partition for tp in revoked))

    async def _partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        """Take the new assignment, with each partition's committed offset and the acks above it."""
        commits = await compat.committed_offsets(self.kafka, partitions)
        for tp, position in self.assignment.assign(partitions, commits).items():
            self.kafka.seek(tp, position)
        self.logger.info(
            "Partitions assigned to %s: %s", self.topic, sorted(tp.partition for tp in partitions)
        )
        if not partitions:
            self.logger.warning(
                "No partition of %s is left for this consumer: its group has more consumers than the topic "
                "has partitions, so some worker processes idle. Run fewer, or give the topic more partitions "
                "(kafka-topics.sh --alter --partitions N; KAFKA_PARTITIONS for new topics).",
                self.topic,
            )

    # -- internals ----------------------------------------------------------------------------------------
    def _drain_acks(self) -> None:
        """Record the acks that worker threads queued."""
        while True:
            try:
                tp, offset, epoch = self._acks.get_nowait()
            except Empty:
                return
            self.assignment.ack(tp, offset, epoch)

    def _poll(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        now = time.monotonic()
        if not compat.rebalance_under_way(self.kafka):
            self._settled_at = now
            _rejoin_failures.pop(self.group, None)
        else:
            # Let the join end inside this poll: kafka-python 3.0.12 drops a join that completes after the
            # poll awaiting it timed out and starts another, so a fresh queue's group rebalanced twice and
            # held its first messages and retries meanwhile.
            timeout_ms = max(timeout_ms, JOIN_POLL_MS)
            # A consumer that has not settled in this long is replaced: the worker restarts it, and what it
            # held un-acked is delivered again.  When its replacements cannot rejoin either, the process is
            # beyond repair (see give_up).
            if now - self._settled_at > REJOIN_PATIENCE_S:
                failures = _rejoin_failures[self.group] = _rejoin_failures.get(self.group, 0) + 1
                reason = (
                    f"the consumer of {self.topic!r} has not rejoined its group in {REJOIN_PATIENCE_S:.0f} s"
                )
                if failures >= REJOIN_ATTEMPTS:
                    self.give_up(f"{reason}, {failures} consumers in a row")
                raise KafkaConnectionError(reason)
        return self.kafka.poll(timeout_ms=timeout_ms, max_records=max_records)

    def _message_of(self, tp: TopicPartition, record: Any, epoch: int) -> _KafkaMessageProxy | None:
        """The message of a fetched record, or None for one that is not a Dramatiq message (moved to the
        failed topic)."""
        try:
            message = Message.decode(record.value)
        except DecodeError as e:
            self._reject_undecodable(tp, record, e)
            return None
        return _KafkaMessageProxy(message, tp, record.offset, epoch, self)

    def _reject_undecodable(self, tp: TopicPartition, record: Any, error: Exception) -> None:
        origin = f"{tp.topic}:{tp.partition}:{record.offset}"
        self.logger.error("Record %s is not a Dramatiq message; moving it to the failed topic.", origin)
        self.broker.dead_letter_raw(
            q_name(self.queue_name), record.value or b"", f"DecodeError: {error}", origin
        )

    def _commit(self, *, force: bool = False) -> None:
        """Commit every partition up to its lowest unacked offset (with the acked ones above it)."""
        if not (self.assignment.dirty or force):
            return
        offsets = self.assignment.collect_commit()
        if not offsets:
            return
        try:
            # Bounded: during a Kafka outage the consumer thread must give up and let the worker restart it.
            self.kafka.commit(offsets=offsets, timeout_ms=self.broker.send_timeout_ms)
        except (CommitFailedError, RebalanceInProgressError) as e:
            # (kafka-python raises the second itself, without asking Kafka, while this member rejoins:
            # the commit waits for the next call rather than tearing the consumer down)
            self.assignment.commit_failed()
            self.logger.warning("Commit on %s failed (a rebalance is under way): %s", self.topic, e)
            return
        self._last_commit = time.monotonic()
        self.assignment.committed(offsets)

    # Which partitions are paused is asked of kafka-python each time, never remembered here: a rebalance
    # keeps the paused flag of every partition that stays assigned and gives new ones none, so a flag of our
    # own went stale, and a consumer paused at a rebalance could sit on its kept partitions for good.
    def _pause(self) -> None:
        unpaused = self.kafka.assignment() - self.kafka.paused()
        if unpaused:
            self.kafka.pause(*unpaused)

    def _resume(self) -> None:
        paused = self.kafka.paused()
        if paused:
            self.kafka.resume(*paused)
