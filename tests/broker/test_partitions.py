"""Growing a queue's partitions (``broker.admin.grow_partitions``, ``python -m pipeline partitions``), and the
metadata refresh that lets running clients see new partitions within seconds.  Real Kafka, no worker: the
growth under load, with real web and worker processes, is ``tests/e2e/test_partitions_grown_online.py``."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from dramatiq_kafka_broker import KafkaBroker, PartitionGrowth
from dramatiq_kafka_broker import clients as clients_module
from dramatiq_kafka_broker.clients import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_METADATA_MAX_AGE_MS,
    DEFAULT_SESSION_TIMEOUT_MS,
    KafkaClients,
)
from pipeline import cli_partitions
from pipeline.__main__ import main


def _create_partitions_calls(broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every ``create_partitions`` the broker's admin makes (still made)."""
    calls: list[object] = []
    admin_call = broker.clients.admin_call

    def spy(name: str, *args: object, **kwargs: object) -> object:
        if name == "create_partitions":
            calls.append(args)
        return admin_call(name, *args, **kwargs)

    monkeypatch.setattr(broker.clients, "admin_call", spy)
    return calls


def test_growing_a_queue_gives_its_topic_and_its_delay_topic_the_new_count(kafka_broker):
    # Given a queue whose topics have 3 partitions
    kafka_broker.declare_queue("default")
    topic, delayed = kafka_broker.topic_for("default"), kafka_broker.topic_for("default.DQ")
    # When it is grown to 5
    done = kafka_broker.admin.grow_partitions("default", 5)
    # Then both topics have 5, and it says so; the failed-message topic keeps its own
    assert done == [PartitionGrowth(topic, 3, 5), PartitionGrowth(delayed, 3, 5)]
    assert all(growth.grown for growth in done)
    assert kafka_broker.admin.partition_counts("default") == {topic: 5, delayed: 5}
    described = kafka_broker.clients.admin_call("describe_topics", [kafka_broker.topic_for("default.XQ")])
    assert len(described[0]["partitions"]) == 3


def test_growing_a_queue_to_the_count_it_has_changes_nothing(kafka_broker, monkeypatch):
    # Given a queue whose topics have 3 partitions
    kafka_broker.declare_queue("default")
    calls = _create_partitions_calls(kafka_broker, monkeypatch)
    # When it is "grown" to 3
    done = kafka_broker.admin.grow_partitions("default", 3)
    # Then Kafka is asked nothing, and the answer says nothing grew
    assert calls == []
    assert [(g.before, g.after, g.grown) for g in done] == [(3, 3, False), (3, 3, False)]


def test_shrinking_a_queue_is_refused_and_changes_nothing(kafka_broker, monkeypatch):
    # Given a queue whose topic has 5 partitions and whose delay topic has 3
    kafka_broker.declare_queue("default")
    kafka_broker.ensure_topics("default")
    kafka_broker.clients.admin_call("create_partitions", {kafka_broker.topic_for("default"): 5})
    while list(kafka_broker.admin.partition_counts("default").values()) != [5, 3]:  # (metadata lags a little)
        time.sleep(0.05)
    calls = _create_partitions_calls(kafka_broker, monkeypatch)
    # When it is asked for 4 (fewer than the topic has, more than the delay topic has)
    with pytest.raises(ValueError, match="never remove them") as refused:
        kafka_broker.admin.grow_partitions("default", 4)
    # Then the refusal names the topic in the way, and neither topic changed
    assert f"{kafka_broker.topic_for('default')!r} has 5" in str(refused.value)
    assert calls == []
    assert list(kafka_broker.admin.partition_counts("default").values()) == [5, 3]


def test_a_count_below_one_is_refused_before_kafka_is_asked():
    # Given a broker whose Kafka cannot be reached
    broker = KafkaBroker(bootstrap_servers="127.0.0.1:1", middleware=[])
    broker.declare_queue("default")
    # When asked for no partition, Then it is refused at once
    with pytest.raises(ValueError, match="at least one partition"):
        broker.admin.grow_partitions("default", 0)


def test_the_partitions_command_shows_grows_and_refuses_to_shrink(
    kafka_bootstrap_servers, kafka_broker, monkeypatch, capsys
):
    # Given the command on a broker whose queue's topics have 3 partitions
    monkeypatch.setattr(
        cli_partitions,
        "build_broker",
        lambda: KafkaBroker(
            bootstrap_servers=kafka_bootstrap_servers, topic_prefix=kafka_broker.topic_prefix, middleware=[]
        ),
    )
    kafka_broker.declare_queue("default")
    kafka_broker.ensure_topics("default")
    topic = kafka_broker.topic_for("default")
    # When it is asked for the counts, then to grow, then to grow to the same count, then to shrink
    assert main(["partitions", "default"]) == 0
    shown = capsys.readouterr().out
    assert main(["partitions", "default", "4"]) == 0
    grown = capsys.readouterr().out
    assert main(["partitions", "default", "4"]) == 0
    unchanged = capsys.readouterr().out
    code = main(["partitions", "default", "2"])
    refused = capsys.readouterr()
    # Then it prints each topic's partitions, and old -> new; a shrink exits non-zero, saying why
    assert shown == f"{topic}: 3\n{topic}.DQ: 3\n"
    assert grown == f"{topic}: 3 -> 4\n{topic}.DQ: 3 -> 4\n"
    assert unchanged == f"{topic}: 4 -> 4 (unchanged)\n{topic}.DQ: 4 -> 4 (unchanged)\n"
    assert code == cli_partitions.EXIT_ERROR and refused.out == ""
    assert "Kafka can add partitions to a topic but never remove them" in refused.err


def test_consumers_and_the_producer_refresh_metadata_within_seconds_unless_the_options_say_otherwise():
    # Given clients with default options, and clients whose common options set another refresh period
    default = KafkaClients(bootstrap_servers=["127.0.0.1:1"], client_id="t", timeout_ms=1000)
    asked = KafkaClients(
        bootstrap_servers=["127.0.0.1:1"],
        client_id="t",
        timeout_ms=1000,
        client_options={"metadata_max_age_ms": 300_000},
    )
    # Then the producer and the consumers refresh every few seconds by default, as asked otherwise
    for client in (KafkaProducer, KafkaConsumer):
        assert default.options(client, {})["metadata_max_age_ms"] == DEFAULT_METADATA_MAX_AGE_MS, client
        assert asked.options(client, {})["metadata_max_age_ms"] == 300_000, client
    # And the admin client, which asks afresh at each call, keeps kafka-python's default
    assert "metadata_max_age_ms" not in default.options(KafkaAdminClient, {})


def test_a_consumers_session_timeout_and_heartbeat_come_from_the_client_options_when_set(monkeypatch):
    # Given clients with default options, and clients whose common options (KAFKA_OPTIONS) set both
    made: list[dict] = []

    class _Recorder:
        DEFAULT_CONFIG = KafkaConsumer.DEFAULT_CONFIG

        def __init__(self, *topics, **options):
            made.append(options)

    monkeypatch.setattr(clients_module, "KafkaConsumer", _Recorder)
    servers = {"bootstrap_servers": ["127.0.0.1:1"], "client_id": "t", "timeout_ms": 1000}
    tuned = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300, "enable_auto_commit": True}
    # When each makes a consumer
    KafkaClients(**servers).new_consumer(group_id="g")
    KafkaClients(**servers, client_options=tuned).new_consumer(group_id="g")
    # Then the defaults hold unless set, the settings win when set, and commits stay ours alone
    default, asked = made
    assert (default["session_timeout_ms"], default["heartbeat_interval_ms"]) == (
        DEFAULT_SESSION_TIMEOUT_MS,
        DEFAULT_HEARTBEAT_INTERVAL_MS,
    )
    assert (asked["session_timeout_ms"], asked["heartbeat_interval_ms"]) == (6000, 300)
    assert default["enable_auto_commit"] is False and asked["enable_auto_commit"] is False
