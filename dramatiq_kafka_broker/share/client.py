"""The network side of one share consumer: a kafka-python network client of its own, driven from the
consumer's thread, and the few lookups a share consumer needs (its group's coordinator, its topic's id and
partition leaders).

A share consumer talks to Kafka with requests kafka-python has no client for (ShareGroupHeartbeat,
ShareFetch, ShareAcknowledge), so it drives kafka-python's network client itself: each call sends its
requests, then polls the client until their answers came or the time is up.  No IO thread: nothing happens
on the connections between two calls, which suits a consumer that heartbeats and fetches from one loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, for_code
from kafka.protocol.metadata import FindCoordinatorRequest, MetadataRequest

from .. import compat
from ..errors import KafkaConnectionError

if TYPE_CHECKING:
    from ..clients import KafkaClients

#: FindCoordinator's key type of a group (share groups have group coordinators, as consumer groups do).
_GROUP_KEY = 0
#: Longest single poll of the network client while answers are awaited, in milliseconds.
_POLL_SLICE_MS = 100


class TopicLeaders(NamedTuple):
    """A topic as its metadata has it: its id and the node that leads each partition (-1: none now)."""

    topic_id: Any
    leaders: dict[int, int]


class ShareClient:
    """A kafka-python network client for one share consumer's requests.

    Parameters:
      clients(KafkaClients): The broker's clients, whose options (servers, security...) this one takes.
      timeout_ms(int): How long a call waits for its answers before it raises.

    Raises:
      KafkaConnectionError: If Kafka cannot be reached.
    """

    def __init__(self, clients: KafkaClients, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        options = clients.options(KafkaAdminClient, {"request_timeout_ms": timeout_ms})
        try:
            self._net = compat.share_network_client(options, timeout_ms)
        except KafkaError as e:
            raise KafkaConnectionError(f"share consumer: {e}") from None

    def call(self, node_id: int, request: Any, timeout_ms: int | None = None) -> Any:
        """Send one request and return its answer.

        Raises:
          KafkaConnectionError: If it could not be sent or was not answered in time.
        """
        answer = self.call_many({node_id: request}, timeout_ms)[node_id]
        if isinstance(answer, KafkaConnectionError):
            raise answer
        return answer

    def call_many(self, requests: Mapping[int, Any], timeout_ms: int | None = None) -> dict[int, Any]:
        """Send one request to each of several nodes at once; the answers by node, where a node that could
        not be reached (it is backing off after a failed connection) or did not answer in time has a
        :class:`KafkaConnectionError` instead (returned, not raised: the other nodes' answers stand)."""
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        waiting, futures, results = dict(requests), {}, {}
        for node_id in list(waiting):
            try:
                self._net.maybe_connect(node_id)
            except KafkaError as e:  # (a node the metadata no longer has)
                waiting.pop(node_id)
                results[node_id] = KafkaConnectionError(f"node {node_id}: {e}")
        while True:
            for node_id in list(waiting):
                if self._net.is_ready(node_id):
                    futures[node_id] = self._net.send(node_id, waiting.pop(node_id))
                elif self._net.connection_delay(node_id) > 0:
                    waiting.pop(node_id)
                    results[node_id] = KafkaConnectionError(f"node {node_id} cannot be reached")
            for node_id, future in list(futures.items()):
                if future.is_done:
                    del futures[node_id]
                    failed = KafkaConnectionError(f"node {node_id}: {future.exception}")
                    results[node_id] = future.value if future.succeeded() else failed
            remaining = int((deadline - time.monotonic()) * 1000)
            if not (waiting or futures):
                return results
            if remaining <= 0:
                for node_id in [*waiting, *futures]:
                    results[node_id] = KafkaConnectionError(
                        f"no answer from node {node_id} in {timeout_ms} ms"
                    )
                return results
            self._net.poll(timeout_ms=min(remaining, _POLL_SLICE_MS))

    def any_node(self) -> int:
        """A node to ask about the cluster.

        Raises:
          KafkaConnectionError: If no node is known.
        """
        node_id = self._net.least_loaded_node(bootstrap_fallback=True)
        if node_id is None:
            raise KafkaConnectionError("no Kafka node to ask")
        return int(node_id)

    def find_coordinator(self, group: str) -> int:
        """The node that coordinates ``group``.

        Raises:
          KafkaError: Kafka's error (CoordinatorNotAvailableError while it elects one...).
          KafkaConnectionError: If Kafka could not be asked.
        """
        request = FindCoordinatorRequest(key_type=_GROUP_KEY, coordinator_keys=[group], min_version=4)
        answer = self.call(self.any_node(), request).coordinators[0]
        if answer.error_code:
            raise for_code(answer.error_code)(f"finding the coordinator of {group!r}: {answer.error_message}")
        self._net.cluster.add_coordinator(answer, _GROUP_KEY, group, synthesize_node_id=False)
        return int(answer.node_id)

    def topic_leaders(self, topic: str) -> TopicLeaders:
        """The id of ``topic`` and the leader of each of its partitions, asked of Kafka now.

        Raises:
          KafkaError: Kafka's error for the topic (unknown, not authorized...).
          KafkaConnectionError: If Kafka could not be asked.
        """
        request = MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=topic)], min_version=10)
        answer = self.call(self.any_node(), request)
        self._net.cluster.update_metadata(answer)  # (the nodes, to connect to the leaders)
        (found,) = answer.topics
        if found.error_code:
            raise for_code(found.error_code)(f"metadata of {topic!r}")
        return TopicLeaders(found.topic_id, {p.partition_index: p.leader_id for p in found.partitions})

    def api_version(self, request_class: Any) -> int:
        """The highest version of a request both this package and the cluster know.

        Raises:
          KafkaError: IncompatibleBrokerVersion, if there is none.
        """
        return int(self._net.api_version(request_class, max_version=request_class.max_version))

    def close(self) -> None:
        """Close the connections."""
        self._net.close()
