"""Fails loudly when an upgrade of kafka-python or Dramatiq removes a private name that
``dramatiq_kafka_broker.compat`` uses: mend that module, nowhere else."""

from __future__ import annotations

import importlib
import inspect
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from dramatiq_kafka_broker import compat
from dramatiq_kafka_broker.share import protocol

#: Private names that are instance attributes, found on a client made against the real Kafka instead.
_INSTANCE_ATTRIBUTES = {
    "_coordinator",
    "_cluster",
    "_metadata",
    "rejoining",
    "rejoin_needed",
    "config",
    "_heartbeat_enabled",
    "_manager",
}
#: Private names that are a function's parameters, read from the frame of a running call.
_PARAMETERS = {"worker_id", "package"}


def _resolve(path: str):
    module_name, _, name = path.rpartition(".")
    if not module_name:
        return importlib.import_module(path)
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


@pytest.mark.parametrize(("owner", "attribute"), compat.PRIVATE_NAMES)
def test_each_private_name_compat_uses_still_exists(owner, attribute, kafka_bootstrap_servers):
    # Given the class or module compat reaches into
    target = _resolve(owner)
    if attribute in _PARAMETERS:
        # Then the function still takes it
        assert attribute in inspect.signature(target).parameters, (
            f"{owner} takes no {attribute} any more: mend dramatiq_kafka_broker/compat.py"
        )
        return
    if attribute not in _INSTANCE_ATTRIBUTES:
        # Then it still has the name
        assert hasattr(target, attribute), (
            f"{owner}.{attribute} is gone: mend dramatiq_kafka_broker/compat.py"
        )
        return
    # (an instance attribute: look on a live client)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers, group_id="compat-check")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    network = compat.share_network_client({"bootstrap_servers": [kafka_bootstrap_servers]}, 10_000)
    try:
        instances = {
            "kafka.net.compat.KafkaNetClient": network,
            "kafka.KafkaConsumer": consumer,
            "kafka.KafkaProducer": producer,
            "kafka.KafkaAdminClient": admin,
            "kafka.coordinator.base.BaseCoordinator": consumer._coordinator,
            "kafka.cluster.ClusterMetadata": consumer._cluster,
        }
        assert hasattr(instances[owner], attribute), (
            f"{owner}.{attribute} is gone: mend dramatiq_kafka_broker/compat.py"
        )
    finally:
        consumer.close()
        producer.close()
        admin.close()
        network.close()


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


def test_the_worker_process_index_is_the_one_dramatiqs_command_line_gave_the_process():
    # Given a call of a function as Dramatiq's command line makes it, on the main thread
    # (dramatiq.cli.worker_process(args, worker_id, ...) itself needs a whole worker process)
    namespace = {"__name__": "dramatiq.cli", "probe": compat.worker_process_index}
    exec("def worker_process(args, worker_id):\n    return probe()\n", namespace)
    # Then inside it the index is known, and outside it (this test process) it is not
    assert namespace["worker_process"](None, 3) == 3
    assert compat.worker_process_index() is None
    # ...and the real function still takes the index where compat looks for it
    from dramatiq import cli

    assert list(inspect.signature(cli.worker_process).parameters)[:2] == ["args", "worker_id"]


def test_a_static_member_another_member_took_the_place_of_is_seen_as_fenced(
    kafka_bootstrap_servers, kafka_broker
):
    # Given a topic and a static member of a group, with frequent heartbeats
    kafka_broker.declare_queue("compat-fenced")
    kafka_broker.ensure_topics("compat-fenced")
    topic = kafka_broker.topic_for("compat-fenced")
    group = f"{kafka_broker.topic_prefix}compat-fenced"
    options = {
        "bootstrap_servers": kafka_bootstrap_servers,
        "group_id": group,
        "group_instance_id": "host-p0",
        "heartbeat_interval_ms": 300,
        "session_timeout_ms": 10_000,
    }
    first = KafkaConsumer(**options)
    second = KafkaConsumer(**options)
    try:
        for consumer in (first, second):
            # (as the broker's consumer does: a leader that joins before it knows the topic's partitions
            # assigns none)
            consumer.partitions_for_topic(topic)
            consumer.subscribe([topic])
        _poll_until(first, lambda: bool(first.assignment()))
        assert compat.fenced(first) is False
        # When a second member joins with the same group_instance_id
        _poll_until(second, lambda: bool(second.assignment()))
        # Then the first learns from its next heartbeat that it was put out, and compat says so (while
        # kafka-python itself goes on as if nothing happened)...
        deadline = time.monotonic() + 10
        while not compat.fenced(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compat.fenced(first) is True
        assert first.assignment()
        # ...and it does not say so of the one that took its place
        assert compat.fenced(second) is False
    finally:
        first.close(autocommit=False)
        second.close(autocommit=False)


def _poll_until(consumer, condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the consumer did not join its group in time"
        # (long enough for a join to end inside it: kafka-python drops a join that outlasts its poll)
        consumer.poll(timeout_ms=1000)


def test_a_share_message_class_is_built_from_our_package_and_decodes_its_answers():
    # Given a definition of ours, built through kafka-python's loader
    response = compat.share_message_class("ShareFetchResponse", "dramatiq_kafka_broker.share.schemas")
    # Then it is the message our file defines, with its nested structs...
    assert response.API_KEY == 78 and response.json["name"] == "ShareFetchResponse"
    assert hasattr(response.ShareFetchableTopicResponse, "PartitionData")
    # ...and kafka-python's registry decodes answers with it (the loader hook and the registry both work)
    from kafka.protocol.api_header import RequestHeader, ResponseClassRegistry

    header = RequestHeader(request_api_key=78, request_api_version=1, correlation_id=1, client_id="t")
    assert ResponseClassRegistry.get_response_class(header).name == "ShareFetchResponse"
    # ...until the share messages' own class takes its key back (this one is about to be collected)
    ours = protocol.response_class("ShareFetch")
    assert ours is not response
    del response
    assert ResponseClassRegistry.get_response_class(header) == ours[1]


def test_the_share_network_client_is_bootstrapped_and_driven_by_its_callers_thread(kafka_bootstrap_servers):
    # Given the share consumer's network client
    from kafka.protocol.metadata import MetadataRequest

    client = compat.share_network_client({"bootstrap_servers": [kafka_bootstrap_servers]}, 10_000)
    try:
        # Then it knows the cluster at once, and a request sent on it is answered by polling it
        node = client.least_loaded_node(bootstrap_fallback=True)
        answer = client.send_and_receive(node, MetadataRequest(topics=[], min_version=10), timeout_ms=10_000)
        assert answer.brokers
    finally:
        client.close()
