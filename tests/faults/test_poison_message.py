"""A poison message: one specific record that makes the actor fail, every time.

Promise 3 of docs/guarantees.md: it is retried, then it is on the failed-message topic with its
reason and its submission is ``failed``, while the rest of its batch and the rest of the queue go on.

No client input can make ``persist_users`` fail: the validator refuses every value PostgreSQL would
(NUL, lone surrogates, NaN, over-long or over-deep values), and the unique key's columns are too short to
overflow an index row.  So the fault is injected where such a record would hurt, in the database: a
trigger on ``users`` of the test's own database refuses rows whose name contains ``poison`` with SQLSTATE
``54000`` (program_limit_exceeded, the class of "index row size exceeds maximum"), which psycopg2 reports
as an ``OperationalError`` -- the kind of error the pipeline retries.  A sequence counts the attempts
(sequences are not rolled back with the failed transaction).
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.faults.load import Item, Ledger, Load, Plan, Record

pytestmark = pytest.mark.slow

#: Retries of the stacks below (``MAX_RETRIES``).
RETRIES = 3

POISON_TRIGGER = """
CREATE SEQUENCE poison_attempts;
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE '%poison%' THEN
        PERFORM nextval('poison_attempts');
        RAISE EXCEPTION 'poison record refused: %', NEW.name USING ERRCODE = '54000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def _poisoned_stack(make_stack):
    stack = make_stack(workers=2, MAX_RETRIES=str(RETRIES), MIN_BACKOFF_MS="200", MAX_BACKOFF_MS="1000")
    stack.execute(POISON_TRIGGER)
    stack.wait_consuming(2)
    return stack


def _poison(plan: Plan, label: str) -> Record:
    return Record(
        len(plan.records), {"name": f"{plan.tag} {label}", "age": 44, "email": "p@example.org"}, True
    )


def _attempts(stack) -> int:
    ((last, called),) = stack.sql("SELECT last_value, is_called FROM poison_attempts")
    return int(last) if called else 0


def test_a_poison_submission_is_retried_then_failed_with_its_reason_while_the_queue_goes_on(
    make_stack, figures
):
    # Given a load under way, and among it one single submission that PostgreSQL refuses every time
    stack = _poisoned_stack(make_stack)
    plan = Plan(uuid.uuid4().hex[:8], singles=1500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.01, figures=figures).start()
    load.wait_accepted(plan.submissions // 3)
    poison = Item([_poison(plan, "poison-single")], "single")
    load.send_more(poison)
    figures.faults.append("poison record (single)")
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then it, and only it, is failed, after the first attempt and every retry...
    report = ledger.check(allow_failed=True)
    assert report.problems == []
    (poison_id,) = next(a.ids for a in load.accepted if a.item is poison)
    failed = {i for i, row in report.rows.items() if row[0] == "failed"}
    assert failed == {poison_id}
    # (single posts that arrive together share a message: when the poison did, it was tried in that
    # message's chunk and once more alone in the one-by-one pass before its own message went on alone)
    shared = f"go on alone: ['{poison_id}']" in stack.worker_log()
    assert _attempts(stack) == (2 if shared else 0) + 1 + RETRIES
    # ...it is on the failed-message topic with its reason...
    (dead,) = stack.failed_messages()
    assert dead.message.actor_name == "persist_users"
    assert [r["id"] for r in dead.message.args[0]] == [poison_id]
    assert "poison record refused" in dead.reason
    # ...while everything else went on: every other submission has its outcome, nothing twice
    assert report.outcomes["failed"] == 1
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions
    # ...and its outcome gives the reason too, as "<exception class>: <message>"
    _, _, errors = report.rows[poison_id]
    assert [e["field"] for e in errors] == ["_system"]
    assert errors[0]["message"].startswith(
        f"OperationalError: poison record refused: {plan.tag} poison-single"
    ), errors


def test_a_poison_record_in_a_batch_fails_alone_and_the_rest_of_its_batch_is_stored(make_stack, figures):
    # Given a load under way, and a batch of 150 records whose 75th PostgreSQL refuses every time
    stack = _poisoned_stack(make_stack)
    plan = Plan(uuid.uuid4().hex[:8], singles=1000, batches=6, batch_size=150)
    load = Load(stack.url, plan, pace=0.01, figures=figures).start()
    load.wait_accepted(plan.submissions // 3)
    records = [plan.new_record(email=f"b{i}@example.org") for i in range(149)]
    records.insert(74, _poison(plan, "poison-in-batch"))
    batch = Item(records, "json")
    load.send_more(batch)
    figures.faults.append("poison record (in a batch)")
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()
    batch_ids = next(a.ids for a in load.accepted if a.item is batch)
    report = ledger.check(allow_failed=True)
    failed = {i for i, row in report.rows.items() if row[0] == "failed"}

    # When the poison is cured (the trigger dropped) and the failed messages replayed
    stack.execute("DROP TRIGGER refuse_poison ON users")
    stack.cli("dlq", "replay", "users")
    figures.faults.append("dlq replay")
    ledger.settle(until=lambda: not stack.sql("SELECT 1 FROM submissions WHERE status = 'failed'"))

    # Then everything is stored after all, nothing twice...
    cured = ledger.check()
    assert cured.problems == [] and cured.lost == [] and cured.duplicated == 0
    # ...but before the cure only the poison record had failed: the rest of its batch was stored
    assert report.problems == []
    rows = sorted(int(i.rsplit(".", 1)[1]) for i in failed)
    assert failed == {batch_ids[74]}, f"{len(failed)} records failed with the poison one: rows {rows}"


def test_a_record_whose_errors_are_too_big_for_kafka_still_reaches_an_outcome(make_stack, figures):
    # Given a load under way, and among it one submission of ~970 KB (under the 1 MiB body limit) whose
    # address holds 960 unknown keys of 1,000 characters: each is an error naming its key, so the validation
    # result that ``validate_users`` hands on to ``persist_users`` is ~1.06 MB, more than the producer
    # sends in one record (``max_request_size``, 1 MiB)
    stack = make_stack(workers=2)
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=800, batches=4, batch_size=300)
    load = Load(stack.url, plan, pace=0.01, figures=figures).start()
    load.wait_accepted(plan.submissions // 3)
    address = {f"k{i:04d}" + "x" * 995: 1 for i in range(960)}
    record = Record(len(plan.records), {"name": f"{plan.tag} heavy", "age": 30, "address": address}, False)
    heavy = Item([record], "single")
    load.send_more(heavy)
    figures.faults.append("record whose result is too big to hand on")
    load.join()
    (heavy_id,) = next(a.ids for a in load.accepted if a.item is heavy)
    ledger = Ledger(stack, load)
    others = [i for i in ledger.ids if i != heavy_id]
    _wait_until(lambda: _decided(stack, others) == len(others) and stack.drained(), "the rest to settle")

    # Then, once the queue is drained, it has an outcome like every other submission (invalid, or failed
    # with the reason and on the failed-message topic): a 202 is never lost
    report = ledger.check(allow_failed=True)
    assert heavy_id not in report.lost, "the queue is drained and the submission has no outcome: it was lost"
    assert report.rows[heavy_id][0] in ("invalid", "failed")
    assert report.problems == [] and report.lost == []


def _decided(stack, ids: list[str]) -> int:
    return int(stack.sql("SELECT count(*) FROM submissions WHERE id = ANY(%s)", ids)[0][0])


def _wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.5)
