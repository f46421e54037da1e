"""Fails loudly when an upgrade of kafka-python or Dramatiq removes a private name that
``pipeline.brokers.kafka.compat`` uses: mend that module, nowhere else."""

from __future__ import annotations

import importlib
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.brokers.kafka import compat

#: Private names that are instance attributes, found on a client made against the real Kafka instead.
_INSTANCE_ATTRIBUTES = {"_coordinator", "_cluster", "_metadata", "rejoining", "rejoin_needed", "config"}


def _resolve(path: str):
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


@pytest.mark.parametrize(("owner", "attribute"), compat.PRIVATE_NAMES)
def test_each_private_name_compat_uses_still_exists(owner, attribute, kafka_bootstrap_servers):
    # Given the class or module compat reaches into
    target = _resolve(owner)
    if attribute not in _INSTANCE_ATTRIBUTES:
        # Then it still has the name
        assert hasattr(target, attribute), (
            f"{owner}.{attribute} is gone: mend pipeline/brokers/kafka/compat.py"
        )
        return
    # (an instance attribute: look on a live client)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers, group_id="compat-check")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    try:
        instances = {
            "kafka.KafkaConsumer": consumer,
            "kafka.KafkaProducer": producer,
            "kafka.coordinator.base.BaseCoordinator": consumer._coordinator,
            "kafka.cluster.ClusterMetadata": consumer._cluster,
        }
        assert hasattr(instances[owner], attribute), (
            f"{owner}.{attribute} is gone: mend pipeline/brokers/kafka/compat.py"
        )
    finally:
        consumer.close()
        producer.close()


def test_the_metadata_backoff_reaches_the_clients_metadata(kafka_bootstrap_servers):
    # Given a consumer and a producer
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    try:
        # When compat sets their metadata backoff
        compat.set_metadata_backoff(consumer, 7)
        compat.set_metadata_backoff(producer, 9)
        # Then the metadata they refresh with uses it
        assert consumer._cluster.config["retry_backoff_ms"] == 7
        assert producer._metadata.config["retry_backoff_ms"] == 9
    finally:
        consumer.close()
        producer.close()


def test_a_consumer_outside_a_rebalance_says_so(kafka_bootstrap_servers):
    # Given a consumer that has not subscribed to anything
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers, group_id="compat-idle")
    try:
        consumer._coordinator.rejoining = False
        consumer._coordinator.rejoin_needed = False
        # Then it is not rebalancing
        assert compat.rebalance_under_way(consumer) is False
        # ...and one whose join is under way is, with the coordinator's flag kept up
        consumer._coordinator.rejoining = True
        assert compat.rebalance_under_way(consumer) is True
        assert consumer._coordinator.rejoin_needed is True
    finally:
        consumer.close()


def test_known_partitions_come_from_the_subscriptions_own_metadata(kafka_bootstrap_servers, kafka_broker):
    # Given a queue's topic (six partitions) and a new consumer that knows nothing of it yet
    kafka_broker.declare_queue("compat-known")
    kafka_broker.ensure_topics("compat-known")
    topic = kafka_broker.topic_for("compat-known")
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers, group_id="compat-known")
    try:
        assert compat.known_partitions(consumer, topic) is None
        # When it subscribes, which refreshes the metadata of that topic alone
        consumer.subscribe([topic])
        deadline = time.monotonic() + 10
        while compat.known_partitions(consumer, topic) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # Then its partitions are known, and no other topic was fetched
        assert compat.known_partitions(consumer, topic) == set(range(kafka_broker.partitions))
        assert consumer._cluster.topics() == {topic}
    finally:
        consumer.close()
