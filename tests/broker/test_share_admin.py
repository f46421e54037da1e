"""What a share group needs from the cluster (``share/admin.py``) and its offsets and lag
(``share/offsets.py``), against the real Kafka (4.3.1, ``share.version=1``).

The lag tests acknowledge records as a share consumer does, with the protocol's own messages (join by
ShareGroupHeartbeat, acquire by ShareFetch, ACCEPT by ShareAcknowledge), so that they read what Kafka keeps
for a share group and need no worker.  A cluster whose feature ``share.version`` is off, and an app
without the rights on a group, are in ``tests/managed/test_share_tenant.py`` (the managed suite's Kafka,
whose operator may turn the feature off and whose tenant has ACLs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType

from dramatiq_kafka_broker import KafkaBroker, MissingRight, compat
from dramatiq_kafka_broker.share import admin as share_admin
from dramatiq_kafka_broker.share import protocol
from dramatiq_kafka_broker.share.offsets import ShareGroupAdmin, describe_share_group_offsets
from tests.broker.conftest import delete_topics, make_kafka_broker

#: How long a test waits for the share group to assign partitions, in seconds.
ASSIGNMENT_TIMEOUT_S = 20


@pytest.fixture
def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}share"


@pytest.fixture
def cleanup_group_configs(kafka_broker: KafkaBroker, group_id: str) -> Iterator[None]:
    """Remove the test group's configs from the cluster's metadata at the end."""
    yield
    names = [share_admin.AUTO_OFFSET_RESET, share_admin.DELIVERY_COUNT_LIMIT]
    resource = ConfigResource(
        ConfigResourceType.GROUP, group_id, {n: (AlterConfigOp.DELETE, None) for n in names}
    )
    kafka_broker.clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)


def _group_configs(broker: KafkaBroker, group_id: str) -> dict[str, str]:
    names = [share_admin.AUTO_OFFSET_RESET, share_admin.DELIVERY_COUNT_LIMIT]
    resource = ConfigResource(ConfigResourceType.GROUP, group_id, names)
    found = broker.clients.admin_call("describe_configs", [resource], config_filter="all")
    return {name: entry["value"] for name, entry in found["group"][group_id].items()}


def _set_limit(broker: KafkaBroker, group_id: str, limit: int) -> None:
    resource = ConfigResource(
        ConfigResourceType.GROUP, group_id, {share_admin.DELIVERY_COUNT_LIMIT: str(limit)}
    )
    answer = broker.clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)
    assert answer == {"group": {group_id: "OK"}}
    # Kafka answers before its metadata shows the change
    deadline = time.monotonic() + 10
    while _group_configs(broker, group_id)[share_admin.DELIVERY_COUNT_LIMIT] != str(limit):
        assert time.monotonic() < deadline, "the group's limit never showed"
        time.sleep(0.05)


# -- the cluster ---------------------------------------------------------------------------------------------
def test_the_local_kafka_takes_share_groups(kafka_broker):
    # Given the local Kafka, formatted fresh with 4.3.1
    # Then the check passes, on its real ApiVersions and features
    share_admin.check_share_support(kafka_broker.clients)
    features = kafka_broker.clients.admin_call("describe_features")
    assert features["share.version"]["finalized"][1] >= 1


def test_a_kafka_without_the_share_requests_is_named_with_what_it_lacks(kafka_broker, monkeypatch):
    # Given the real ApiVersions answer of our Kafka, less the share requests (as a Kafka before 4.1 answers)
    real = kafka_broker.clients.admin_call("api_versions")
    older = {key: span for key, span in real.items() if int(key) not in share_admin.SHARE_APIS}
    admin_call = kafka_broker.clients.admin_call

    def answer(name: str, *args: Any, **kwargs: Any) -> Any:
        return older if name == "api_versions" else admin_call(name, *args, **kwargs)

    monkeypatch.setattr(kafka_broker.clients, "admin_call", answer)
    # When the worker checks at start-up
    with pytest.raises(share_admin.ShareGroupsUnavailable) as raised:
        share_admin.prepare_share_group(kafka_broker.clients, "any-group", delivery_limit=3)
    # Then the error names the requests, the version and the way out
    message = str(raised.value)
    assert "ShareGroupHeartbeat v1+" in message and "ShareFetch v1+" in message
    assert "4.1" in message and "KAFKA_GROUP_TYPE=classic" in message


# -- the group's configs -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("cleanup_group_configs")
def test_a_fresh_share_group_starts_at_earliest_with_a_limit_above_ours(kafka_broker, group_id):
    # Given a share group Kafka has never heard of (it starts at latest, with a limit of 5)
    assert _group_configs(kafka_broker, group_id)[share_admin.AUTO_OFFSET_RESET] == "latest"
    # When a worker prepares it for a consumer that dead-letters after 6 deliveries
    prepared = share_admin.prepare_share_group(kafka_broker.clients, group_id, delivery_limit=6)
    # Then the group starts at earliest, and Kafka's limit is above ours
    assert _group_configs(kafka_broker, group_id) == {
        share_admin.AUTO_OFFSET_RESET: "earliest",
        share_admin.DELIVERY_COUNT_LIMIT: "7",
    }
    assert prepared == share_admin.ShareGroupConfig(group_id, 7, True, True)


@pytest.mark.usefixtures("cleanup_group_configs")
def test_a_higher_limit_an_operator_set_is_kept(kafka_broker, group_id):
    # Given a group whose limit an operator raised to 9
    _set_limit(kafka_broker, group_id, 9)
    # When a worker whose own limit is 3 prepares it
    prepared = share_admin.prepare_share_group(kafka_broker.clients, group_id, delivery_limit=3)
    # Then the limit stays 9, and the consumer is told so
    assert _group_configs(kafka_broker, group_id)[share_admin.DELIVERY_COUNT_LIMIT] == "9"
    assert prepared.delivery_count_limit == 9


@pytest.mark.usefixtures("cleanup_group_configs")
def test_a_limit_kafka_caps_below_ours_is_used_and_logged_as_an_error(kafka_broker, group_id, caplog):
    # Given Kafka's bound on a group's limit (10 unless the brokers say otherwise)
    ceiling = share_admin._ceiling(kafka_broker.clients)
    # When a worker whose own limit is above it prepares the group
    with caplog.at_level(logging.ERROR, logger=share_admin.__name__):
        prepared = share_admin.prepare_share_group(kafka_broker.clients, group_id, delivery_limit=ceiling + 5)
    # Then the group gets the bound, the consumer is told to dead-letter at it, and the log says what to do
    assert prepared.delivery_count_limit == ceiling
    assert _group_configs(kafka_broker, group_id)[share_admin.DELIVERY_COUNT_LIMIT] == str(ceiling)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(share_admin.MAX_DELIVERY_COUNT_LIMIT in m and f"to {ceiling + 6}" in m for m in errors)


def test_the_error_codes_an_operator_must_act_on_say_what_to_do():
    # Given the codes Kafka answers a share request with when a right or the group's type is wrong
    group = "dev.dramatiq.users"
    read_group = share_admin.share_group_error(group, 30, "Not authorized")
    read_topic = share_admin.share_group_error(group, 29, topic="dev.users")
    classic = share_admin.share_group_error(group, 69, "Group dev.dramatiq.users is not a share group.")
    # Then each is a setup error that names the right (or the way out), and a passing error is not one
    assert isinstance(read_group, MissingRight) and "READ right on GROUP 'dev.dramatiq.users'" in str(
        read_group
    )
    assert "--operation Read --group dev.dramatiq.users" in str(read_group)
    assert isinstance(read_topic, MissingRight) and "READ right on TOPIC 'dev.users'" in str(read_topic)
    assert "another KAFKA_GROUP_ID" in str(classic)
    assert share_admin.share_group_error(group, 16) is None  # NOT_COORDINATOR: the consumer retries


# -- offsets and lag -----------------------------------------------------------------------------------------
class _Member:
    """A share group member speaking the protocol: joins, acquires records, accepts some.  On one node, the
    group's coordinator is also the partitions' leader, so every request goes there."""

    def __init__(self, broker: KafkaBroker, group_id: str, topic: str) -> None:
        self.broker, self.group_id, self.topic = broker, group_id, topic
        self.member_id = str(uuid.uuid4())
        self.epoch = 0
        self.session_epoch = 0
        described = broker.clients.admin_call("describe_topics", [topic])[0]
        self.topic_id = described["topic_id"]

    def _send(self, name: str, **fields: Any) -> Any:
        request = protocol.request_class(name)(**fields)
        return compat.send_to_group_coordinator(self.broker.clients.admin, self.group_id, request)

    def join(self) -> list[int]:
        """Heartbeat until the group assigns partitions; their indexes."""
        deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
        topics: list[str] | None = [self.topic]
        while time.monotonic() < deadline:
            answer = self._send(
                "ShareGroupHeartbeat",
                group_id=self.group_id,
                member_id=self.member_id,
                member_epoch=self.epoch,
                rack_id=None,
                subscribed_topic_names=topics,
            )
            assert answer.error_code == 0, answer
            self.epoch, topics = answer.member_epoch, None
            if answer.assignment is not None and answer.assignment.topic_partitions:
                return sorted(p for tp in answer.assignment.topic_partitions for p in tp.partitions)
            time.sleep(0.2)
        raise AssertionError("the share group assigned nothing")

    def acquire(self, partitions: list[int], wanted: int) -> dict[int, list[int]]:
        """Fetch until ``wanted`` records are acquired; their offsets by partition."""
        request_class = protocol.request_class("ShareFetch")
        acquired: dict[int, list[int]] = {}
        deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
        while sum(map(len, acquired.values())) < wanted and time.monotonic() < deadline:
            fetch_partitions = [
                request_class.FetchTopic.FetchPartition(partition_index=p, acknowledgement_batches=[])
                for p in partitions
            ]
            answer = self._send(
                "ShareFetch",
                group_id=self.group_id,
                member_id=self.member_id,
                share_session_epoch=self.session_epoch,
                max_wait_ms=500,
                min_bytes=1,
                max_records=500,
                batch_size=500,
                topics=[request_class.FetchTopic(topic_id=self.topic_id, partitions=fetch_partitions)],
                forgotten_topics_data=[],
            )
            assert answer.error_code == 0, answer
            self.session_epoch += 1
            for topic in answer.responses:
                for p in topic.partitions:
                    assert p.error_code == 0, p
                    for r in p.acquired_records:
                        acquired.setdefault(p.partition_index, []).extend(
                            range(r.first_offset, r.last_offset + 1)
                        )
        return acquired

    def accept(self, partition: int, offsets: list[int]) -> None:
        request_class = protocol.request_class("ShareAcknowledge")
        batches = [
            request_class.AcknowledgeTopic.AcknowledgePartition.AcknowledgementBatch(
                first_offset=o, last_offset=o, acknowledge_types=[protocol.ACCEPT]
            )
            for o in offsets
        ]
        partition_acks = request_class.AcknowledgeTopic.AcknowledgePartition(
            partition_index=partition, acknowledgement_batches=batches
        )
        answer = self._send(
            "ShareAcknowledge",
            group_id=self.group_id,
            member_id=self.member_id,
            share_session_epoch=self.session_epoch,
            topics=[request_class.AcknowledgeTopic(topic_id=self.topic_id, partitions=[partition_acks])],
        )
        assert answer.error_code == 0, answer
        self.session_epoch += 1

    def leave(self) -> None:
        self._send(
            "ShareGroupHeartbeat",
            group_id=self.group_id,
            member_id=self.member_id,
            member_epoch=-1,
            rack_id=None,
            subscribed_topic_names=None,
        )


@pytest.fixture
def share_broker(kafka_bootstrap_servers: str, topic_prefix: str) -> Iterator[KafkaBroker]:
    """A KafkaBroker in share mode, on this test's own topics and groups."""
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, group_type="share")
    yield broker
    delete_topics(broker)
    broker.close()


def _produce(broker: KafkaBroker, topic: str, count: int) -> None:
    futures = [broker.clients.send(topic, f"record {i}".encode(), key=i) for i in range(count)]
    broker.clients.wait(futures)


def test_share_lag_counts_every_record_then_less_once_some_are_accepted(share_broker):
    # Given a queue of 3 partitions holding 12 records, whose share group no worker has joined yet
    kafka_broker = share_broker
    kafka_broker.declare_queue("shared")
    kafka_broker.ensure_topics("shared")
    admin = kafka_broker.admin
    assert isinstance(admin, ShareGroupAdmin)
    group, topic = kafka_broker.group_for("shared"), kafka_broker.topic_for("shared")
    share_admin.prepare_share_group(kafka_broker.clients, group, delivery_limit=4)
    _produce(kafka_broker, topic, 12)
    # Then its lag is every record (the group starts at earliest)
    assert sum(admin.lag("shared").values()) == 12
    # When a member acquires them all and accepts 5 (the lowest offsets of one partition first)
    member = _Member(kafka_broker, group, topic)
    try:
        partitions = member.join()
        acquired = member.acquire(partitions, 12)
        assert sum(map(len, acquired.values())) == 12
        accepted: dict[int, int] = {}
        for partition, offsets in sorted(acquired.items()):
            chosen = sorted(offsets)[: 5 - sum(accepted.values())]
            if chosen:
                member.accept(partition, chosen)
                accepted[partition] = len(chosen)
        # Then the lag is the 7 not accepted, partition by partition
        expected = {p: len(acquired.get(p, [])) - accepted.get(p, 0) for p in range(3)}
        deadline = time.monotonic() + 10
        while admin.lag("shared") != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert admin.lag("shared") == expected
        assert sum(expected.values()) == 7
        assert "share group start offsets" in admin.group_state("shared")
    finally:
        member.leave()


def test_a_share_group_nobody_joined_lags_by_everything_and_is_described_without_state(share_broker):
    # Given a queue with 4 records and a share group that was never joined, and a delay queue with 2
    kafka_broker = share_broker
    kafka_broker.declare_queue("unjoined")
    kafka_broker.ensure_topics("unjoined")
    topic = kafka_broker.topic_for("unjoined")
    _produce(kafka_broker, topic, 4)
    _produce(kafka_broker, kafka_broker.topic_for("unjoined.DQ"), 2)
    # Then Kafka knows no start offset for it, and its lag is the 4 records; the delay queue's consumer
    # group (classic in share mode too) lags by its 2
    described = describe_share_group_offsets(
        kafka_broker.clients, kafka_broker.group_for("unjoined"), topic, [0, 1, 2]
    )
    assert {o.start_offset for o in described.values()} == {-1}
    assert sum(kafka_broker.admin.lag("unjoined").values()) == 4
    assert sum(kafka_broker.admin.lag("unjoined.DQ").values()) == 2
