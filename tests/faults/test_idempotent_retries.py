"""Clients that retry every ``503`` with its ``Idempotency-Key`` while the only Kafka node is killed.

A ``503`` does not mean "not stored": a single post given up on at its enqueue deadline may still reach
Kafka from the producer's buffer, and a batch refused midway has its first chunks there already.  Without
a key the client's retry is a new submission: the record arrives twice, and the retry is reported
``duplicate`` of its own first attempt (``test_kafka_crash.py`` has to allow such orphans).  With a key the
retry is the same submission, enqueued again under the same id: each key ends with one id (or batch id),
each id with one outcome, and the outcome is the first delivery's.
"""

from __future__ import annotations

import collections
import uuid

import pytest

from tests.faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: How long the web and the workers get to take work again once Kafka answers after the crash, in seconds.
RESUME_S = 60


def test_clients_retrying_every_503_with_its_key_while_kafka_is_killed_get_one_outcome_per_key(
    make_stack, services, figures
):
    # Given a stack whose enqueue gives up after 3 s, two workers, and a load of singles and batches
    # under way, every request with a key of its own and every 503 sent again with that key
    stack = make_stack(workers=2, KAFKA_SEND_TIMEOUT_MS="3000")
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=2000, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.03, figures=figures, keyed=True).start()
    load.wait_accepted(plan.submissions // 4)

    # When the only Kafka node is killed with SIGKILL, and started again
    with services.kafka_killed():
        figures.faults.append("kafka kill -9")
        load.wait_status("503 queue_unavailable", timeout=30)
    accepted = load.accepted_count
    try:
        load.wait_accepted(accepted + 1, timeout=RESUME_S)
    except AssertionError:
        load.stop()
        raise AssertionError(f"nothing accepted {RESUME_S} s after Kafka was back ({stack.logs})") from None
    assert accepted < plan.submissions, "the load ended before Kafka was back: lengthen it"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the outage was answered 202 or 503 only, and some requests were refused and sent again
    assert load.broken == []
    assert set(load.statuses) == {"202", "503 queue_unavailable"}, load.statuses
    assert load.refusals, "no request was answered 503: the fault missed the load"
    # ...each key was accepted once, under ids no other key got
    keys = collections.Counter(a.item.key for a in load.accepted)
    assert len(keys) == len(plan.items) and set(keys.values()) == {1}
    # ...every id has its one outcome, and no submission exists that no client was given the id of: a
    # retried post that had reached Kafka after all was processed under its own id, not as a new one
    report = ledger.check(allow_orphans=False)
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions == len(report.rows)
    # ...and no record sent once is reported `duplicate`: of the records of one unique key, one is stored
    # and the others (only the plan's deliberate repeats) are duplicates of it
    problems = _outcomes_per_unique_key(load, report.rows)
    assert problems == [], problems[:5]
    retried = [key for key in keys if load.refusals[key]]
    records, skipped = stack.persisted()
    figures.notes.append(
        f"keys answered 503 and sent again: {len(retried)} of {len(keys)} "
        f"({sum(load.refusals.values())} 503 answers); records delivered again and skipped by the "
        f"workers (a 503'd attempt that had reached Kafka, or a redelivery): {skipped} of {records}"
    )


def _outcomes_per_unique_key(load: Load, rows: dict[str, tuple]) -> list[str]:
    """For every unique key (name, age) of the valid records accepted: exactly one ``stored`` outcome, and
    as many ``duplicate`` ones as the plan sent that key again."""
    by_key: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for accepted in load.accepted:
        for submission_id, record in zip(accepted.ids, accepted.item.records, strict=True):
            if record.valid:
                by_key[record.key].append(submission_id)
    problems = []
    for key, ids in by_key.items():
        statuses = collections.Counter(rows[i][0] for i in ids)
        if statuses != {"stored": 1, **({"duplicate": len(ids) - 1} if len(ids) > 1 else {})}:
            problems.append(f"{key}: {len(ids)} records sent, outcomes {dict(statuses)}")
    return problems
