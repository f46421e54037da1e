"""The only Kafka node crashes (SIGKILL) twice, a few seconds apart, under load.

A crash is not a controlled shutdown: nobody tells the clients, the group coordinator comes back with the
members it had, and the second crash lands while the consumers are still rejoining after the first.  Once
Kafka answers again the running worker processes must consume again by themselves, soon; and the outage
must only pause the work: no retry spent on it, nothing moved to the failed topic, nothing ``failed``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: Crashes of the Kafka node.
CRASHES = 2
#: How long the restarted Kafka runs before it is killed again, in seconds.
BETWEEN_CRASHES_S = 4
#: How long the running workers get to consume again once Kafka answers after the last crash, in seconds.
RESUME_S = 30
#: What a share group adds to it, in seconds: records its members had acquired when Kafka died come back
#: when their locks run out (``share.record.lock.duration.ms``, 30 s by default).
SHARE_LOCK_S = 30


@pytest.mark.parametrize("group_type", ["classic", "share"])
def test_killing_the_only_kafka_node_twice_under_load_pauses_the_workers_and_loses_nothing(
    make_stack, services, figures, group_type
):
    # Given two workers sharing the queue (a consumer group, or a share group), and a load under way
    stack = make_stack(workers=2, KAFKA_SEND_TIMEOUT_MS="3000", KAFKA_GROUP_TYPE=group_type)
    stack.wait_consuming(2)
    processes = stack.alive()
    # (long enough to outlast both crashes and the workers' return: the check below needs it still running)
    plan = Plan(uuid.uuid4().hex[:8], singles=2500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)
    ledger = Ledger(stack, load)

    # When Kafka is killed with SIGKILL, started, killed again a few seconds later, and started again
    for crash in range(1, CRASHES + 1):
        with services.kafka_killed():
            figures.faults.append("kafka kill -9")
        if crash < CRASHES:
            time.sleep(BETWEEN_CRASHES_S)
    back = time.monotonic()

    # Then the same worker processes consume again soon: both are members of a stable group, and the
    # submissions accepted after the crashes reach their outcome
    stack.wait_consuming(2, timeout=RESUME_S)
    accepted = load.accepted_count
    assert accepted < plan.submissions, "the load ended before the workers were back: lengthen it"
    load.wait_accepted(accepted + 1, timeout=RESUME_S)
    wanted = ledger.ids
    deadline = back + 2 * RESUME_S + (SHARE_LOCK_S if group_type == "share" else 0)
    while len(done := stack.sql("SELECT 1 FROM submissions WHERE id = ANY(%s)", wanted)) < len(wanted):
        assert time.monotonic() < deadline, (
            f"{len(wanted) - len(done)} of {len(wanted)} submissions accepted by then have no outcome "
            f"{time.monotonic() - back:.0f} s after Kafka came back (logs: {stack.logs})"
        )
        time.sleep(0.5)
    resumed_s = time.monotonic() - back
    load.join()
    ledger.settle()

    # ...everything accepted has its one outcome, and none is `failed`: an outage is not bad data
    report = ledger.check(allow_orphans=True)
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions
    # ...nothing went to the failed-message topic either (not even to come back later)
    assert stack.failed_count() == 0
    # ...and nothing had to be restarted
    assert stack.alive() == processes
    figures.notes.append(
        f"outcomes of everything accepted before the last restart within {resumed_s:.0f} s of it; "
        f"503 answers: {load.statuses['503 queue_unavailable']}"
    )
