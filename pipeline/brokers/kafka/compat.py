"""Every private name of kafka-python and Dramatiq that the project uses, and nothing else.

Each one was read from the versions pinned in ``pyproject.toml`` (kafka-python 3.0.12, Dramatiq 2.2.1) and
has no public equivalent there.  ``tests/broker/test_compat.py`` fails loudly when an upgrade removes one;
then read the new version and mend the function here, nowhere else.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer
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


def run_prometheus_exporter() -> Any:
    """Dramatiq's Prometheus exporter server (the body of the process Dramatiq forks for it).

    Dramatiq names it only privately; ``pipeline.broker.serve_worker_metrics`` runs it on our port.
    """
    from dramatiq.middleware import prometheus

    return prometheus._run_exposition_server()
