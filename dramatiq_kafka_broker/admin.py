"""Operations on a broker's topics and groups that are not the transport: lag, replicas, partitions,
failed messages.

The web's health and metrics, the ``dlq`` and ``partitions`` commands and ``KafkaBroker.join`` use them
through ``broker.admin``.  :class:`KafkaAdmin` asks Kafka through the broker's clients and names topics and
groups by the broker's :class:`~.topics.TopicLayout`; it calls back into the broker only for what the broker
owns: its declared queues, its topics' readiness, sending, flushing, and the failures kept for ``join``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.logging import get_logger
from dramatiq.message import Message
from kafka import TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError

from .clients import KafkaClients
from .deadletters import FailedMessage, FailedRanges, check_ranges
from .errors import KafkaConnectionError, MissingRight
from .offsets import decode_acked
from .topics import TopicLayout

#: How often :meth:`KafkaAdmin.grow_partitions` looks whether Kafka's metadata shows the new partitions, in
#: seconds.
GROWTH_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class PartitionGrowth:
    """What :meth:`KafkaAdmin.grow_partitions` did to one topic.

    Attributes:
      topic(str): The topic's full name, prefix included.
      before(int): Its partitions before.
      after(int): Its partitions now; ``before`` when it had as many already.
    """

    topic: str
    before: int
    after: int

    @property
    def grown(self) -> bool:
        """Whether partitions were added to the topic."""
        return self.after > self.before


class KafkaAdmin:
    """What an operator asks of a broker's queues; each broker makes its own, ``broker.admin``.

    Parameters:
      clients(KafkaClients): The broker's clients, which these operations ask Kafka with.
      layout(TopicLayout): How the broker names its topics and consumer groups.
      declared_queues(Callable[[], Iterable[str]]): The queues declared on the broker.
      ensure_topics(Callable[[str], None]): Make sure a declared queue's topics exist (``ensure_topics``).
      enqueue_confirmed(Callable[[list[Message]], None]): Enqueue messages and return once Kafka has
        acknowledged all of them, even with ``confirm_delivery`` off.
      flush(Callable[[str], None]): Drop every message of a queue's topic (``flush``).
      forget_failures(Callable[[str], None]): Forget the failures of a queue that ``join`` re-raises.

    >>> broker.admin.lag("users")
    {0: 0, 1: 3, 2: 0}
    """

    def __init__(
        self,
        clients: KafkaClients,
        layout: TopicLayout,
        *,
        declared_queues: Callable[[], Iterable[str]],
        ensure_topics: Callable[[str], None],
        enqueue_confirmed: Callable[[list[Message[Any]]], None],
        flush: Callable[[str], None],
        forget_failures: Callable[[str], None],
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.clients = clients
        self.layout = layout
        self._declared_queues = declared_queues
        self._ensure_topics = ensure_topics
        self._enqueue_confirmed = enqueue_confirmed
        self._flush = flush
        self._forget_failures = forget_failures

    # -- health -------------------------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise :class:`KafkaConnectionError` unless Kafka answers a metadata request and every declared
        queue has its topics (made now when the broker may create them).

        Raises:
          MissingTopics: If a queue's topics are missing and the broker may not create them.
          KafkaConnectionError: If Kafka cannot be reached.
        """
        self.clients.admin_call("list_topics")
        for queue_name in sorted(self._declared_queues()):
            self._ensure_topics(queue_name)

    def lag(self, queue_name: str) -> dict[int, int]:
        """Messages of a queue (or ``.DQ``) not yet acked by its consumer group, per partition."""
        starts, ends = self._bounds(self.layout.topic_for(queue_name))
        group = self.layout.group_for(queue_name)
        committed = self.clients.admin_call("list_group_offsets", {group: list(ends)}).get(group, {})
        lags = {}
        for tp, end in ends.items():
            start = starts.get(tp, 0)
            done = committed.get(tp)
            if done is None or done.offset < 0:
                lags[tp.partition] = max(0, end - start)
                continue
            position = max(done.offset, start)
            acked_above = sum(1 for o in decode_acked(done.offset, done.metadata) if position <= o < end)
            lags[tp.partition] = max(0, end - position - acked_above)
        return lags

    def under_replicated(self, queue_name: str) -> dict[str, int]:
        """For the queue's three topics (queue, ``.DQ``, ``.XQ``), how many partitions have fewer in-sync
        replicas than replicas: a Kafka node is away or behind, and one more loss could stop writes."""
        canonical = q_name(queue_name)
        self._ensure_topics(canonical)
        names = {self.layout.topic_for(n): n for n in (canonical, dq_name(canonical), xq_name(canonical))}
        described = self.clients.admin_call("describe_topics", list(names))
        return {
            names[topic["name"]]: sum(
                1 for p in topic["partitions"] if len(p["isr_nodes"]) < len(p["replica_nodes"])
            )
            for topic in described
        }

    def group_state(self, queue_name: str) -> str:
        """Each topic's lag and its consumer group's state and members' partitions (for a timed-out join:
        to tell work not done from work nobody was given)."""
        parts = []
        for name in (queue_name, dq_name(queue_name)):
            try:
                lag = self.lag(name)
                group = self.layout.group_for(name)
                described = self.clients.admin_call("describe_groups", [group]).get(group, {})
                members = [
                    sorted(
                        p
                        for assigned in (m.get("member_assignment") or {}).get("assigned_partitions", [])
                        for p in assigned["partitions"]
                    )
                    for m in described.get("members", [])
                ]
                parts.append(f"{name}: lag {lag}, group {described.get('group_state')} members {members}")
            except Exception as error:  # a diagnostic must not hide what it diagnoses
                parts.append(f"{name}: cannot inspect ({type(error).__name__}: {error})")
        return "; ".join(parts)

    # -- partitions ---------------------------------------------------------------------------------------
    def partition_counts(self, queue_name: str) -> dict[str, int]:
        """The partitions of the queue's topic and of its ``.DQ`` topic, by topic name (prefix included).

        Parameters:
          queue_name(str): A declared queue.

        Raises:
          QueueNotFound: If the queue hasn't been declared.
          MissingTopics: If the queue's topics are missing and the broker may not create them.
          KafkaConnectionError: If Kafka cannot be reached.
        """
        canonical = q_name(queue_name)
        self._ensure_topics(canonical)
        names = [self.layout.topic_for(name) for name in (canonical, dq_name(canonical))]
        described = self.clients.admin_call("describe_topics", names)
        found = {topic["name"]: len(topic["partitions"]) for topic in described}
        return {name: found.get(name, 0) for name in names}

    def grow_partitions(self, queue_name: str, count: int) -> list[PartitionGrowth]:
        """Give the queue's topic and its ``.DQ`` topic ``count`` partitions each, while they are in use.

        Running producers and consumers see the new partitions at their next metadata refresh (within
        ``metadata_max_age_ms``: :data:`~.clients.DEFAULT_METADATA_MAX_AGE_MS` with this broker's
        clients); each consumer group then rebalances, and the new partitions, which have no committed
        offset, are read from their first message.  A ``partition_key`` maps to its partition modulo the
        partition count, so after growing, a key's new messages may go to another partition than its older
        ones, and the two may be processed out of order.  The failed-message (``.XQ``) topic keeps its
        partitions: no consumer group shares it out.  A topic that has ``count`` partitions already is left
        as it is, and nothing is changed unless every topic can grow.

        Parameters:
          queue_name(str): A declared queue.
          count(int): The partitions each topic should have.

        Returns:
          What was done to each topic (queue first, then ``.DQ``).

        Raises:
          ValueError: If ``count`` is less than a topic's partitions (Kafka cannot remove partitions), or
            less than 1.
          QueueNotFound: If the queue hasn't been declared.
          MissingTopics: If the queue's topics are missing and the broker may not create them.
          MissingRight: If Kafka refused for want of a right (ALTER on the topics).
          KafkaConnectionError: If Kafka cannot be reached or refused for another reason.
        """
        if count < 1:
            raise ValueError(f"a topic has at least one partition, not {count}")
        before = self.partition_counts(queue_name)
        above = {topic: n for topic, n in before.items() if n > count}
        if above:
            had = ", ".join(f"{topic!r} has {n}" for topic, n in above.items())
            raise ValueError(
                f"cannot give the topics of {queue_name!r} {count} partitions ({had}): Kafka can add "
                "partitions to a topic but never remove them"
            )
        wanted = {topic: count for topic, n in before.items() if n < count}
        if wanted:
            try:
                self.clients.admin_call("create_partitions", wanted, timeout_ms=self.clients.timeout_ms)
            except MissingRight as e:
                raise MissingRight(
                    f"this app lacks the ALTER right on {', '.join(map(repr, wanted))} (Kafka's "
                    f"CreatePartitions), which adding partitions needs; grant it or ask the Kafka service's "
                    f"operator ({e})"
                ) from None
            self._wait_for_partitions(wanted)
            for topic in wanted:
                self.logger.info("Topic %s grown from %d to %d partitions", topic, before[topic], count)
        return [PartitionGrowth(topic, n, max(n, count)) for topic, n in before.items()]

    def _wait_for_partitions(self, wanted: dict[str, int]) -> None:
        """Wait until Kafka's metadata shows each topic of ``wanted`` with its count of partitions, each with
        a leader: Kafka answers CreatePartitions before its metadata shows them, and a command that returned
        would otherwise still see, and show, the old counts.

        Raises:
          KafkaConnectionError: If the metadata does not show them within the clients' timeout.
        """
        deadline = time.monotonic() + self.clients.timeout_ms / 1000
        while True:
            described = self.clients.admin_call("describe_topics", list(wanted))
            ready = {
                topic["name"]
                for topic in described
                if len(topic["partitions"]) == wanted.get(topic["name"])
                and all(p["leader_id"] >= 0 for p in topic["partitions"])
            }
            if ready >= wanted.keys():
                return
            if time.monotonic() > deadline:
                raise KafkaConnectionError(
                    f"Kafka took the new partitions of {sorted(wanted.keys() - ready)} but its metadata does "
                    f"not show them after {self.clients.timeout_ms} ms"
                )
            time.sleep(GROWTH_POLL_S)

    # -- failed messages ----------------------------------------------------------------------------------
    def failed_count(self, queue_name: str) -> int:
        """How many failed messages the queue's failed-message topic holds."""
        self._ensure_topics(queue_name)
        starts, ends = self._bounds(self.layout.topic_for(xq_name(queue_name)))
        return sum(end - starts.get(tp, 0) for tp, end in ends.items())

    def failed_ranges(self, queue_name: str) -> FailedRanges:
        """Per partition of the queue's failed-message topic, the offsets of the messages it holds now:
        ``(first, end)``.  What an operator was shown is bounded by such ranges, and so is what
        :meth:`replay_failed` and :meth:`purge_failed` then do."""
        self._ensure_topics(queue_name)
        starts, ends = self._bounds(self.layout.topic_for(xq_name(queue_name)))
        return {tp.partition: (starts.get(tp, 0), end) for tp, end in ends.items()}

    def failed_messages(
        self, queue_name: str, *, limit: int | None = None, within: FailedRanges | None = None
    ) -> Iterator[FailedMessage]:
        """Read the queue's failed messages, oldest first per partition, without consuming them.

        ``within`` keeps the reading to those ranges (and to what the topic still holds of them); the
        messages read of a partition are always a run from its range's first offset.
        """
        topic = self.layout.topic_for(xq_name(queue_name))
        ranges = self.failed_ranges(queue_name)
        if within is not None:
            ranges = {
                p: (max(first, ranges[p][0]), min(end, ranges[p][1]))
                for p, (first, end) in within.items()
                if p in ranges
            }
        remaining = {TopicPartition(topic, p): end for p, (first, end) in ranges.items() if end > first}
        if not remaining:
            return
        reader = self.clients.new_consumer(group_id=None, enable_auto_commit=False)
        try:
            reader.assign(list(remaining))
            for tp in remaining:
                reader.seek(tp, ranges[tp.partition][0])
            seen = 0
            deadline = time.monotonic() + self.clients.timeout_ms / 1000
            while remaining and time.monotonic() < deadline:
                for tp, records in reader.poll(timeout_ms=200).items():
                    for record in records:
                        if tp not in remaining or record.offset >= remaining[tp]:
                            continue
                        yield FailedMessage.from_record(record)
                        seen += 1
                        if limit is not None and seen >= limit:
                            return
                        if record.offset + 1 >= remaining[tp]:
                            del remaining[tp]
        except KafkaError as e:
            raise KafkaConnectionError(f"cannot read {topic!r}: {e}") from None
        finally:
            reader.close(autocommit=False)

    def replay_failed(
        self, queue_name: str, *, limit: int | None = None, within: FailedRanges | None = None
    ) -> tuple[int, int]:
        """Put failed messages back on their queue, with their retry count reset, and remove them.

        Records that are not Dramatiq messages cannot be replayed: they stay (see ``purge_failed``), and so
        does everything after them in their partition.  ``within`` (the ranges an operator was shown) keeps
        the replay to those messages, whatever arrived since.  Returns (replayed, left).

        Raises:
          FailedMessagesChanged: If messages of ``within`` were removed since (see :func:`check_ranges`).
          UnknownFailedMessages: If ``within`` names messages the topic never held.
        """
        if within is not None:
            check_ranges(self.failed_ranges(queue_name), within)
        replayable: dict[int, list[FailedMessage]] = defaultdict(list)
        blocked: set[int] = set()
        left = 0
        for failed in self.failed_messages(queue_name, limit=limit, within=within):
            if failed.message is None or failed.partition in blocked:
                blocked.add(failed.partition)
                left += 1
                continue
            replayable[failed.partition].append(failed)
        if replayable:
            # Before any copy is enqueued: without the right to delete them, the failed records would stay,
            # and a second replay would run the messages twice.
            self.require_delete(xq_name(queue_name))
        fresh = [
            _fresh_copy(item.message, queue_name)
            for items in replayable.values()
            for item in items
            if item.message is not None
        ]
        if fresh:
            # Acknowledged, even with confirm_delivery off: the failed records are removed next.
            self._enqueue_confirmed(fresh)
            topic = self.layout.topic_for(xq_name(queue_name))
            cut = {TopicPartition(topic, p): items[-1].offset + 1 for p, items in replayable.items()}
            self.clients.admin_call("delete_records", cut, timeout_ms=self.clients.timeout_ms)
            # Replayed, they are no longer failed: ``join`` stops re-raising their exceptions.
            self._forget_failures(queue_name)
        return len(fresh), left

    def purge_failed(self, queue_name: str, *, within: FailedRanges | None = None) -> int:
        """Delete the failed messages of a queue: every one, or those of ``within`` (the ranges an operator
        was shown, whatever arrived since); returns how many.

        Raises:
          FailedMessagesChanged: If messages of ``within`` were removed since (see :func:`check_ranges`).
          UnknownFailedMessages: If ``within`` names messages the topic never held.
        """
        if within is None:
            count = self.failed_count(queue_name)
            self._flush(xq_name(queue_name))
            return count
        check_ranges(self.failed_ranges(queue_name), within)
        topic = self.layout.topic_for(xq_name(queue_name))
        cut = {TopicPartition(topic, p): end for p, (first, end) in within.items() if end > first}
        if cut:
            self.require_delete(xq_name(queue_name))
            self.clients.admin_call("delete_records", cut, timeout_ms=self.clients.timeout_ms)
            self._forget_failures(queue_name)
        return sum(end - first for first, end in within.values())

    # -- records ------------------------------------------------------------------------------------------
    def delete_records(self, queue_name: str) -> None:
        """Delete every record of a queue's (or ``.DQ``'s, ``.XQ``'s) topic, for every consumer group."""
        self._ensure_topics(queue_name)
        ends = self._offsets_of(self._partitions(self.layout.topic_for(queue_name)), OffsetSpec.LATEST)
        if ends:
            self.require_delete(queue_name)
            self.clients.admin_call("delete_records", ends, timeout_ms=self.clients.timeout_ms)

    def require_delete(self, queue_name: str) -> None:
        """Raise :class:`MissingRight` unless this app may delete records of the queue's (or ``.DQ``'s,
        ``.XQ``'s) topic, by deleting none: up to one partition's first offset, which changes nothing.

        Managed Kafka services give a tenant the rights its operator chose; replaying and purging failed
        messages need ``DELETE`` on the ``.XQ`` topic (Kafka's DeleteRecords).
        """
        topic = self.layout.topic_for(queue_name)
        partitions = self._partitions(topic)[:1]
        starts = self._offsets_of(partitions, OffsetSpec.EARLIEST)
        try:
            if starts:
                self.clients.admin_call("delete_records", starts, timeout_ms=self.clients.timeout_ms)
        except MissingRight as e:
            raise MissingRight(
                f"this app lacks the DELETE right on topic {topic!r} (Kafka's DeleteRecords), which "
                "replaying and purging failed messages need; grant it (an ACL: --operation Delete "
                f"--topic {topic}) or ask the Kafka service's operator ({e})"
            ) from None

    def _partitions(self, topic: str) -> list[TopicPartition]:
        described = self.clients.admin_call("describe_topics", [topic])
        return [TopicPartition(topic, p["partition_index"]) for d in described for p in d["partitions"]]

    def _offsets_of(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        found = self.clients.admin_call("list_partition_offsets", dict.fromkeys(partitions, spec))
        return {tp: value.offset for tp, value in found.items()}

    def _bounds(self, topic: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """(first offset, end offset) of every partition of ``topic``, describing the topic once."""
        partitions = self._partitions(topic)
        return self._offsets_of(partitions, OffsetSpec.EARLIEST), self._offsets_of(
            partitions, OffsetSpec.LATEST
        )


def _fresh_copy(message: Message[Any], queue_name: str) -> Message[Any]:
    """A failed message as it is replayed: on its queue, with its retries, traceback and eta dropped."""
    dropped = {"retries", "traceback", "eta"}
    options = {k: v for k, v in message.options.items() if k not in dropped}
    return dataclasses.replace(message, queue_name=q_name(queue_name), options=options)
