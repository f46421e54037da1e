"""PostgreSQL goes away under load: briefly (within the retry budget), then for longer than it; and, in
share mode, for longer than a record's lock, within the retry budget.

Promise 3 of docs/guarantees.md: an outage the retries outlast only delays work; one that outlasts
the retries ends as ``failed``, on the failed-message topic, and ``python -m pipeline dlq replay`` after
recovery turns it into the outcome it should have had.  Promise 2 holds throughout: no row twice.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: How long PostgreSQL stays down in the short outage, in seconds (after its fast shutdown).
SHORT_OUTAGE_S = 10
#: How long PostgreSQL stays down in share mode's long outage, in seconds: longer than a share group's
#: record lock (``share.record.lock.duration.ms``, 30 s), so that any lock held through it runs out.
LOCK_OUTAGE_S = 35


def test_a_short_postgres_outage_is_retried_and_everything_is_stored(make_stack, services, figures):
    # Given a retry budget of some 20 s (12 retries, backoff 0.5 s doubling up to 2-4 s), and a load
    stack = make_stack(workers=2, MAX_RETRIES="12", MIN_BACKOFF_MS="500", MAX_BACKOFF_MS="4000")
    stack.wait_consuming(2)
    processes = stack.alive()
    plan = Plan(uuid.uuid4().hex[:8], singles=1500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)

    # When PostgreSQL is stopped for ten seconds mid-stream, then started again
    with services.postgres_stopped():
        figures.faults.append("postgres stop ~10 s")
        time.sleep(SHORT_OUTAGE_S)
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the web kept accepting, the workers retried, and every submission has its one outcome...
    assert load.broken == [] and set(load.statuses) == {"202"}, load.statuses
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert report.outcomes.get("failed", 0) == 0
    # ...the outage was really felt (messages were retried), and nothing ended on the failed topic
    retried = stack.worker_log().count("Retrying message")
    assert retried > 0
    assert stack.failed_count() == 0
    assert stack.alive() == processes
    # ...and the workers told it one line per event, their tracebacks folded in (as a platform's log
    # collector takes lines): every line is a record of Dramatiq's format, none a traceback's continuation
    lines = stack.worker_log().splitlines()
    assert any("Traceback (most recent call last):" in line for line in lines)
    strays = [line for line in lines if not line.startswith("[")]
    assert strays == [], strays[:5]
    figures.notes.append(f"messages retried while PostgreSQL was down: {retried}")


def test_a_postgres_outage_longer_than_the_record_locks_dead_letters_nothing_in_share_mode(
    make_stack, services, figures
):
    # Given workers in a share group, a retry budget of some 70 s (20 retries, backoff 0.5 s doubling up
    # to 4 s) and a load under way
    stack = make_stack(
        workers=2, KAFKA_GROUP_TYPE="share", MAX_RETRIES="20", MIN_BACKOFF_MS="500", MAX_BACKOFF_MS="4000"
    )
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=800, batches=6, batch_size=150)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)

    # When PostgreSQL is stopped for longer than a record's lock, then started again
    with services.postgres_stopped():
        figures.faults.append(f"postgres stop ~{LOCK_OUTAGE_S} s (share group)")
        time.sleep(LOCK_OUTAGE_S)
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then every submission has its one outcome, none `failed`: Kafka's delivery count (spent by locks
    # that ran out, and by redeliveries) sent nothing healthy to the failed topic, and no retry ran out
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert report.outcomes.get("failed", 0) == 0
    assert stack.failed_count() == 0
    retried = stack.worker_log().count("Retrying message")
    assert retried > 0, "the outage was not felt: nothing was retried"
    figures.notes.append(f"messages retried while PostgreSQL was down: {retried}")


def test_a_postgres_outage_longer_than_the_retries_ends_failed_and_a_replay_stores_everything(
    make_stack, services, figures
):
    # Given a retry budget of about a second (2 retries, backoff 0.2 s to 1 s), and a load under way
    stack = make_stack(workers=2, MAX_RETRIES="2", MIN_BACKOFF_MS="200", MAX_BACKOFF_MS="1000")
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=1500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.02, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)

    # When PostgreSQL is stopped until some messages have run out of retries, then started again
    with services.postgres_stopped():
        figures.faults.append("postgres stop beyond the retry budget")
        _wait_until(lambda: stack.failed_count() >= 5, "messages to reach the failed topic")
    load.join()
    ledger = Ledger(stack, load)
    # (a batch posted during the outage may have its registration on the failed topic too, until the replay)
    ledger.settle(batches=False)

    # Then the submissions of the messages that ran out of retries are `failed`, with the reason...
    report = ledger.check(allow_failed=True)
    assert report.problems == []
    failed = {i: row for i, row in report.rows.items() if row[0] == "failed"}
    assert failed, "no submission failed: the outage did not outlast the retries"
    reasons = {row[2][0]["message"] for row in failed.values()}
    assert all(row[2][0]["field"] == "_system" and row[2][0]["message"] for row in failed.values())
    # ...each of them is carried by a message on the failed topic, with its reason
    dead = stack.failed_messages()
    carried = {r["id"] for f in dead if f.message is not None for r in f.message.args[0]}
    assert set(failed) <= carried
    assert all(f.reason for f in dead)

    # When the failed messages are replayed
    output = stack.cli("dlq", "replay", "users")
    figures.faults.append("dlq replay")
    ledger.settle(until=lambda: not _failed_left(stack))

    # Then every submission has the outcome it would have had without the outage, nothing twice
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert stack.failed_count() == 0
    figures.notes.append(
        f"failed before the replay: {len(failed)} submissions in {len(dead)} messages; {output.strip()}"
    )
    # (and the reason a `failed` outcome gave was "<exception class>: <message>", as the contract says)
    assert all(r.startswith(("OperationalError: ", "InterfaceError: ")) for r in reasons), reasons


def _failed_left(stack) -> int:
    return int(stack.sql("SELECT count(*) FROM submissions WHERE status = 'failed'")[0][0])


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.2)
