"""A share consumer's membership of its group: joining, heartbeating, leaving (ShareGroupHeartbeat).

The group coordinator assigns the partitions (KIP-932 has no client-side assignor and no stop-the-world
rebalance): a member joins with epoch 0 and its subscription, then heartbeats with the epoch it was given,
and learns its partitions -- by topic id -- from the answer whenever they change.  A member the coordinator
no longer knows (UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH: it missed its session timeout) joins again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from kafka.errors import KafkaError, for_code

from ..errors import KafkaConnectionError
from .admin import share_group_error
from .protocol import request_class

if TYPE_CHECKING:
    from .client import ShareClient

#: Time between heartbeats while the member has no partition yet, in seconds: the coordinator assigns a
#: new member's partitions a heartbeat or two after it joins, and a fresh queue's first messages wait for it.
JOINING_HEARTBEAT_S = 0.2
#: The epoch that joins, and the one that leaves.
JOIN, LEAVE = 0, -1
#: NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS: ask again (elsewhere).
_COORDINATOR_MOVED = {16, 15, 14}
#: UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH: the coordinator dropped the member, which joins again.
_DROPPED = {25, 110}


class ShareMembership:
    """One member of a share group, as its heartbeats keep it.

    Parameters:
      net(ShareClient): The consumer's network client.
      group(str): The share group.
      member_id(str): The member's id, chosen by the member and kept for its life.
      topic(str): The one topic it subscribes to.
      logger(Logger): Where to say what happens.

    Raises:
      KafkaError: If the coordinator cannot be found.
      KafkaConnectionError: If Kafka cannot be reached.
    """

    def __init__(
        self, net: ShareClient, group: str, member_id: str, topic: str, logger: logging.Logger
    ) -> None:
        self.net = net
        self.group = group
        self.member_id = member_id
        self.topic = topic
        self.logger = logger
        self.epoch = JOIN
        self.interval_s = JOINING_HEARTBEAT_S
        self.has_partitions = False
        self._next_at = 0.0
        self.coordinator = net.find_coordinator(group)

    def heartbeat_due(self) -> bool:
        """Whether it is time for the next heartbeat."""
        return time.monotonic() >= self._next_at

    def heartbeat(self, topic_id: Any) -> list[int] | None:
        """Heartbeat (joining, when not a member): the partitions of ``topic_id`` assigned, when the
        assignment changed, else None.

        Raises:
          KafkaSetupError: If the group refuses the member for a reason an operator must mend (a right, a
            group id a classic group holds, a Kafka without share groups).
          KafkaConnectionError: If the coordinator could not be reached or answered another error.
        """
        cls = request_class("ShareGroupHeartbeat")
        request = cls(
            group_id=self.group,
            member_id=self.member_id,
            member_epoch=self.epoch,
            rack_id=None,
            subscribed_topic_names=[self.topic] if self.epoch == JOIN else None,
        )
        answer = self.net.call(self.coordinator, request)
        self._next_at = time.monotonic() + (self.interval_s if self.has_partitions else JOINING_HEARTBEAT_S)
        code = answer.error_code
        if code in _COORDINATOR_MOVED:
            # (asked again at each heartbeat until it settles: logged once it is found elsewhere)
            self.logger.debug("The coordinator of share group %s is not ready (error %d).", self.group, code)
            self._find_coordinator()
            return None
        if code in _DROPPED:
            self.logger.warning(
                "Share group %s dropped member %s (error %d): joining again.",
                self.group,
                self.member_id,
                code,
            )
            self.epoch, self._next_at, self.has_partitions = JOIN, 0.0, False
            return []
        if code:
            setup_error = share_group_error(self.group, code, answer.error_message, topic=self.topic)
            if setup_error is not None:
                raise setup_error
            raise KafkaConnectionError(f"heartbeat of share group {self.group!r}: {for_code(code).__name__}")
        self.epoch = answer.member_epoch
        self.interval_s = max(answer.heartbeat_interval_ms, 100) / 1000
        if answer.assignment is None:
            return None
        partitions = sorted(
            p for tp in answer.assignment.topic_partitions if tp.topic_id == topic_id for p in tp.partitions
        )
        self.has_partitions = bool(partitions)
        return partitions

    def leave(self) -> None:
        """Leave the group (Kafka releases the records the member still holds)."""
        if self.epoch == JOIN:
            return
        cls = request_class("ShareGroupHeartbeat")
        self.net.call(
            self.coordinator, cls(group_id=self.group, member_id=self.member_id, member_epoch=LEAVE)
        )
        self.epoch = JOIN

    def _find_coordinator(self) -> None:
        try:
            coordinator = self.net.find_coordinator(self.group)
            if coordinator != self.coordinator:
                self.logger.info("The coordinator of share group %s is node %d now.", self.group, coordinator)
            self.coordinator = coordinator
        except KafkaError as e:
            self.logger.info("No coordinator for share group %s yet: %s", self.group, e)
        self._next_at = time.monotonic() + JOINING_HEARTBEAT_S
