"""The consumer of one queue's topic in its share group (KIP-932).

Any number of these read the same partitions: Kafka hands each record to one member at a time, under a lock
(``group.share.record.lock.duration.ms``), and the member answers for each record: ACCEPT (done), RELEASE
(deliver it again) or REJECT.  Dramatiq's contract maps onto that: ``ack`` accepts once what the message
sent on is durable, ``nack`` accepts once the message is on the failed-message topic, ``requeue`` and a
shutdown release.  Kafka counts the deliveries of each record and archives -- drops, for us -- one past the
group's ``share.delivery.count.limit``: the consumer moves a record to the failed-message topic itself on
its last delivery instead, and renews the locks of the records it holds, so that a long-running actor does
not lose its record to another member.  Renewing takes Kafka 4.3 (ShareAcknowledge version 2); on 4.1 and
4.2 an actor that runs longer than the lock has its message delivered again elsewhere meanwhile, and its
ACCEPT is refused (logged).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import DecodeError
from dramatiq.logging import get_logger
from dramatiq.message import Message
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from ..deadletters import failure_reason
from ..errors import KafkaConnectionError
from .admin import ShareGroupConfig, prepare_share_group, share_group_error
from .client import ShareClient
from .membership import ShareMembership
from .protocol import ACCEPT, RELEASE, request_class
from .session import (
    CLOSE,
    ShareSession,
    acknowledge_request,
    acquired_ranges,
    fetch_request,
    records_by_offset,
)
from .state import AckBatch, ShareAssignment

if TYPE_CHECKING:
    from ..broker import KafkaBroker

#: Longest wait of one ShareFetch for records, in milliseconds, so that acks go out promptly while idle.
POLL_SLICE_MS = 50
#: Share of the prefetch that must be free before the consumer fetches again (unless it holds nothing).
FETCH_WHEN_FREE = 0.25
#: Longest an acknowledgement waits for a fetch to carry it before a ShareAcknowledge of its own, in ms.
ACK_LINGER_MS = 20
#: Most deliveries of one record this consumer runs; the one after it is moved to the failed-message topic
#: (the group's ``share.delivery.count.limit`` is set above it where the app may).
DELIVERY_LIMIT = 5
#: Lock duration assumed until Kafka says (its default ``group.share.record.lock.duration.ms``), in ms.
DEFAULT_LOCK_MS = 30_000
#: Share of a lock's duration after which the records still held are renewed.
RENEW_AFTER = 0.5
#: Kafka's error codes after which a partition's leader is looked up again: NOT_LEADER_OR_FOLLOWER,
#: UNKNOWN_TOPIC_OR_PARTITION, UNKNOWN_TOPIC_ID, FENCED_LEADER_EPOCH, KAFKA_STORAGE_ERROR.
_MOVED = {6, 3, 100, 74, 56}
#: SHARE_SESSION_NOT_FOUND, INVALID_SHARE_SESSION_EPOCH: the leader lost the session.
_SESSION_LOST = {122, 123}

#: The share group configs this process has prepared, by group (checked and set once per process).
_prepared: dict[str, ShareGroupConfig] = {}
#: Member ids of this process's closed consumers, by group, for its next consumers to join as: a consumer
#: that could not leave its group (Kafka was away) is replaced at once by its successor, where a new id
#: would leave its partitions with the departed member until its session times out (45 s by default).
_free_member_ids: dict[str, list[str]] = {}
_lock = threading.Lock()


class _ShareMessageProxy(MessageProxy):
    """A message, with the record it came from and how many times Kafka delivered it."""

    def __init__(
        self,
        message: Message[Any],
        partition: TopicPartition,
        offset: int,
        delivery_count: int,
        consumer: _KafkaShareConsumer,
    ) -> None:
        super().__init__(message)
        self.partition = partition
        self.offset = offset
        self.delivery_count = delivery_count
        self.consumer = consumer
        self.redelivery_wanted = False

    def redeliver_later(self) -> None:
        """Release the record rather than accept it: for a message whose hand-off to Kafka failed, which
        runs again, spending none of its Dramatiq retries (it spends one of Kafka's deliveries)."""
        self.redelivery_wanted = True


class _KafkaShareConsumer(Consumer):
    """Consumes one topic in its share group.

    ``__next__``, ``requeue`` and ``close`` run on the worker's consumer thread, the only one that talks to
    Kafka; ``ack`` and ``nack`` run on worker threads and only queue the outcome, which ``__next__``
    sends (on its next ShareFetch, or in a ShareAcknowledge while no fetch goes out).  What the consumer
    holds is its :class:`.ShareAssignment`; its group membership is its :class:`.ShareMembership`.
    """

    def __init__(self, broker: KafkaBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.topic = broker.topic_for(queue_name)
        self.group = broker.group_for(queue_name)
        self.state: ShareAssignment[_ShareMessageProxy] = ShareAssignment()
        self._outcomes: SimpleQueue[tuple[_ShareMessageProxy, int]] = SimpleQueue()
        self._wake = threading.Event()
        self._sessions: dict[int, ShareSession] = {}
        self._leaders: dict[int, int] = {}
        self._topic_id: Any = None
        self._lock_ms = DEFAULT_LOCK_MS
        self._closed = False
        # Fetch once this many messages may be taken (or nothing is held): fewer, fuller fetches, each
        # carrying the acknowledgements gathered meanwhile, while the worker's queue still has work.
        self._fetch_at = max(1, math.ceil(self.prefetch * FETCH_WHEN_FREE))
        self._acks_owed_since: float | None = None
        self.config = _prepare(broker, self.group)
        self.net = ShareClient(broker.clients, broker.send_timeout_ms)
        with _lock:
            free = _free_member_ids.get(self.group)
            self.member_id = free.pop() if free else uuid.uuid4().hex
        try:
            self._renewable = self.net.api_version(request_class("ShareAcknowledge")) >= 2
            self._refresh_leaders()
            self.membership = ShareMembership(self.net, self.group, self.member_id, self.topic, self.logger)
            self._heartbeat()
        except KafkaError as e:
            self._give_back_member_id()
            self.net.close()
            raise KafkaConnectionError(f"joining share group {self.group!r}: {e}") from None
        except Exception:
            self._give_back_member_id()
            self.net.close()
            raise
        self.logger.info("Joined share group %s as member %s.", self.group, self.member_id)

    # -- Dramatiq's consumer contract ---------------------------------------------------------------------
    def ack(self, message: MessageProxy) -> None:
        assert isinstance(message, _ShareMessageProxy)
        self._outcomes.put((message, RELEASE if message.redelivery_wanted else ACCEPT))
        self._wake.set()

    def nack(self, message: MessageProxy) -> None:
        """Move the message to its queue's failed-message topic, then accept it: the failure is ours to keep
        (Kafka's REJECT would drop it)."""
        assert isinstance(message, _ShareMessageProxy)
        origin = f"{message.partition.topic}:{message.partition.partition}:{message.offset}"
        self.broker.dead_letter(message, failure_reason(message._exception), origin=origin)
        self._outcomes.put((message, ACCEPT))
        self._wake.set()

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Release the messages, so that Kafka delivers them again (to this member or another) at once."""
        for message in messages:
            assert isinstance(message, _ShareMessageProxy)
            self._outcomes.put((message, RELEASE))

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        try:
            while True:
                self._wake.clear()  # (before draining: an outcome queued from here on wakes the wait below)
                self._drain_outcomes()
                if self.membership.heartbeat_due():
                    self._heartbeat()
                self._renew_locks()
                message = self.state.pop()
                if message is not None:
                    return message
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                room = self.prefetch - self.state.outstanding()
                if room > 0 and self.state.wanted() and (room >= self._fetch_at or room == self.prefetch):
                    self._fetch(room, max(0, min(POLL_SLICE_MS, remaining_ms)))
                    if self.state.buffered():
                        continue
                elif (
                    not (self._acks_due(final=remaining_ms <= 0) and self._acknowledge()) and remaining_ms > 0
                ):
                    self._wake.wait(min(POLL_SLICE_MS, remaining_ms) / 1000)
                if remaining_ms <= 0:
                    return None
        except KafkaError as e:
            raise KafkaConnectionError(
                f"consuming {self.topic!r} in share group {self.group!r}: {e}"
            ) from None

    def close(self) -> None:
        """Send the outcomes known, release what was fetched and not handed out, close the share sessions
        and leave the group.  What is still running when the consumer closes is delivered again."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain_outcomes()
            released = self.state.release_unhanded()
            if released:
                self.logger.debug("Releasing %d fetched messages of %s.", released, self.topic)
            self._acknowledge(close=True)
        except (KafkaError, KafkaConnectionError) as e:
            self.logger.warning("Acknowledging before closing the consumer of %s: %s", self.topic, e)
        try:
            self.membership.leave()
        except (KafkaError, KafkaConnectionError) as e:
            self.logger.warning("Leaving share group %s: %s", self.group, e)
        finally:
            self.net.close()
            self._give_back_member_id()

    def _give_back_member_id(self) -> None:
        with _lock:
            _free_member_ids.setdefault(self.group, []).append(self.member_id)

    # -- membership -----------------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        assigned = self.membership.heartbeat(self._topic_id)
        if assigned is not None:
            self.state.assign({TopicPartition(self.topic, p) for p in assigned})
            if assigned:
                self.logger.info("Share group %s assigned %s: %s", self.group, self.topic, assigned)
            else:
                self.logger.debug("Share group %s assigned this member no partition (yet).", self.group)

    def _refresh_leaders(self) -> None:
        leaders = self.net.topic_leaders(self.topic)
        self._topic_id = leaders.topic_id
        self._leaders = leaders.leaders

    # -- fetching -------------------------------------------------------------------------------------------
    def _by_leader(self, partitions: Iterable[TopicPartition]) -> dict[int, set[TopicPartition]]:
        grouped: dict[int, set[TopicPartition]] = {node: set() for node in self._sessions}
        for tp in partitions:
            leader = self._leaders.get(tp.partition, -1)
            if leader < 0:
                self._refresh_leaders()
                leader = self._leaders.get(tp.partition, -1)
            if leader >= 0:
                grouped.setdefault(leader, set()).add(tp)
        return grouped

    def _fetch(self, room: int, wait_ms: int) -> None:
        """One ShareFetch to each leader of the partitions wanted, with the acknowledgements owed."""
        requests, sent_acks = {}, {}
        for leader, wanted in self._by_leader(self.state.wanted()).items():
            session = self._sessions.setdefault(leader, ShareSession())
            if not wanted and not session.partitions:
                continue  # (nothing to fetch there, nor to forget)
            acks = self.state.collect_acks(session.partitions & wanted) if session.open else {}
            sent_acks[leader] = acks
            requests[leader] = fetch_request(
                group=self.group,
                member_id=self.member_id,
                session=session,
                topic_id=self._topic_id,
                wanted=wanted,
                acks=acks,
                max_records=room,
                max_wait_ms=wait_ms,
            )
        if not requests:
            return
        self._flush_if_unconfirmed(sent_acks)
        self._acks_owed_since = None if not self.state.has_acks() else self._acks_owed_since
        answers = self._send(requests, self.broker.send_timeout_ms + wait_ms)
        now = time.monotonic()
        for leader, answer in answers.items():
            if not self._session_answered(leader, answer):
                continue
            if answer.acquisition_lock_timeout_ms > 0:
                self._lock_ms = answer.acquisition_lock_timeout_ms
            for topic in answer.responses:
                for data in topic.partitions:
                    self._take(TopicPartition(self.topic, data.partition_index), data, now)

    def _take(self, tp: TopicPartition, data: Any, now: float) -> None:
        if data.acknowledge_error_code:
            self.logger.warning(
                "Kafka did not take acknowledgements of %s (error %d: %s): those records come again.",
                tp,
                data.acknowledge_error_code,
                data.acknowledge_error_message,
            )
        if data.error_code:
            self._partition_error(tp, data.error_code, data.error_message)
            return
        acquired = acquired_ranges(data)
        if acquired:
            self.state.take(tp, acquired, records_by_offset(data.records, acquired), self._message_of, now)

    def _message_of(self, tp: TopicPartition, record: Any, delivery_count: int) -> _ShareMessageProxy | None:
        """The message of an acquired record, or None for one moved to the failed-message topic (accepted
        then): a record that is not a Dramatiq message, or one on its last delivery."""
        origin = f"{tp.topic}:{tp.partition}:{record.offset}"
        try:
            message = Message.decode(record.value)
        except DecodeError as e:
            self.logger.error("Record %s is not a Dramatiq message; moving it to the failed topic.", origin)
            self.broker.dead_letter_raw(
                q_name(self.queue_name), record.value or b"", f"DecodeError: {e}", origin
            )
            self.state.acknowledge(tp, record.offset, ACCEPT)
            return None
        if delivery_count > DELIVERY_LIMIT or delivery_count >= self.config.delivery_count_limit:
            reason = (
                f"DeliveryLimitExceeded: delivered {delivery_count} times with no outcome (worker crashes, "
                f"locks that ran out, releases at shutdown); Kafka drops a record past its delivery limit"
            )
            self.logger.error(
                "Message %s (%s) %s; moving it to the failed topic.", message.message_id, origin, reason
            )
            self.broker.dead_letter_raw(q_name(self.queue_name), record.value, reason, origin)
            self.state.acknowledge(tp, record.offset, ACCEPT)
            return None
        return _ShareMessageProxy(message, tp, record.offset, delivery_count, self)

    # -- acknowledging ---------------------------------------------------------------------------------------
    def _drain_outcomes(self) -> None:
        """Owe Kafka the outcomes that worker threads queued (those of this consumer's own records)."""
        while True:
            try:
                message, kind = self._outcomes.get_nowait()
            except Empty:
                return
            owed = message.consumer is self and self.state.acknowledge(
                message.partition, message.offset, kind
            )
            if owed and self._acks_owed_since is None:
                self._acks_owed_since = time.monotonic()

    def _acks_due(self, *, final: bool) -> bool:
        """Whether the acknowledgements owed should go out on their own now."""
        if not self.state.has_acks():
            return False
        since = self._acks_owed_since
        return final or since is None or (time.monotonic() - since) * 1000 >= ACK_LINGER_MS

    def _acknowledge(self, *, close: bool = False) -> bool:
        """A ShareAcknowledge to each leader with acknowledgements owed (to every open session when
        closing, which closes it); False when there was none to send."""
        requests, sent_acks = {}, {}
        for leader, session in self._sessions.items():
            if not session.open:
                continue
            acks = self.state.collect_acks(session.partitions)
            if not acks and not close:
                continue
            sent_acks[leader] = acks
            epoch = CLOSE if close else session.epoch
            requests[leader] = acknowledge_request(
                group=self.group, member_id=self.member_id, epoch=epoch, topic_id=self._topic_id, acks=acks
            )
        if not requests:
            return False
        self._flush_if_unconfirmed(sent_acks)
        self._acks_owed_since = None if not self.state.has_acks() else self._acks_owed_since
        for leader, answer in self._send(requests, self.broker.send_timeout_ms).items():
            if self._session_answered(leader, answer):
                for topic in answer.responses:
                    for data in topic.partitions:
                        if data.error_code:
                            self._partition_error(
                                TopicPartition(self.topic, data.partition_index),
                                data.error_code,
                                data.error_message,
                            )
        return True

    def _renew_locks(self) -> None:
        """Renew the locks of the records held for more than half a lock's duration (Kafka 4.3's RENEW)."""
        if not self._renewable:
            return
        now = time.monotonic()
        due = self.state.due_for_renewal(now, self._lock_ms / 1000 * RENEW_AFTER)
        if not due:
            return
        requests, renewals = {}, {}
        for leader, session in self._sessions.items():
            mine = {tp: batches for tp, batches in due.items() if tp in session.partitions}
            if mine and session.open:
                renewals[leader] = mine
                requests[leader] = acknowledge_request(
                    group=self.group,
                    member_id=self.member_id,
                    epoch=session.epoch,
                    topic_id=self._topic_id,
                    acks=mine,
                    renew=True,
                )
        if not requests:
            return
        for leader, answer in self._send(requests, self.broker.send_timeout_ms).items():
            if self._session_answered(leader, answer):
                self.state.renewed(renewals[leader], now)

    def _flush_if_unconfirmed(self, acks: dict[int, dict[TopicPartition, list[AckBatch]]]) -> None:
        # What an acked message sent on must be durable before its ACCEPT: with confirm_delivery off, the
        # producer's records in flight are waited for first.
        if not self.broker.confirm_delivery and any(acks.values()):
            self.broker.clients.flush_producer(self.broker.send_timeout_ms / 1000)

    # -- answers ---------------------------------------------------------------------------------------------
    def _send(self, requests: dict[int, Any], timeout_ms: int) -> dict[int, Any]:
        """Send requests of the sessions, one per leader, and return the answers that came.

        A leader that could not be reached or did not answer loses its session (its epoch is unknown now):
        what was held or owed of its partitions is Kafka's to deliver again, and the leaders are looked up
        again.  The other leaders' sessions go on.

        Raises:
          KafkaConnectionError: If no leader answered (Kafka is away: the worker makes a new consumer).
        """
        answers = self.net.call_many(requests, timeout_ms)
        failed = {
            leader: error for leader, error in answers.items() if isinstance(error, KafkaConnectionError)
        }
        for leader, error in failed.items():
            self.logger.warning("Share session of %s with node %d lost: %s", self.group, leader, error)
            self.state.drop(self._sessions[leader].reset())
            del answers[leader]
        if failed:
            self._leaders.clear()
            if not answers:
                raise next(iter(failed.values()))
        return answers

    def _session_answered(self, leader: int, answer: Any) -> bool:
        """Take a session's answer: False when the request failed as a whole (the session is reset)."""
        session = self._sessions[leader]
        if not answer.error_code:
            session.advance()
            return True
        if answer.error_code in _SESSION_LOST:
            self.logger.info("Leader %d lost the share session of %s; opening another.", leader, self.group)
        else:
            setup_error = share_group_error(
                self.group, answer.error_code, answer.error_message, topic=self.topic
            )
            if setup_error is not None:
                raise setup_error
            self.logger.warning("Leader %d refused a share request (error %d).", leader, answer.error_code)
        self.state.drop(session.reset())
        return False

    def _partition_error(self, tp: TopicPartition, code: int, message: str | None) -> None:
        setup_error = share_group_error(self.group, code, message, topic=self.topic)
        if setup_error is not None:
            raise setup_error
        if code in _MOVED:
            self._leaders.clear()
            self._refresh_leaders()
        else:
            self.logger.warning("Partition %s answered error %d: %s", tp, code, message)


def _prepare(broker: KafkaBroker, group: str) -> ShareGroupConfig:
    """Check that the cluster takes share groups and set the group's configs, once per process and group."""
    with _lock:
        config = _prepared.get(group)
        if config is None:
            config = _prepared[group] = prepare_share_group(
                broker.clients, group, delivery_limit=DELIVERY_LIMIT
            )
        return config
