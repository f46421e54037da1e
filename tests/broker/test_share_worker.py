"""Share mode with real ``dramatiq`` worker processes (``tests/broker/worker_app.py``): a worker killed
with SIGKILL loses nothing -- what it held comes back once its locks run out -- and redoes no more than it
held."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import dramatiq
import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from tests.broker.conftest import delete_topics, make_kafka_broker
from tests.broker.test_kafka_broker import PREFETCH, kill_hard, processed, spawn_worker, wait_until
from tests.livestack import stop

#: The least lock duration Kafka takes for a group (``group.share.min.record.lock.duration.ms``), in ms.
LOCK_MS = 15_000


@pytest.fixture
def share_sender(kafka_bootstrap_servers: str, topic_prefix: str, monkeypatch) -> Iterator[tuple]:
    """A share-mode broker in the test process that declares the worker processes' actor; the workers
    spawned in the test run in share mode too, in a group whose locks last 15 s."""
    monkeypatch.setenv("TEST_GROUP_TYPE", "share")
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, group_type="share")
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=0)
    def work(n: int) -> None:  # the worker processes run the real one (tests/broker/worker_app.py)
        raise AssertionError("runs in the worker processes only")

    broker.ensure_topics("default")
    group = broker.group_for("default")
    resource = ConfigResource(
        ConfigResourceType.GROUP, group, {"share.record.lock.duration.ms": str(LOCK_MS)}
    )
    broker.clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)
    yield broker, work
    delete_topics(broker)
    broker.close()


@pytest.mark.slow  # (real worker processes)
def test_a_share_worker_killed_mid_stream_loses_nothing_and_redoes_no_more_than_it_held(
    kafka_bootstrap_servers, topic_prefix, share_sender, tmp_path
):
    # Given 1,000 messages and a share-mode worker working through them
    broker, work = share_sender
    log = tmp_path / "log"
    total = 1000
    broker.enqueue_many([work.message(n) for n in range(total)])
    victim = spawn_worker(kafka_bootstrap_servers, topic_prefix, log, sleep_ms=2)
    # When it is killed with SIGKILL part-way through, and another worker takes over
    wait_until(lambda: len(processed(log)) >= 300)
    kill_hard(victim)
    killed_at = len(processed(log))
    survivor = spawn_worker(kafka_bootstrap_servers, topic_prefix, log)
    try:
        broker.join("default", timeout=120_000)
    finally:
        stop(survivor)

    # Then every message ran at least once...
    rows = processed(log)
    counts = collections.Counter(n for _, n in rows)
    assert killed_at < total and set(counts) == set(range(total))
    # ...and what ran twice is what the killed worker held: fetched and not accepted yet
    redone = sum(c - 1 for c in counts.values())
    assert redone <= 2 * PREFETCH, redone
