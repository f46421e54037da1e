"""Worker processes die mid-stream: ``kill -9`` (a crash) and ``SIGTERM`` (a graceful shutdown).

Promise 1 and 2 of the README's "Guarantees": a crash delays work but loses none, and what a crash makes
Kafka deliver again is never written twice; a graceful shutdown finishes what it started, so nothing is
even processed twice.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from faults.load import Item, Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: Crashes injected by the kill -9 test.
CRASHES = 3


def test_killing_a_worker_with_sigkill_three_times_mid_stream_loses_nothing_and_writes_nothing_twice(
    make_stack, figures
):
    # Given two worker processes sharing the queue, and a load of singles and batches spread over ~40 s
    stack = make_stack(workers=2)
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=1500, batches=10, batch_size=150)
    load = Load(stack.url, plan, pace=0.1, figures=figures).start()
    load.wait_accepted(plan.submissions // 10)

    # When one of the two workers is killed with SIGKILL mid-stream, three times, each time once the
    # restarted one has joined the group again (so that every kill hits a worker with work in hand)
    live = list(stack.workers)
    for _ in range(CRASHES):
        stack.wait_consuming(2)
        assert load.accepted_count < plan.submissions, "the load ended before the crash: slow it down"
        victim = live.pop(0)
        stack.stop(victim, signal.SIGKILL)
        figures.faults.append("kill -9 worker")
        live.append(stack.start_worker(processes=1, threads=4))
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then every accepted submission has exactly one outcome, and no user row is there twice
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    assert sum(report.outcomes.values()) == plan.submissions
    # (the two workers alive at the end are the last two started; the web never noticed)
    assert stack.alive() == [stack.web.pid, *(w.pid for w in live)]
    # (what the crashes made Kafka deliver again was recognised and skipped, not written again)
    persisted, skipped = stack.persisted()
    figures.notes.append(f"persist messages carried out: {persisted}, submissions skipped as already done: {skipped}")


def test_a_worker_stopped_with_sigterm_mid_batch_finishes_its_work_and_nothing_is_processed_twice(
    make_stack, figures
):
    # Given two worker processes sharing the queue, a big batch being processed and singles arriving
    stack = make_stack(workers=2)
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=800, batches=0, batch_size=0)
    big = Item([plan.new_record() for _ in range(2500)], "ndjson")
    plan.items.insert(0, big)
    load = Load(stack.url, plan, pace=0.02, figures=figures).start()
    load.wait_accepted(len(big.records))
    batch_id = next(a.batch_id for a in load.accepted if a.item is big)
    _wait_until(lambda: _done_in_batch(stack, batch_id) > 0, "the batch to start")
    # (mid-batch: some of its records have their outcome, not all of them)
    assert _done_in_batch(stack, batch_id) < len(big.records)

    # When one worker is stopped gracefully (SIGTERM); the other carries on alone
    victim = stack.workers[0]
    stack.stop(victim, signal.SIGTERM)
    figures.faults.append("SIGTERM worker mid-batch")
    assert victim.returncode == 0, f"the worker did not shut down cleanly (exit {victim.returncode})"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()
    before = ledger.snapshot()

    # Then nothing is lost, nothing is written twice...
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    # ...and nothing was even processed twice: one persist per single and per chunk, none of them
    # skipping work that an earlier delivery had done; and the outcomes do not change afterwards.
    chunks = -(-len(big.records) // int(stack.env["BATCH_CHUNK_SIZE"]))
    persisted, skipped = stack.persisted()
    assert (persisted, skipped) == (len(load.accepted) - 1 + chunks, 0)
    assert ledger.snapshot() == before


def _done_in_batch(stack, batch_id: str) -> int:
    return int(stack.sql("SELECT count(*) FROM submissions WHERE batch_id = %s", batch_id)[0][0])


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
