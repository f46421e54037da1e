"""Our share-group messages (``share/protocol.py``, ``share/schemas/``) and the protocol layer the share
consumer is built of (``share/client.py``, ``share/membership.py``, ``share/session.py``), against the
real Kafka (4.3.1, ``share.version=1``): a member joins, fetches the records it acquired (and only those),
accepts, releases and renews them, and Kafka delivers again what was released or whose lock ran out.

The lock tests set the group's ``share.record.lock.duration.ms`` to 15 s: the least Kafka takes
(``group.share.min.record.lock.duration.ms``, a static broker setting, 15 s by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType
from kafka.protocol.api_header import ResponseClassRegistry
from kafka.record import MemoryRecords

from dramatiq_kafka_broker import KafkaBroker
from dramatiq_kafka_broker.share import protocol
from dramatiq_kafka_broker.share.admin import configure_share_group
from dramatiq_kafka_broker.share.client import ShareClient
from dramatiq_kafka_broker.share.membership import ShareMembership
from dramatiq_kafka_broker.share.protocol import ACCEPT, RELEASE, RENEW
from dramatiq_kafka_broker.share.session import (
    CLOSE,
    ShareSession,
    acknowledge_request,
    acquired_ranges,
    fetch_request,
    records_by_offset,
)
from dramatiq_kafka_broker.share.state import AckBatch
from tests.conftest import in_ci

#: The least lock duration Kafka takes for a group, in milliseconds.
LOCK_MS = 15_000
#: How long a test waits for the group to assign partitions, in seconds.
ASSIGNMENT_TIMEOUT_S = 20
#: Where run.local.sh installs Kafka, whose client jar holds Kafka's own message definitions.
KAFKA_LIBS = Path(__file__).resolve().parents[2] / ".local" / "kafka" / "libs"


# -- the definitions -----------------------------------------------------------------------------------------
def _shape(fields: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What of a definition's fields is protocol (names, types, versions), not prose."""
    return [
        (
            f["name"],
            f["type"],
            f["versions"],
            f.get("nullableVersions"),
            f.get("default"),
            f.get("ignorable", False),
            tuple(_shape(f.get("fields", []))),
        )
        for f in fields
    ]


def _definition(text: str) -> dict[str, Any]:
    data = json.loads(re.sub(r"(?m)^\s*//.*$", "", text))
    structs = {s["name"]: s["fields"] for s in data.get("commonStructs", [])}

    def resolve(fields: list[dict[str, Any]]) -> None:
        for f in fields:
            inner = f["type"].removeprefix("[]")
            if inner in structs and "fields" not in f:
                f["fields"] = structs[inner]
            resolve(f.get("fields", []))

    resolve(data["fields"])
    return data


@pytest.mark.parametrize("name", protocol.MESSAGES)
@pytest.mark.parametrize("kind", ["Request", "Response"])
def test_our_definitions_carry_kafkas_own_fields_types_and_versions(name, kind):
    # Given Kafka's own definition, in the client jar of the Kafka that run.local.sh installs
    jars = sorted(KAFKA_LIBS.glob("kafka-clients-*.jar"))
    if not jars:
        message = f"no kafka-clients jar in {KAFKA_LIBS}: run ./run.local.sh setup"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with zipfile.ZipFile(jars[-1]) as jar:
        theirs = _definition(jar.read(f"common/message/{name}{kind}.json").decode())
    # When ours is read
    ours = _definition((Path(protocol.__file__).parent / "schemas" / f"{name}{kind}.json").read_text())
    # Then the protocol is the same: key, versions, and every field's name, type and versions
    for key in ("apiKey", "type", "name", "validVersions", "flexibleVersions"):
        assert ours[key] == theirs[key], key
    assert _shape(ours["fields"]) == _shape(theirs["fields"])


@pytest.mark.parametrize("name", protocol.MESSAGES)
def test_each_message_is_built_registered_and_round_trips_at_every_version(name):
    # Given the message's classes
    request_cls, response_cls = protocol.request_class(name), protocol.response_class(name)
    # Then kafka-python decodes the answers to its requests with ours
    assert request_cls.API_KEY == response_cls.API_KEY
    assert ResponseClassRegistry._response_class_registry[response_cls.API_KEY].name == response_cls.name
    # ...and an empty instance of each survives encoding and decoding at each version Kafka defines
    first = int(request_cls.json["validVersions"].split("-")[0])
    for version in range(first, request_cls.max_version + 1):
        for cls in (request_cls, response_cls):
            message = cls(**{_snake(f["name"]): _empty(f) for f in cls.json["fields"]})
            decoded = cls.decode(message.encode(version=version), version=version)
            for field in cls.json["fields"]:
                if _in_version(field["versions"], version):
                    name = _snake(field["name"])
                    assert getattr(decoded, name) == getattr(message, name), (cls.name, version, name)


def test_an_unknown_message_name_says_how_to_add_one():
    with pytest.raises(KeyError, match="list it in MESSAGES"):
        protocol.request_class("ShareGroupDescribe")


def _in_version(versions: str, version: int) -> bool:
    low, _, high = versions.partition("-")
    if low.endswith("+"):
        return version >= int(low[:-1])
    return int(low) <= version <= int(high or low)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _empty(field: dict[str, Any]) -> Any:
    kind = field["type"]
    if kind.startswith("[]"):
        return []
    if kind in ("string",):
        return "x"
    if kind == "uuid":
        return uuid.UUID(int=7)
    if kind == "bool":
        return False
    if kind == "records":
        return None if field.get("nullableVersions") else b""
    if kind[0].isupper():
        return None
    return 1


# -- against Kafka -------------------------------------------------------------------------------------------
class _Member:
    """One member of a share group, made of the share consumer's parts; the local Kafka has one node, which
    leads every partition."""

    def __init__(self, broker: KafkaBroker, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self.member_id = uuid.uuid4().hex
        self.net = ShareClient(broker.clients, 10_000)
        leaders = self.net.topic_leaders(topic)
        self.topic_id = leaders.topic_id
        (self.leader,) = set(leaders.leaders.values())
        self.all_partitions = sorted(leaders.leaders)
        self.membership = ShareMembership(self.net, group, self.member_id, topic, logging.getLogger(__name__))
        self.session = ShareSession()
        self.partitions: set[Any] = set()

    def join(self, *, every_partition: bool = False) -> list[int]:
        """Join; fetch the partitions assigned, or every partition (a member may fetch any partition: the
        assignment only spreads the members over them, so two members can be made to meet on one)."""
        from kafka.structs import TopicPartition

        deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
        while True:
            assigned = self.membership.heartbeat(self.topic_id)
            if assigned:
                fetched = self.all_partitions if every_partition else assigned
                self.partitions = {TopicPartition(self.topic, p) for p in fetched}
                return assigned
            assert time.monotonic() < deadline, "the share group assigned no partition in time"
            time.sleep(0.1)

    def fetch(
        self, acks: dict[Any, list[AckBatch]] | None = None, max_records: int = 100, wait_ms: int = 300
    ) -> tuple[list[tuple[int, int, int]], int]:
        """The records acquired, as (partition, offset, delivery count), and how many the batches held."""
        request = fetch_request(
            group=self.group,
            member_id=self.member_id,
            session=self.session,
            topic_id=self.topic_id,
            wanted=self.partitions,
            acks=acks or {},
            max_records=max_records,
            max_wait_ms=wait_ms,
        )
        answer = self.net.call(self.leader, request, 10_000 + wait_ms)
        assert answer.error_code == 0, answer
        self.session.advance()
        acquired, fetched = [], 0
        for topic in answer.responses:
            for data in topic.partitions:
                assert data.error_code == 0 and data.acknowledge_error_code == 0, data
                ranges = acquired_ranges(data)
                records = records_by_offset(data.records, ranges)
                fetched += _records_sent(data.records)
                for first, last, count in ranges:
                    acquired += [(data.partition_index, o, count) for o in range(first, last + 1)]
                    assert all(o in records for o in range(first, last + 1))
        return sorted(acquired), fetched

    def fetch_until(self, want: int, timeout_s: float = 10, **options: Any) -> list[tuple[int, int, int]]:
        got: list[tuple[int, int, int]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            got += self.fetch(**options)[0]
        return got

    def acknowledge(
        self, acks: dict[Any, list[AckBatch]], *, renew: bool = False, close: bool = False
    ) -> Any:
        request = acknowledge_request(
            group=self.group,
            member_id=self.member_id,
            epoch=CLOSE if close else self.session.epoch,
            topic_id=self.topic_id,
            acks=acks,
            renew=renew,
        )
        answer = self.net.call(self.leader, request)
        assert answer.error_code == 0, answer
        self.session.advance()
        return answer

    def close(self) -> None:
        try:
            if self.session.open:
                self.acknowledge({}, close=True)
            self.membership.leave()
        finally:
            self.net.close()


def _records_sent(data: bytes | None) -> int:
    """How many records the answer's batches carried, acquired or not."""
    return sum(1 for batch in MemoryRecords(data) for _ in batch) if data else 0


def _acks(topic: str, records: list[tuple[int, int, int]], kind: int) -> dict[Any, list[AckBatch]]:
    from kafka.structs import TopicPartition

    acks: dict[Any, list[AckBatch]] = {}
    for partition, offset, _ in records:
        acks.setdefault(TopicPartition(topic, partition), []).append(AckBatch(offset, offset, kind))
    return acks


@pytest.fixture
def share_group(kafka_broker: KafkaBroker) -> Iterator[tuple[str, str]]:
    """A fresh topic (3 partitions) and a share group on it that starts at the earliest offset."""
    kafka_broker.declare_queue("proto")
    kafka_broker.ensure_topics("proto")
    topic = kafka_broker.topic_for("proto")
    group = f"{kafka_broker.topic_prefix}proto.share"
    configure_share_group(kafka_broker.clients, group, delivery_limit=5)
    _set_group_config(kafka_broker, group, {"share.record.lock.duration.ms": str(LOCK_MS)})
    yield topic, group
    names = ["share.record.lock.duration.ms", "share.auto.offset.reset", "share.delivery.count.limit"]
    _set_group_config(kafka_broker, group, {n: (AlterConfigOp.DELETE, None) for n in names})


def _set_group_config(broker: KafkaBroker, group: str, configs: dict[str, Any]) -> None:
    resource = ConfigResource(ConfigResourceType.GROUP, group, configs)
    answer = broker.clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)
    assert answer == {"group": {group: "OK"}}


def _produce(servers: str, topic: str, count: int, partition: int = 0) -> None:
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=200)
    try:
        for n in range(count):
            producer.send(topic, f"m{n}".encode(), partition=partition)
        producer.flush(10)
    finally:
        producer.close()


@pytest.fixture
def members(kafka_broker: KafkaBroker, share_group: tuple[str, str]) -> Iterator[list[_Member]]:
    made: list[_Member] = []
    topic, group = share_group

    def make() -> _Member:
        member = _Member(kafka_broker, group, topic)
        made.append(member)
        return member

    yield make  # type: ignore[misc]
    for member in made:
        with contextlib.suppress(Exception):  # (a test that failed may leave a member half-closed)
            member.close()


def test_a_member_joins_and_gets_every_partition(members, share_group):
    # Given a share group on a topic of 3 partitions
    member = members()
    # When one member joins
    assigned = member.join()
    # Then the coordinator assigns it all three, with a member epoch above 0
    assert sorted(assigned) == [0, 1, 2]
    assert member.membership.epoch > 0


def test_only_the_acquired_records_of_a_fetched_batch_are_a_members(
    members, share_group, kafka_bootstrap_servers
):
    # Given ten records in one batch of partition 0, and two members
    topic, _ = share_group
    _produce(kafka_bootstrap_servers, topic, 10)
    first, second = members(), members()
    first.join(every_partition=True)
    second.join(every_partition=True)
    # When the first fetches at most 3 (record-limit mode)
    acquired, fetched = [], 0
    deadline = time.monotonic() + 10
    while not acquired and time.monotonic() < deadline:
        acquired, fetched = first.fetch(max_records=3)
    # Then it acquired 3, though the batch it was sent held more
    assert [(p, o) for p, o, _ in acquired] == [(0, 0), (0, 1), (0, 2)]
    assert fetched > 3
    # ...and the second member acquires the other seven, none of the first's
    rest = second.fetch_until(7)
    assert [o for _, o, _ in rest] == list(range(3, 10))
    assert all(count == 1 for _, _, count in acquired + rest)


def test_a_released_record_comes_again_with_a_higher_delivery_count(
    members, share_group, kafka_bootstrap_servers
):
    topic, _ = share_group
    _produce(kafka_bootstrap_servers, topic, 2)
    member = members()
    member.join()
    got = member.fetch_until(2)
    assert [(o, c) for _, o, c in got] == [(0, 1), (1, 1)]
    # When it accepts the first and releases the second, on its next fetch
    acks = _acks(topic, got[:1], ACCEPT)
    for partition, batches in _acks(topic, got[1:], RELEASE).items():
        acks.setdefault(partition, []).extend(batches)
    again = member.fetch(acks=acks)[0] or member.fetch_until(1)
    # Then only the released one comes again, delivered for the second time
    assert [(o, c) for _, o, c in again] == [(1, 2)]


def test_an_accepted_record_is_not_delivered_again(members, share_group, kafka_bootstrap_servers):
    topic, _ = share_group
    _produce(kafka_bootstrap_servers, topic, 3)
    first = members()
    first.join()
    got = first.fetch_until(3)
    # When the first member accepts all three with a ShareAcknowledge, then leaves
    first.acknowledge(_acks(topic, got, ACCEPT))
    first.close()
    # Then a new member gets none of them
    second = members()
    second.join()
    assert second.fetch_until(1, timeout_s=3) == []


def test_a_record_not_acknowledged_comes_again_once_its_lock_ran_out(
    members, share_group, kafka_bootstrap_servers
):
    # Given a record acquired by a member that then says nothing (a worker that died)
    topic, _ = share_group
    _produce(kafka_bootstrap_servers, topic, 1)
    first, second = members(), members()
    first.join(every_partition=True)
    second.join(every_partition=True)
    assert [(o, c) for _, o, c in first.fetch_until(1)] == [(0, 1)]
    started = time.monotonic()
    # When the other member fetches
    again = second.fetch_until(1, timeout_s=LOCK_MS / 1000 + 10, wait_ms=500)
    # Then it gets it once the lock ran out, delivered for the second time
    assert [(o, c) for _, o, c in again] == [(0, 2)]
    assert time.monotonic() - started >= LOCK_MS / 1000 - 1


def test_a_renewed_lock_keeps_the_record_from_other_members(members, share_group, kafka_bootstrap_servers):
    # Given a record acquired by a member (Kafka 4.3's ShareAcknowledge v2 renews)
    topic, _ = share_group
    _produce(kafka_bootstrap_servers, topic, 1)
    first, second = members(), members()
    first.join(every_partition=True)
    second.join(every_partition=True)
    assert first.net.api_version(protocol.request_class("ShareAcknowledge")) >= 2
    got = first.fetch_until(1)
    assert got
    # When it renews the lock every third of it, for longer than a lock lasts
    deadline = time.monotonic() + LOCK_MS / 1000 + 5
    stolen = []
    while time.monotonic() < deadline:
        answer = first.acknowledge(_acks(topic, got, RENEW), renew=True)
        assert answer.acquisition_lock_timeout_ms == LOCK_MS
        stolen += second.fetch(wait_ms=LOCK_MS // 3)[0]
    # Then the other member never got it, and the first can still accept it
    assert stolen == []
    answer = first.acknowledge(_acks(topic, got, ACCEPT))
    assert all(p.error_code == 0 for t in answer.responses for p in t.partitions)


def test_a_node_that_cannot_be_reached_fails_alone(kafka_broker):
    # Given the share consumer's client, and a request for a node that answers and one that does not exist
    from kafka.protocol.metadata import MetadataRequest

    from dramatiq_kafka_broker import KafkaConnectionError

    net = ShareClient(kafka_broker.clients, 5_000)
    try:
        node = net.any_node()
        request = MetadataRequest(topics=[], min_version=10)
        # When both are sent at once
        answers = net.call_many({node: request, 4242: request})
        # Then the node that exists answered, and the other's failure is returned, not raised
        assert answers[node].brokers
        assert isinstance(answers[4242], KafkaConnectionError)
        with pytest.raises(KafkaConnectionError):
            net.call(4242, request)
    finally:
        net.close()
