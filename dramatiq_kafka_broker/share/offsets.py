"""Where a share group stands on its partitions, and its lag: DescribeShareGroupOffsets (KIP-932, KIP-1226).

A share group commits no offsets.  Its coordinator keeps, per partition, a *start offset*: below it every
record was acknowledged or archived; from it on, records are delivered, locked, or acknowledged one by one.
Its lag, the records of a partition not yet settled, is what Kafka 4.3 reports (the response's ``Lag``,
version 1); where it cannot tell, or on version 0, it is the end offset minus the start offset (records
acknowledged above the start offset then count as lag, as they do not in Kafka's figure).  A partition the
group has no state for (no member has fetched from it yet) is lagging by everything it holds: the group
starts at the earliest offset (``share.auto.offset.reset=earliest``, which
:func:`.admin.prepare_share_group` sets).

:class:`ShareGroupAdmin` is :class:`~..admin.KafkaAdmin` for a broker in share mode: its ``lag`` (read by
``join``, the web's ``/metrics`` and overview, and autoscalers through them), ``ping`` (``/readyz``: also
whether the cluster has share groups) and ``group_state`` read a queue's share group instead of a consumer
group (a delay queue keeps its consumer group: ``.layout.ShareTopicLayout``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dramatiq.common import dq_name, q_name
from kafka.errors import KafkaError

from .. import compat
from ..admin import KafkaAdmin
from ..clients import ADMIN_ATTEMPTS, ADMIN_RETRY_BACKOFF_S, KafkaClients
from ..errors import KafkaConnectionError
from . import protocol
from .admin import check_share_support, share_group_error

#: The message this module sends; its JSON definitions are in ``schemas/``.
MESSAGE = "DescribeShareGroupOffsets"
#: A group Kafka has no state for yet: GROUP_ID_NOT_FOUND.
_NO_GROUP = 69
#: COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: asked again, with the
#: coordinator looked up again, up to ``ADMIN_ATTEMPTS`` times.
_MOVING = {14, 15, 16}


@dataclasses.dataclass(frozen=True)
class SharePartitionOffsets:
    """Where a share group stands on one partition.

    Attributes:
      partition(int): The partition.
      start_offset(int): The share-partition start offset; -1 when the group has no state for it yet.
      lag(int): Records not yet acknowledged or archived, as Kafka counts them; -1 when it does not say.
    """

    partition: int
    start_offset: int
    lag: int


def describe_share_group_offsets(
    clients: KafkaClients, group_id: str, topic: str, partitions: list[int]
) -> dict[int, SharePartitionOffsets]:
    """The share group's start offset (and Kafka's lag) for each of ``partitions`` of ``topic``.

    A group that does not exist yet answers -1 for each partition.

    Raises:
      MissingRight: If Kafka refused for want of a right (DESCRIBE on the GROUP, on the TOPIC).
      KafkaConnectionError: If Kafka cannot be reached, or answered another error.
    """
    request_class = protocol._message_class(f"{MESSAGE}Request")
    protocol._message_class(f"{MESSAGE}Response")  # registered, to decode the answer
    request = request_class(
        groups=[
            request_class.DescribeShareGroupOffsetsRequestGroup(
                group_id=group_id,
                topics=[
                    request_class.DescribeShareGroupOffsetsRequestGroup.DescribeShareGroupOffsetsRequestTopic(
                        topic_name=topic, partitions=list(partitions)
                    )
                ],
            )
        ]
    )
    for attempt in range(1, ADMIN_ATTEMPTS + 1):
        response = _send(clients, group_id, request)
        moving = {g.error_code for g in response.groups} & _MOVING
        if not moving or attempt == ADMIN_ATTEMPTS:
            return _offsets(response, group_id, topic, partitions)
        # The group's coordinator moved or is loading (a node restarted): a fresh admin client looks it
        # up again.
        clients.discard("_admin")
        time.sleep(ADMIN_RETRY_BACKOFF_S * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _offsets(
    response: Any, group_id: str, topic: str, partitions: list[int]
) -> dict[int, SharePartitionOffsets]:
    found = {p: SharePartitionOffsets(p, -1, -1) for p in partitions}
    for group in response.groups:
        _raise_for(group_id, group.error_code, group.error_message, topic, allow=_NO_GROUP)
        if group.error_code == _NO_GROUP:
            return found
        for described in group.topics:
            for p in described.partitions:
                _raise_for(group_id, p.error_code, p.error_message, topic)
                lag = getattr(p, "lag", -1)
                found[p.partition_index] = SharePartitionOffsets(
                    p.partition_index, p.start_offset, -1 if lag is None else lag
                )
    return found


def share_lag(
    offsets: dict[int, SharePartitionOffsets], starts: dict[int, int], ends: dict[int, int]
) -> dict[int, int]:
    """Per partition, the records a share group has not settled: Kafka's figure, else end - start offset.

    Parameters:
      offsets(dict[int, SharePartitionOffsets]): :func:`describe_share_group_offsets`' answer.
      starts(dict[int, int]): Each partition's first offset (records below were deleted).
      ends(dict[int, int]): Each partition's end offset.
    """
    lags = {}
    for partition, end in ends.items():
        first = starts.get(partition, 0)
        described = offsets.get(partition)
        if described is None or described.start_offset < 0:
            lags[partition] = max(0, end - first)
        elif described.lag >= 0:
            lags[partition] = described.lag
        else:
            lags[partition] = max(0, end - max(described.start_offset, first))
    return lags


class ShareGroupAdmin(KafkaAdmin):
    """:class:`~..admin.KafkaAdmin` for a broker whose queues are consumed by share groups: lag, health and
    group state read the share group (the same group name, ``TopicLayout.group_for``).  Built as
    ``KafkaAdmin`` is.

    >>> broker.admin.lag("users")
    {0: 0, 1: 3}
    """

    def ping(self) -> None:
        """As :meth:`KafkaAdmin.ping`, and raise :class:`~.admin.ShareGroupsUnavailable` unless the cluster
        has share groups (asked without joining one)."""
        super().ping()
        check_share_support(self.clients)

    def lag(self, queue_name: str) -> dict[int, int]:
        """Messages of a queue not yet settled by its share group, per partition; of a delay queue (``.DQ``,
        which keeps its consumer group) not yet acked, as :meth:`KafkaAdmin.lag` counts them."""
        if queue_name != q_name(queue_name):
            return super().lag(queue_name)
        starts, ends = self._bounds(self.layout.topic_for(queue_name))
        topic = self.layout.topic_for(queue_name)
        group = self.layout.group_for(queue_name)
        offsets = describe_share_group_offsets(
            self.clients, group, topic, sorted(tp.partition for tp in ends)
        )
        return share_lag(
            offsets,
            {tp.partition: o for tp, o in starts.items()},
            {tp.partition: o for tp, o in ends.items()},
        )

    def group_state(self, queue_name: str) -> str:
        """The queue's lag and its share group's start offsets, and its delay queue's lag and consumer group
        (for a timed-out join)."""
        parts = []
        for name in (queue_name, dq_name(queue_name)):
            if name != q_name(name):
                parts.append(super().group_state(name).partition("; ")[0])
                continue
            try:
                topic, group = self.layout.topic_for(name), self.layout.group_for(name)
                partitions = sorted(tp.partition for tp in self._partitions(topic))
                offsets = describe_share_group_offsets(self.clients, group, topic, partitions)
                starts = {p: o.start_offset for p, o in sorted(offsets.items())}
                parts.append(f"{name}: lag {self.lag(name)}, share group start offsets {starts}")
            except Exception as error:  # a diagnostic must not hide what it diagnoses
                parts.append(f"{name}: cannot inspect ({type(error).__name__}: {error})")
        return "; ".join(parts)


def _send(clients: KafkaClients, group_id: str, request: Any) -> Any:
    try:
        return compat.send_to_group_coordinator(clients.admin, group_id, request)
    except KafkaError as e:
        # A refusal comes as early as the coordinator's lookup (FindCoordinator needs DESCRIBE on the group).
        setup = share_group_error(group_id, getattr(e, "errno", -1), str(e), operation="Describe")
        if setup is not None:
            raise setup from None
        clients.discard("_admin")
        raise KafkaConnectionError(f"{MESSAGE} for {group_id!r}: {e}") from None


def _raise_for(
    group_id: str, code: int, message: str | None, topic: str, *, allow: int | None = None
) -> None:
    if code == 0 or code == allow:
        return
    setup = share_group_error(group_id, code, message, topic=topic, operation="Describe")
    if setup is not None:
        raise setup
    raise KafkaConnectionError(f"{MESSAGE} for {group_id!r} failed: error {code} ({message})")
