"""Every private name of kafka-python and Dramatiq that the project uses, and nothing else.

Each one was read from the versions pinned in ``pyproject.toml`` (kafka-python 3.0.12, Dramatiq 2.2.1) and
has no public equivalent there.  ``tests/broker/test_compat.py`` fails loudly when an upgrade removes one;
then read the new version and mend the function here, nowhere else.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

#: What this module reaches into, as (object path, attribute): the compatibility test checks each.
PRIVATE_NAMES = (
    ("kafka.KafkaConsumer", "_coordinator"),  # an instance attribute, set in __init__
    ("kafka.coordinator.consumer.ConsumerCoordinator", "_commit_offsets_sync_async"),
    ("kafka.coordinator.consumer.ConsumerCoordinator", "fetch_committed_offsets_async"),
    ("kafka.coordinator.base.BaseCoordinator", "rejoining"),  # instance attributes, set in __init__
    ("kafka.coordinator.base.BaseCoordinator", "rejoin_needed"),
    ("kafka.KafkaConsumer", "_cluster"),  # an instance attribute, set in __init__
    ("kafka.KafkaProducer", "_metadata"),  # an instance attribute, set in __init__
    ("kafka.cluster.ClusterMetadata", "config"),  # an instance attribute, set in __init__
    ("dramatiq.middleware.prometheus", "_run_exposition_server"),
    ("kafka.coordinator.base.BaseCoordinator", "_heartbeat_enabled"),  # an instance attribute
    # A parameter, read from the running call's frame (the function itself is public).
    ("dramatiq.cli.worker_process", "worker_id"),
    ("sys", "_current_frames"),  # CPython's, documented in the sys module
    # Share groups (``share/``): kafka-python's base of JSON-built messages, the class keyword that points
    # its loader at another package (handed on to ``load_json(name, package)``), and the registry that
    # decodes a response by its request's API key.
    ("kafka.protocol.api_message", "ApiMessage"),
    ("kafka.protocol.schemas.load_json", "package"),
    ("kafka.protocol.api_header.ResponseClassRegistry", "_response_class_registry"),
    # A request of our own sent to a group's coordinator: the admin client's connections (an instance
    # attribute, set in __init__) and its coordinator lookup.
    ("kafka.KafkaAdminClient", "_manager"),
    ("kafka.KafkaAdminClient", "_find_coordinator_id"),
    # The share consumer's own network client: kafka-python's client of its protocol layer, and the
    # bootstrap of its connection manager (an instance attribute, set in __init__).
    ("kafka.net.compat", "KafkaNetClient"),
    ("kafka.net.compat.KafkaNetClient", "_manager"),
)


async def commit_offsets(
    consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int
) -> None:
    """Commit from inside a rebalance listener.

    The listener runs on kafka-python's IO loop, where the blocking ``KafkaConsumer.commit`` would wait
    for the very loop it blocks; the coordinator's coroutine is the only way to commit there.
    """
    await consumer._coordinator._commit_offsets_sync_async(offsets, timeout_ms=timeout_ms)


async def committed_offsets(
    consumer: KafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata | None]:
    """The group's committed offsets (with their metadata), from inside a rebalance listener (see above)."""
    result: dict[
        TopicPartition, OffsetAndMetadata | None
    ] = await consumer._coordinator.fetch_committed_offsets_async(partitions)
    return result


def set_metadata_backoff(client: KafkaConsumer | KafkaProducer, backoff_ms: int) -> None:
    """Set the least time between two metadata requests of a consumer or producer.

    kafka-python 3.0.12 builds a client's metadata without the client's ``retry_backoff_ms``, so a new
    client always waits its default, 100 ms, between the bootstrap's metadata request and the one that
    finds its topic: the first message of a fresh queue is sent, and starts, that much later.
    """
    metadata = client._metadata if isinstance(client, KafkaProducer) else client._cluster
    metadata.config["retry_backoff_ms"] = backoff_ms


def known_partitions(consumer: KafkaConsumer, topic: str) -> set[int] | None:
    """The topic's partitions as the consumer's metadata knows them now (None: not yet), asking Kafka nothing.

    ``KafkaConsumer.partitions_for_topic`` fetches the metadata of every topic of the cluster when it does
    not know the topic (a tenth of a second with a few hundred topics), where the refresh that ``subscribe``
    starts asks for the subscribed topic alone.
    """
    partitions: set[int] | None = consumer._cluster.partitions_for_topic(topic)
    return partitions


def rebalance_under_way(consumer: KafkaConsumer) -> bool:
    """Whether the consumer is (re)joining its group.

    Also raises the coordinator's own "rejoin needed" flag while a join runs: kafka-python 3.0.12 loses a
    rebalance when ``poll`` times out while its JoinGroup/SyncGroup task runs (the assignment is never
    applied and the consumer sits in the group with no partitions for good); with the flag up, the next
    ``poll`` finishes it, at worst with one more join.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    rejoining = bool(getattr(coordinator, "rejoining", False))
    if rejoining:
        coordinator.rejoin_needed = True
    return rejoining or bool(getattr(coordinator, "rejoin_needed", False))


def fenced(consumer: KafkaConsumer) -> bool:
    """Whether another member with the consumer's ``group_instance_id`` has taken its place in the group.

    kafka-python 3.0.12 learns it from a heartbeat's FencedInstanceIdError, which it logs and answers by
    stopping the heartbeats, and nothing else: the consumer believes itself a stable member and goes on
    fetching the partitions that are now the other member's.  A stable member (not rejoining) whose
    heartbeats are off is in that state and no other; a commit or a join of such a member raises
    FencedInstanceIdError, which the caller takes the same way.  Call it from the consumer's own thread,
    outside ``poll`` (a join, which also turns the heartbeats off, starts only inside ``poll``).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or coordinator.group_instance_id is None:
        return False
    heartbeating = bool(getattr(coordinator, "_heartbeat_enabled", True))
    return bool(coordinator.stable()) and not coordinator.rejoining and not heartbeating


def worker_process_index() -> int | None:
    """The index Dramatiq's command line gave this worker process (0 to ``--processes`` - 1), or None when
    this process is not one of its worker processes.

    Dramatiq 2.2.1 hands the index to ``dramatiq.cli.worker_process(args, worker_id, ...)`` only, which uses
    it to name the process's logger; that call runs on the process's main thread for the process's whole
    life (it builds the broker, starts the worker, then waits for SIGTERM), so the index is read from its
    frame, from any thread.  The process's position among its siblings (``multiprocessing``'s private
    ``_identity``) would also tell it, but only as long as Dramatiq starts no other process first.
    """
    main = threading.main_thread().ident
    frame = sys._current_frames().get(main) if main is not None else None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "worker_process" and frame.f_globals.get("__name__") == "dramatiq.cli":
            index = frame.f_locals.get("worker_id")
            return index if isinstance(index, int) else None
        frame = frame.f_back
    return None


def share_message_class(name: str, package: str) -> Any:
    """A kafka-python message class built from the JSON definition ``<package>/<name>.json``.

    kafka-python 3.0.12 builds its own messages so, from its package of definitions; the ``load_json``
    keyword of a class statement points its loader at another package.  A response class registers itself
    by API key on creation, as kafka-python's own do, so that the answers to its requests are decoded.
    """
    from kafka.protocol.api_message import ApiMessage

    return type(name, (ApiMessage,), {"__module__": package, "__slots__": ()}, load_json=package)


def send_to_group_coordinator(admin: KafkaAdminClient, group_id: str, request: Any) -> Any:
    """Send ``request`` (a message kafka-python lacks, :func:`share_message_class`) to the coordinator of
    ``group_id`` (a share group's too: Kafka finds it as a group's) and return its answer.

    kafka-python 3.0.12's admin client sends its own requests so, and offers no public way to send another.
    """

    async def call() -> Any:
        node = await admin._find_coordinator_id(group_id)
        return await admin._manager.send(request, node_id=node)

    return admin._manager.run(call)


def keep_response_class(cls: Any) -> None:
    """Make ``cls`` the class kafka-python decodes the answers of its API key with.

    kafka-python's registry holds one class per API key, by weak reference, and every response class built
    registers itself there: a second class built for the same key (a test building one, say) takes the
    key over, and once it is collected the answers of that key can no longer be decoded.
    """
    import weakref

    from kafka.protocol.api_header import ResponseClassRegistry

    current = ResponseClassRegistry._response_class_registry.get(cls.API_KEY)
    try:
        if current is not None and current == cls:
            return
    except ReferenceError:  # (the class registered last was collected)
        pass
    ResponseClassRegistry.register_response_class(weakref.proxy(cls))


def share_network_client(options: dict[str, Any], timeout_ms: int) -> Any:
    """A kafka-python network client, bootstrapped, with no IO thread: the caller's thread drives it.

    kafka-python 3.0.12 has no public client for requests of its own making; its consumer, producer and
    admin client each build this one (``kafka.net.compat.KafkaNetClient``) and bootstrap it through its
    connection manager.
    """
    from kafka.net.compat import KafkaNetClient

    client = KafkaNetClient(**options)
    try:
        client._manager.bootstrap(timeout_ms)
    except Exception:
        client.close()
        raise
    return client


def run_prometheus_exporter() -> Any:
    """Dramatiq's Prometheus exporter server (the body of the process Dramatiq forks for it).

    Dramatiq names it only privately; the service's ``serve_worker_metrics`` runs it on our port.
    """
    from dramatiq.middleware import prometheus

    return prometheus._run_exposition_server()
