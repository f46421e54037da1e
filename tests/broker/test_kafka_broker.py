"""What only the Kafka broker promises: shared partitions, crashes, rebalances, keys, delays that survive
restarts, and records that are not Dramatiq messages.  Real Kafka, real worker processes."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dramatiq
import kafka.errors
import prometheus_client
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata

from dramatiq_kafka_broker import KafkaBroker
from dramatiq_kafka_broker.clients import KafkaClients
from dramatiq_kafka_broker.metrics import DELIVERY_ERRORS_METRIC
from tests.broker.conftest import delete_topics, make_kafka_broker
from tests.livestack import spawn, stop, stop_all

ROOT = Path(__file__).resolve().parents[2]
THREADS = 4
#: What a worker may hold un-acked: Dramatiq's queue prefetch (2 per thread).
PREFETCH = 2 * THREADS


def spawn_worker(
    servers: str, prefix: str, log: Path, *, sleep_ms: int = 0, commit_ms: int = 100
) -> subprocess.Popen:
    env = {
        **os.environ,
        "TEST_KAFKA": servers,
        "TEST_PREFIX": prefix,
        "TEST_LOG": str(log),
        "TEST_SLEEP_MS": str(sleep_ms),
        "TEST_COMMIT_MS": str(commit_ms),
        "PYTHONPATH": str(ROOT),
        "dramatiq_restart_delay": "500",
    }
    argv = [sys.executable, "-m", "dramatiq", "tests.broker.worker_app", "--processes", "1"]
    # (a process group of its own, so that kill -9 takes the forked worker too; output in worker.log)
    return spawn("worker", [*argv, "--threads", str(THREADS)], env=env, logs=log.parent)


def kill_hard(process: subprocess.Popen) -> None:
    stop(process, signal.SIGKILL, timeout=30)


def processed(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        pid, n = line.split()
        rows.append((int(pid), int(n)))
    return rows


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def sender(kafka_bootstrap_servers: str, topic_prefix: str):
    """A broker in the test process that declares the same actor as the worker processes."""
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix)
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=0)
    def work(n: int) -> None:  # the worker processes run the real one (tests/broker/worker_app.py)
        raise AssertionError("runs in the worker processes only")

    yield broker, work
    delete_topics(broker)
    broker.close()


@pytest.mark.slow  # (a real worker process)
def test_a_foreign_dramatiq_app_on_the_broker_declares_only_its_own_actors(
    kafka_bootstrap_servers, topic_prefix, sender, tmp_path
):
    # Given another team's app (tests/broker/worker_app.py) run by `dramatiq` on our broker (``sender`` made
    # the test's broker global, so the actor below is declared on it)
    @dramatiq.actor
    def report() -> None:  # the worker process runs the real one
        raise AssertionError("runs in the worker process only")

    log = tmp_path / "log"
    worker = spawn_worker(kafka_bootstrap_servers, topic_prefix, log)
    try:
        # When it runs a message that reports what the worker process declared and loaded
        report.send()
        report_file = Path(f"{log}.report")
        wait_until(report_file.exists, timeout=120)
        reported = json.loads(report_file.read_text().splitlines()[0])
    finally:
        stop(worker)
    # Then it declared its own actors only, and loaded nothing of the service
    assert reported["actors"] == ["report", "work"]
    assert reported["service_modules"] == []


@pytest.mark.slow  # (real worker processes)
def test_two_worker_processes_share_the_queue_partitions(
    kafka_bootstrap_servers, topic_prefix, sender, tmp_path
):
    # Given two worker processes in the same consumer group
    broker, work = sender
    log = tmp_path / "log"
    workers = [spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=5) for _ in range(2)]
    try:
        group = broker.group_for("default")

        def both_joined() -> bool:
            described = broker.clients.admin_call("describe_groups", [group]).get(group) or {}
            return described.get("group_state") == "Stable" and len(described.get("members") or []) == 2

        wait_until(both_joined, timeout=120)
        # When 600 messages are sent
        broker.enqueue_many([work.message(n) for n in range(600)])
        broker.join("default", timeout=120_000)
    finally:
        stop_all(workers)

    # Then every message ran, and both processes took part
    rows = processed(log)
    assert sorted({n for _, n in rows}) == list(range(600))
    assert len({pid for pid, _ in rows}) == 2


@pytest.mark.slow  # (real worker processes)
def test_a_worker_killed_mid_stream_loses_nothing_and_redoes_no_more_than_it_held(
    kafka_bootstrap_servers, topic_prefix, sender, tmp_path
):
    # Given 3,000 messages and a worker that commits after every batch of acks
    broker, work = sender
    log = tmp_path / "log"
    total = 3000
    broker.enqueue_many([work.message(n) for n in range(total)])
    redone = 0
    for _round in range(3):
        # When a worker is killed with SIGKILL part-way through, three times over
        before = len(processed(log))
        victim = spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=2, commit_ms=0)
        wait_until(lambda b=before: len(processed(log)) >= b + 300)
        kill_hard(victim)
    survivor = spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=0, commit_ms=0)
    try:
        broker.join("default", timeout=120_000)
    finally:
        stop(survivor)

    # Then every message ran at least once...
    counts = collections.Counter(n for _, n in processed(log))
    assert set(counts) == set(range(total))
    # ...and what ran twice is bounded, per kill, by what the worker held un-acked or acked but not yet
    # committed (at most a prefetch window each).
    redone = sum(c - 1 for c in counts.values())
    assert redone <= 3 * 2 * PREFETCH, redone


@pytest.mark.slow  # (real worker processes)
def test_a_rebalance_while_messages_are_in_flight_loses_nothing(
    kafka_bootstrap_servers, topic_prefix, sender, tmp_path
):
    # Given one slow worker busy with 400 messages
    broker, work = sender
    log = tmp_path / "log"
    broker.enqueue_many([work.message(n) for n in range(400)])
    first = spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=20)
    second = None
    try:
        wait_until(lambda: len(processed(log)) >= 50)
        # When a second worker joins the group (partitions move while messages are in flight)
        second = spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=20)
        broker.join("default", timeout=120_000)
    finally:
        stop_all([first, second])

    # Then every message ran, and the redone ones are bounded by what was in flight
    counts = collections.Counter(n for _, n in processed(log))
    assert set(counts) == set(range(400))
    assert sum(c - 1 for c in counts.values()) <= 2 * PREFETCH


def test_messages_with_the_same_partition_key_keep_their_order(
    kafka_bootstrap_servers, kafka_broker: KafkaBroker
):
    # Given messages for three keys, interleaved
    @dramatiq.actor
    def keyed(key: str, n: int) -> None:
        pass

    messages = [keyed.message_with_options(args=(k, n), partition_key=k) for n in range(30) for k in "abc"]

    # When they are enqueued
    kafka_broker.enqueue_many(messages)

    # Then each key's messages sit in one partition, in the order they were sent
    reader = KafkaConsumer(
        kafka_broker.topic_for("default"),
        bootstrap_servers=kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    seen: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for record in reader:
        message = dramatiq.Message.decode(record.value)
        seen[message.args[0]].append((record.partition, message.args[1]))
    reader.close()
    for key in "abc":
        assert len({p for p, _ in seen[key]}) == 1
        assert [n for _, n in seen[key]] == list(range(30))


def test_delayed_messages_acked_behind_a_long_delay_are_not_run_again_after_a_restart(
    kafka_bootstrap_servers, topic_prefix
):
    # Given a one-partition delay queue holding one long delay, then ten short ones behind it
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, partitions=1)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    ran: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def later(n: int) -> None:
        with lock:
            ran.append(n)

    try:
        later.send_with_options(args=(-1,), delay=120_000)
        for n in range(10):
            later.send_with_options(args=(n,), delay=100)

        # When a worker runs the short ones, then restarts while still holding the long one
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
        worker.start()
        wait_until(lambda: len(ran) == 10)
        time.sleep(0.5)
        worker.stop()
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
        worker.start()
        # the new worker picks the long one up again (it was never acked)...
        wait_until(
            lambda: (
                sum(broker.admin.lag("default.DQ").values()) == 1
                and sum(broker.admin.lag("default").values()) == 0
            )
        )
        time.sleep(1.0)
        worker.stop()
    finally:
        delete_topics(broker)
        broker.close()

    # Then each short one ran exactly once, and the long one has not run yet
    assert sorted(ran) == list(range(10))


def test_a_record_that_is_not_a_dramatiq_message_goes_to_the_failed_topic(
    kafka_bootstrap_servers, kafka_broker: KafkaBroker, kafka_worker
):
    # Given a queue with a garbage record on it, then a real message
    seen: list[str] = []

    @dramatiq.actor
    def fine(x: str) -> None:
        seen.append(x)

    kafka_broker.ensure_topics("default")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    producer.send(kafka_broker.topic_for("default"), b"\xff not json").get(10)
    producer.close()
    fine.send("ok")

    # When the worker drains the queue
    kafka_broker.join("default", timeout=60_000, fail_fast=False)

    # Then the real message ran and the garbage is on the failed topic with its reason
    assert seen == ["ok"]
    failed = list(kafka_broker.admin.failed_messages("default"))
    assert [f.raw for f in failed] == [b"\xff not json"]
    assert failed[0].message is None and failed[0].reason.startswith("DecodeError")


def test_failed_messages_can_be_replayed_onto_their_queue(kafka_broker: KafkaBroker, kafka_worker):
    # Given an actor that fails until it is allowed to succeed
    allowed = threading.Event()
    done: list[int] = []

    @dramatiq.actor(max_retries=0)
    def picky(n: int) -> None:
        if not allowed.is_set():
            raise RuntimeError("not now")
        done.append(n)

    for n in range(3):
        picky.send(n)
    with pytest.raises(RuntimeError, match="not now"):  # join re-raises the actor's own exception
        kafka_broker.join("default", timeout=60_000)
    assert kafka_broker.admin.failed_count("default") == 3
    assert all(f.reason == "RuntimeError: not now" for f in kafka_broker.admin.failed_messages("default"))

    # When the cause is fixed and the failed messages are replayed
    allowed.set()
    replayed, left = kafka_broker.admin.replay_failed("default")
    kafka_broker.join("default", timeout=60_000)

    # Then they ran and the failed topic is empty
    assert (replayed, left) == (3, 0)
    assert sorted(done) == [0, 1, 2]
    assert kafka_broker.admin.failed_count("default") == 0


def test_enqueue_raises_a_broker_error_when_kafka_cannot_be_reached():
    # Given a broker pointed at a port where nothing listens
    broker = KafkaBroker(bootstrap_servers="127.0.0.1:1", send_timeout_ms=1000)
    broker.declare_queue("default")
    message = dramatiq.Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={})

    # When I enqueue, Then it fails fast with a Dramatiq connection error
    with pytest.raises(dramatiq.errors.BrokerConnectionError):
        broker.enqueue(message)


def test_sends_inside_a_batch_block_are_all_acknowledged_when_it_ends(kafka_broker, kafka_worker):
    # Given an actor
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def counted(n: int) -> None:
        with lock:
            seen.append(n)

    # When 200 messages are sent with plain send() inside broker.batch()
    with kafka_broker.batch():
        for n in range(200):
            counted.send(n)
    # Then, once the block is left, every one is in Kafka (the lag counts them) and each runs once
    kafka_broker.join("default", timeout=60_000)
    assert sorted(seen) == list(range(200))


def test_a_batch_block_raises_when_kafka_cannot_take_its_messages():
    # Given a broker pointed at a port where nothing listens
    broker = KafkaBroker(bootstrap_servers="127.0.0.1:1", send_timeout_ms=1000)
    broker.declare_queue("default")
    message = dramatiq.Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={})

    # When messages are sent in a batch block, Then the block fails with a Dramatiq connection error
    with pytest.raises(dramatiq.errors.BrokerConnectionError), broker.batch():
        broker.enqueue(message)


@pytest.fixture
def unconfirmed_broker(kafka_bootstrap_servers: str, topic_prefix: str):
    """A broker with ``confirm_delivery`` off whose producer holds records for 5 s (``linger_ms``): they stay
    in flight until something flushes them."""
    broker = make_kafka_broker(
        kafka_bootstrap_servers,
        topic_prefix,
        confirm_delivery=False,
        producer_options={"linger_ms": 5_000},
    )
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    delete_topics(broker)
    broker.close()


def delivery_errors_counted(queue_name: str, actor_name: str) -> float:
    labels = {"queue_name": queue_name, "actor_name": actor_name}
    return prometheus_client.REGISTRY.get_sample_value(DELIVERY_ERRORS_METRIC, labels) or 0.0


def test_without_confirm_delivery_a_send_loop_returns_before_kafka_acks_and_join_waits_for_them(
    unconfirmed_broker: KafkaBroker,
):
    # Given a broker with confirm_delivery off, its topics, and a worker
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def counted(n: int) -> None:
        with lock:
            seen.append(n)

    unconfirmed_broker.ensure_topics("default")
    worker = dramatiq.Worker(unconfirmed_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        # When 300 messages are sent with a plain send() loop
        for n in range(300):
            counted.send(n)

        # Then the loop returned with records still in the producer's buffer (no send waited for its ack)
        assert unconfirmed_broker.clients.producer._accumulator.has_incomplete
        # ...and join waits for them to reach Kafka, then to run: each runs once
        unconfirmed_broker.join("default", timeout=60_000)
        assert sorted(seen) == list(range(300))
    finally:
        worker.stop()


def test_without_confirm_delivery_a_message_kafka_refuses_is_logged_and_counted(
    unconfirmed_broker: KafkaBroker, caplog
):
    # Given a broker with confirm_delivery off, and a queue topic that takes records of up to 1 kB only
    unconfirmed_broker.clients.admin_call(
        "create_topics",
        {
            unconfirmed_broker.topic_for("default"): {
                "num_partitions": 1,
                "replication_factor": 1,
                "configs": {"max.message.bytes": "1024"},
            }
        },
    )

    @dramatiq.actor
    def sized(text: str) -> None:
        pass

    unconfirmed_broker.ensure_topics("default")
    before = delivery_errors_counted("default", "sized")

    # When a message of 10 kB is sent (send() does not raise: Kafka refuses it later)
    with caplog.at_level(logging.ERROR):
        big = sized.send("x" * 10_000)
        unconfirmed_broker.join("default", timeout=60_000)  # waits until Kafka has taken or refused it

    # Then the refused message is logged with its id and the error, and counted once
    refused = [r for r in caplog.records if "Kafka did not take message" in r.getMessage()]
    assert len(refused) == 1 and big.message_id in refused[0].getMessage()
    assert "MessageSizeTooLarge" in refused[0].getMessage()
    assert delivery_errors_counted("default", "sized") == before + 1
    assert sum(unconfirmed_broker.admin.lag("default").values()) == 0
    # ...and the broker's next message reaches Kafka (its failed producer was replaced)
    with unconfirmed_broker.batch():  # which waits for the ack even with confirm_delivery off
        sized.send("small")
    assert sum(unconfirmed_broker.admin.lag("default").values()) == 1
    assert delivery_errors_counted("default", "sized") == before + 1


def test_without_confirm_delivery_close_delivers_what_the_producer_still_holds(
    kafka_bootstrap_servers, topic_prefix, unconfirmed_broker: KafkaBroker
):
    # Given a broker with confirm_delivery off holding 50 sent messages in its producer's buffer
    @dramatiq.actor
    def held(n: int) -> None:
        pass

    unconfirmed_broker.ensure_topics("default")
    for n in range(50):
        held.send(n)
    assert unconfirmed_broker.clients.producer._accumulator.has_incomplete

    # When the broker is closed
    unconfirmed_broker.close()

    # Then all 50 are in Kafka, waiting for a worker
    reader = make_kafka_broker(kafka_bootstrap_servers, topic_prefix)
    try:
        reader.declare_queue("default")
        assert sum(reader.admin.lag("default").values()) == 50
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("replication_factor", "asked", "expected"),
    [(1, None, None), (2, None, None), (3, None, 2), (5, None, 2), (3, 1, 1), (3, 3, 3)],
)
def test_min_insync_replicas_is_two_with_three_replicas_unless_asked_otherwise(
    replication_factor, asked, expected
):
    # Given a replication factor and maybe an explicit min.insync.replicas, When a broker is made
    broker = KafkaBroker(replication_factor=replication_factor, min_insync_replicas=asked, middleware=[])
    # Then the topics it creates will carry this one (None: the Kafka brokers' own default)
    assert broker.min_insync_replicas == expected


@pytest.mark.parametrize(("replication_factor", "asked"), [(1, 2), (3, 4), (3, 0)])
def test_a_min_insync_replicas_kafka_could_never_meet_is_refused(replication_factor, asked):
    with pytest.raises(ValueError, match="min_insync_replicas must be from 1 to the replication factor"):
        KafkaBroker(replication_factor=replication_factor, min_insync_replicas=asked, middleware=[])


def test_the_topics_a_broker_creates_carry_its_min_insync_replicas(kafka_bootstrap_servers, topic_prefix):
    # Given a broker that asks for min.insync.replicas=1 explicitly (one node here: more is impossible)
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, min_insync_replicas=1)
    try:
        broker.declare_queue("default")
        # When it creates the queue's topics
        broker.ensure_topics("default")
        # Then each of the three has it as a topic config of its own (not the brokers' default)
        for name in ("default", "default.DQ", "default.XQ"):
            topic = broker.topic_for(name)
            described = broker.clients.admin_call(
                "describe_configs", [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            entry = described["topic"][topic]["min.insync.replicas"]
            assert (entry["value"], entry["config_source"]) == ("1", "DYNAMIC_TOPIC_CONFIG"), topic
    finally:
        delete_topics(broker)
        broker.close()


class _FlakyAdmin:
    """An admin client whose ``list_topics`` fails with ``errors`` in turn, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def list_topics(self) -> list[str]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return ["answered"]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("errors", "calls", "answers"),
    [
        # a coordinator or leader on the move (one node of a cluster went away): asked again, it answers
        ([kafka.errors.NotCoordinatorError()], 2, True),
        ([kafka.errors.CoordinatorNotAvailableError(), kafka.errors.LeaderNotAvailableError()], 3, True),
        # ...but not forever
        ([kafka.errors.NotCoordinatorError()] * 3, 3, False),
        # an unreachable Kafka is reported at once
        ([kafka.errors.KafkaConnectionError()], 1, False),
    ],
)
def test_admin_calls_are_made_again_while_a_coordinator_or_leader_moves(monkeypatch, errors, calls, answers):
    # Given a broker whose admin client fails with these errors before it answers
    monkeypatch.setattr("dramatiq_kafka_broker.clients.ADMIN_RETRY_BACKOFF_S", 0)
    broker = KafkaBroker(middleware=[])
    flaky = _FlakyAdmin(list(errors))
    monkeypatch.setattr(KafkaClients, "admin", property(lambda self: flaky))
    # When a call is made, Then it answers, or raises the broker's connection error, after so many calls
    if answers:
        assert broker.clients.admin_call("list_topics") == ["answered"]
    else:
        with pytest.raises(dramatiq.errors.BrokerConnectionError):
            broker.clients.admin_call("list_topics")
    assert flaky.calls == calls


class _FakeKafkaConsumer:
    """Just enough of kafka-python's ``KafkaConsumer`` for ``_KafkaConsumer``'s bookkeeping, driven by hand:
    ``records`` are returned by the next ``poll``, ``committed`` answers offset fetches, commits are kept."""

    def __init__(self) -> None:
        self.records: dict[TopicPartition, list[SimpleNamespace]] = {}
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self._cluster = SimpleNamespace(config={}, partitions_for_topic=lambda topic: {0})
        self._coordinator = SimpleNamespace(
            rejoining=False,
            rejoin_needed=False,
            fetch_committed_offsets_async=self._fetch_committed,
            _commit_offsets_sync_async=self._commit_async,
        )

    async def _fetch_committed(self, partitions):
        return {tp: self.committed.get(tp) for tp in partitions}

    async def _commit_async(self, offsets, timeout_ms=None):
        self.commit(offsets)

    def commit(self, offsets, timeout_ms=None):
        self.commits.append(dict(offsets))
        self.committed.update(offsets)

    def poll(self, timeout_ms=0, max_records=None):
        records, self.records = self.records, {}
        return records

    def partitions_for_topic(self, topic):
        return {0}

    def subscribe(self, topics, listener=None):
        pass

    def seek(self, tp, offset):
        pass

    def pause(self, *partitions):
        pass

    def resume(self, *partitions):
        pass

    def assignment(self):
        return set()

    def paused(self):
        return set()

    def close(self, autocommit=False):
        pass


def test_an_ack_that_arrives_while_its_partition_is_away_is_committed_once_the_partition_is_back(monkeypatch):
    # Given a consumer that was handed offset 0 of its partition (a delayed message, held until its eta)
    broker = KafkaBroker(middleware=[], commit_interval_ms=0)
    broker.declare_queue("default")
    fake = _FakeKafkaConsumer()
    monkeypatch.setattr(broker.clients, "new_consumer", lambda **options: fake)
    monkeypatch.setattr(broker, "ensure_topics", lambda queue_name: None)
    consumer = broker.consume("default.DQ", prefetch=10, timeout=10)
    tp = TopicPartition(broker.topic_for("default.DQ"), 0)
    asyncio.run(consumer.listener.on_partitions_assigned([tp]))
    message = dramatiq.Message(queue_name="default.DQ", actor_name="later", args=(), kwargs={}, options={})
    fake.records = {tp: [SimpleNamespace(offset=0, value=message.encode())]}
    held = next(consumer)
    assert held is not None

    # When a rebalance takes the partition away (its commit point, 0, is committed), the message is acked
    # meanwhile, and the rebalance gives the partition back unchanged
    asyncio.run(consumer.listener.on_partitions_revoked([tp]))
    consumer.ack(held)
    assert next(consumer) is None  # (the consumer thread goes on polling while the group rejoins)
    asyncio.run(consumer.listener.on_partitions_assigned([tp]))
    assert next(consumer) is None

    # Then the ack is committed: the partition's lag is 0, nothing would run again after a restart
    assert fake.committed[tp].offset == 1, fake.commits


def test_a_consumer_whose_prefetch_was_full_at_a_rebalance_fetches_the_partition_it_kept(
    kafka_bootstrap_servers, topic_prefix
):
    # Given a consumer of a one-partition queue that holds as many messages as its prefetch allows, so it
    # has paused its partition, with more messages waiting behind them
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, partitions=1)
    try:
        broker.declare_queue("q")
        for n in range(3):
            broker.enqueue(dramatiq.Message(queue_name="q", actor_name="a", args=(n,), kwargs={}, options={}))
        consumer = broker.consume("q", prefetch=1, timeout=50)
        first = _next_message(consumer)
        assert next(consumer) is None

        # When the group rebalances and gives the consumer its partition again: another member joins the
        # group for another topic (the delay topic), which it alone reads
        joined = threading.Event()
        stop_other = threading.Event()

        def other_member() -> None:
            other = broker.clients.new_consumer(group_id=broker.group_for("q"))
            other.subscribe([broker.topic_for("q.DQ")])
            while not stop_other.is_set():
                other.poll(timeout_ms=50)
                if other.assignment():
                    joined.set()
            other.close()

        thread = threading.Thread(target=other_member)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not joined.is_set():
                assert time.monotonic() < deadline, "the second member never got its partitions"
                assert next(consumer) is None  # (the consumer rejoins inside its polls)
            assert consumer.kafka.assignment() == {TopicPartition(broker.topic_for("q"), 0)}

            # Then, once the message it held is acked, it fetches the next ones from the partition it kept
            consumer.ack(first)
            second = _next_message(consumer, timeout=10)
            assert second.args == (1,)
        finally:
            stop_other.set()
            thread.join()
        consumer.close()
    finally:
        delete_topics(broker)
        broker.close()


def _next_message(consumer, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError(f"no message in {timeout} s")


def test_a_consumer_left_without_partitions_says_why_and_what_to_do(monkeypatch, caplog):
    # Given a consumer of a group that has more members than its topic has partitions
    broker = KafkaBroker(middleware=[])
    broker.declare_queue("default")
    monkeypatch.setattr(broker.clients, "new_consumer", lambda **options: _FakeKafkaConsumer())
    monkeypatch.setattr(broker, "ensure_topics", lambda queue_name: None)
    consumer = broker.consume("default", prefetch=10, timeout=10)
    # When the group's rebalance gives it no partition
    with caplog.at_level("WARNING"):
        asyncio.run(consumer.listener.on_partitions_assigned([]))
    # Then it warns, naming the topic and the cure
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert broker.topic_for("default") in warning.getMessage()
    assert "more consumers than the topic has partitions" in warning.getMessage()
    assert "KAFKA_PARTITIONS" in warning.getMessage()


def test_a_single_node_has_no_under_replicated_partition(kafka_broker):
    # Given the queue's topics on a single node (one replica each, always in sync)
    kafka_broker.declare_queue("default")
    # When asked, Then every topic of the queue is named, with no partition under-replicated
    assert kafka_broker.admin.under_replicated("default") == {"default": 0, "default.DQ": 0, "default.XQ": 0}


def test_kafka_pythons_own_metrics_are_off_unless_the_client_options_turn_them_on():
    # Given clients with default options, and clients whose common options ask for kafka-python's metrics
    default = KafkaClients(bootstrap_servers=["127.0.0.1:1"], client_id="t", timeout_ms=1000)
    asked = KafkaClients(
        bootstrap_servers=["127.0.0.1:1"],
        client_id="t",
        timeout_ms=1000,
        client_options={"metrics_enabled": True},
    )
    # Then the producer and the consumers are built without them by default, with them when asked
    for client in (KafkaProducer, KafkaConsumer):
        assert default.options(client, {})["metrics_enabled"] is False, client
        assert asked.options(client, {})["metrics_enabled"] is True, client
