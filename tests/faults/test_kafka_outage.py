"""Kafka goes away for a while and comes back, under load.

Promise 1 and 3 of docs/guarantees.md: while Kafka is down the API answers ``503
queue_unavailable`` (never a 500, never a 202 that is then lost); once it is back, the web's producer and
the workers' consumers carry on without being restarted, and everything accepted reaches its outcome.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: How long Kafka stays down, in seconds (after its controlled shutdown has finished).
OUTAGE_S = 10
#: How long the web and the workers get to take work again once Kafka answers, in seconds: kafka-python
#: backs off its reconnection attempts up to ``reconnect_backoff_max_ms`` (30 s) after a long outage.
RECOVERY_S = 60


def test_while_kafka_is_down_the_api_answers_503_and_everything_accepted_is_processed_once_it_is_back(
    make_stack, services, figures
):
    # Given a stack whose enqueue gives up after 3 s, and a load of singles and batches under way
    stack = make_stack(workers=2, KAFKA_SEND_TIMEOUT_MS="3000")
    stack.wait_consuming(2)
    processes = stack.alive()
    plan = Plan(uuid.uuid4().hex[:8], singles=1500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)

    # When Kafka is stopped for ten seconds, then started again
    with services.kafka_stopped():
        figures.faults.append("kafka stop ~10 s")
        accepted_before = load.accepted_count
        load.wait_status("503 queue_unavailable", timeout=30)
        time.sleep(OUTAGE_S)
        accepted_during = load.accepted_count - accepted_before
    # (Kafka answers again: the same web process must take submissions again, soon)
    back = load.accepted_count
    try:
        load.wait_accepted(back + 1, timeout=RECOVERY_S)
    except AssertionError:
        load.stop()
        raise AssertionError(
            f"the web answered only 503 for {RECOVERY_S} s after Kafka was back: its producer did not "
            f"reconnect (see {stack.logs / 'web.log'})"
        ) from None
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the outage was answered with 503 queue_unavailable only: no 500, no broken answer...
    assert set(load.statuses) == {"202", "503 queue_unavailable"}, load.statuses
    assert load.broken == []
    # ...every submission accepted before, during (before the first 503) and after it has its one
    # outcome, and no user row is there twice
    report = ledger.check(allow_orphans=True)
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions
    # ...and the same processes did it all: nothing had to be restarted
    assert stack.alive() == processes
    figures.notes.append(
        f"503 answers while Kafka was down: {load.statuses['503 queue_unavailable']}; "
        f"accepted while it was going down: {accepted_during}; "
        f"processed without a 202 (a batch cut short, a 503 after Kafka had it): "
        f"{len(report.rows) - plan.submissions}"
    )
