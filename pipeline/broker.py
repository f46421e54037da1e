"""Builds the service's Dramatiq broker from settings: :func:`build_broker`, used by the web and the worker.

Importing this module builds nothing (``pipeline.worker`` builds the worker's broker, ``web.app`` its own).
The broker is a :class:`~dramatiq_kafka_broker.KafkaBroker`; it opens no connection until the first
enqueue, consume or inspection, so building one is cheap and works while Kafka is down.
"""

from __future__ import annotations

from typing import Any

from dramatiq_kafka_broker import KafkaBroker
from pipeline import settings
from pipeline.kafka_security import client_options
from pipeline.middleware import middleware


def build_broker(**overrides: Any) -> KafkaBroker:
    """A KafkaBroker configured from settings; keyword arguments override any of its parameters."""
    parameters: dict[str, Any] = {
        "bootstrap_servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "middleware": middleware(),
        "topic_prefix": settings.KAFKA_TOPIC_PREFIX,
        "group_id": settings.KAFKA_GROUP_ID,
        "group_instance_id": settings.KAFKA_GROUP_INSTANCE_ID or None,
        "group_type": settings.KAFKA_GROUP_TYPE,
        "client_id": settings.KAFKA_CLIENT_ID,
        "create_topics": settings.KAFKA_CREATE_TOPICS,
        "partitions": settings.KAFKA_PARTITIONS,
        "replication_factor": settings.KAFKA_REPLICATION_FACTOR,
        "min_insync_replicas": settings.KAFKA_MIN_INSYNC_REPLICAS or None,
        "dead_letter_retention_ms": settings.KAFKA_FAILED_RETENTION_MS,
        "send_timeout_ms": settings.KAFKA_SEND_TIMEOUT_MS,
        "client_options": client_options(),
    }
    parameters.update(overrides)
    return KafkaBroker(**parameters)
