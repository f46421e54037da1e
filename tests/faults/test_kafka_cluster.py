"""A Kafka of three nodes loses one node, then another, under load: the system carries on.

A Kafka of several brokers by configuration alone: the stack is the same web and worker
processes as everywhere else, given ``KAFKA_BOOTSTRAP_SERVERS`` with three addresses and
``KAFKA_REPLICATION_FACTOR=3`` and nothing more.  The cluster is started by ``scripts/kafka.sh`` with
``LOCAL_KAFKA_NODES=3`` (:mod:`faults.cluster`), beside the session's single-node Kafka.

A node is taken away twice: by SIGTERM, as a rolling restart does (a controlled shutdown hands its
leaderships over first: nobody waits), and by ``kill -9``.  After a crash, the partitions it led have no
leader, and those it followed cannot take an ``acks=all`` write, until the controller fences the dead node
(``broker.session.timeout.ms``, 9 s) -- 9 to 14 s here.  Requests in that window wait; the default
``KAFKA_SEND_TIMEOUT_MS`` (20 s) is chosen to outlast it, so they are accepted late, not refused.
"""

from __future__ import annotations

import collections
import statistics
import time
import uuid
from collections.abc import Iterator

import pytest

from dramatiq_kafka_broker import DEFAULT_SEND_TIMEOUT_MS
from tests.faults.cluster import LocalCluster
from tests.faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: How long each killed node stays away, in seconds: longer than the controller takes to fence it.
AWAY_S = 15


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three Kafka nodes of their own, removed (data and all) when the module ends."""
    started = LocalCluster(nodes=3)
    try:
        started.up()
        yield started
    finally:
        started.remove()


@pytest.fixture(scope="module")
def kafka_bootstrap_servers(cluster: LocalCluster) -> str:
    """The stacks of this module run on the three-node cluster (``make_stack`` takes this address)."""
    return cluster.bootstrap_servers


# Beside the rest of the suite its cluster's start, load and two node returns take up to about 5 min, and
# the stack's stop comes on top: more than the suite's 300 s per test.
@pytest.mark.timeout(600)
def test_a_three_node_kafka_loses_a_node_by_restart_then_by_crash_under_load_and_nothing_accepted_is_lost(
    cluster, make_stack, figures
):
    # Given web and two workers configured for the cluster by environment alone
    stack = make_stack(
        workers=2, KAFKA_REPLICATION_FACTOR="3", KAFKA_SEND_TIMEOUT_MS=str(DEFAULT_SEND_TIMEOUT_MS)
    )
    stack.wait_consuming(2)
    processes = stack.alive()
    queue = f"{stack.prefix}users"
    topics = [queue, f"{queue}.DQ", f"{queue}.XQ"]
    # (the broker made every topic with three replicas, and Kafka acknowledges a write once two have it)
    for topic in topics:
        assert {len(p["replica_nodes"]) for p in cluster.partitions(topic)} == {3}, topic
        assert cluster.topic_config(topic, "min.insync.replicas") == "2", topic
    # ...and a load of singles and batches under way
    # (long enough to outlast both losses and both returns, each node's start included: about 95 s)
    plan = Plan(uuid.uuid4().hex[:8], singles=4200, batches=12, batch_size=150)
    load = Load(stack.url, plan, pace=0.08, figures=figures).start()
    load.wait_accepted(plan.submissions // 6)

    # When the node that coordinates the consumer groups is stopped (SIGTERM, as in a rolling restart) and
    # started again 15 s later...
    coordinator = cluster.partitions("__consumer_offsets")[0]["leader_id"]
    restarted = _lose_node(cluster, coordinator, load, figures, crash=False)
    cluster.wait_in_sync([*topics, "__consumer_offsets"])
    statuses_after_restart = dict(load.statuses)
    # ...then the node that leads most of the queue's partitions is killed (kill -9) and started again
    leaders = collections.Counter(p["leader_id"] for p in cluster.partitions(queue))
    leader = leaders.most_common(1)[0][0]
    assert load.accepted_count < plan.submissions, "the load ended before the crash: slow it down"
    under_replicated_while_away: list[float] = []
    crashed = _lose_node(
        cluster,
        leader,
        load,
        figures,
        crash=True,
        while_away=lambda: under_replicated_while_away.append(_under_replicated(stack)),
    )
    assert load.accepted_count < plan.submissions, "the load ended before the crashed node was back"
    cluster.wait_in_sync([*topics, "__consumer_offsets"])
    under_replicated_after = _under_replicated(stack)
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the web kept accepting while each node was away, and refused nothing (the requests caught by
    # the crash waited until the controller fenced the dead node, then were accepted)
    assert restarted > 0 and crashed > 0, (restarted, crashed)
    assert load.broken == []
    assert statuses_after_restart == {"202": statuses_after_restart["202"]}, statuses_after_restart
    assert load.statuses == {"202": load.statuses["202"]}, load.statuses
    # ...every accepted submission has exactly one outcome, and no user row is there twice
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions
    # ...the web's /metrics showed the queue's partitions under-replicated while the node was away, and
    # none once it had caught up
    assert under_replicated_while_away[0] > 0, under_replicated_while_away
    assert under_replicated_after == 0
    # ...and the same processes did it all: nothing had to be restarted
    assert stack.alive() == processes
    latencies = sorted(load.latencies)
    figures.notes.append(
        f"3-node Kafka: node {coordinator} (group coordinator) restarted, then node {leader} (queue "
        f"leader) killed; accepted while away: {restarted}, {crashed}; 503 answers: "
        f"{load.statuses['503 queue_unavailable']}; answer time p50 {statistics.median(latencies) * 1000:.0f}"
        f" ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


def _lose_node(
    cluster: LocalCluster, node: int, load: Load, figures, *, crash: bool, while_away=lambda: None
) -> int:
    """Take Kafka node ``node`` away (``kill -9`` or SIGTERM), wait :data:`AWAY_S`, call ``while_away``,
    start it again; returns the submissions accepted meanwhile."""
    before = load.accepted_count
    if crash:
        cluster.kill(node)
        figures.faults.append("kill -9 of a kafka node (the queue's leader)")
    else:
        cluster.stop(node)
        figures.faults.append("SIGTERM to a kafka node (the group coordinator)")
    time.sleep(AWAY_S)
    accepted = load.accepted_count - before
    while_away()
    cluster.up()
    return accepted


def _under_replicated(stack, within: float = 10.0) -> float:
    """``kafka_under_replicated_partitions{queue="users"}`` as the web's ``/metrics`` tells it, scraped
    again (as Prometheus would at its next interval) while a scrape could not read it in time."""
    deadline = time.monotonic() + within
    while True:
        with stack.client() as client:
            text = client.get("/metrics").text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('kafka_under_replicated_partitions{queue="users"}')
        ]
        if values or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(values) == 1, [line for line in text.splitlines() if "under_replicated" in line]
    return values[0]
