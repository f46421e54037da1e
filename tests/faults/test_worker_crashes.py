"""Worker processes die mid-stream: ``kill -9`` (a crash) and ``SIGTERM`` (a graceful shutdown).

Promise 1 and 2 of docs/guarantees.md: a crash delays work but loses none, and what a crash makes
Kafka deliver again is never written twice; a graceful shutdown finishes what it started, so nothing is
even processed twice.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.faults.load import Item, Ledger, Load, Plan

pytestmark = pytest.mark.slow

#: Crashes injected by the kill -9 test.
CRASHES = 3


@pytest.mark.parametrize("group_type", ["classic", "share"])
def test_killing_a_worker_with_sigkill_three_times_mid_stream_loses_nothing_and_writes_nothing_twice(
    make_stack, figures, group_type
):
    # Given two worker processes sharing the queue (a consumer group, or a share group whose records a
    # dead worker held come back once their locks run out), and a load of singles and batches over ~40 s
    stack = make_stack(workers=2, KAFKA_GROUP_TYPE=group_type)
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
    figures.notes.append(f"records persisted: {persisted}, submissions skipped as already done: {skipped}")


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
    exit_code = stack.terminate(stack.workers[0])
    figures.faults.append("SIGTERM worker mid-batch")
    assert exit_code == 0, f"the worker did not shut down cleanly (exit {exit_code})"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()
    before = ledger.snapshot()

    # Then nothing is lost, nothing is written twice...
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    # ...and nothing was even processed twice: each record persisted once, none of them skipping work that
    # an earlier delivery had done; and the outcomes do not change afterwards.
    persisted, skipped = stack.persisted()
    assert (persisted, skipped) == (_persists(stack, load), 0)
    assert ledger.snapshot() == before


def test_restarting_a_worker_gracefully_under_load_makes_no_message_run_twice(make_stack, figures):
    # Given two worker processes sharing the queue, and a load under way
    stack = make_stack(workers=2)
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=1200, batches=6, batch_size=150)
    load = Load(stack.url, plan, pace=0.02, figures=figures).start()
    load.wait_accepted(plan.submissions // 4)

    # When one worker is restarted the way a deploy does it: SIGTERM, then a new process that joins the
    # group while the other worker is busy (the group rebalances and the busy worker gives up partitions)
    exit_code = stack.terminate(stack.workers[0])
    assert exit_code == 0, f"the worker did not shut down cleanly (exit {exit_code})"
    stack.start_worker(processes=1, threads=4)
    figures.faults.append("graceful restart of a worker")
    stack.wait_consuming(2)
    assert load.accepted_count < plan.submissions, "the load ended before the restart: slow it down"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then nothing is lost nor written twice...
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    # ...whatever the rebalance made run again (Kafka's group protocol takes partitions away from the busy
    # worker while messages of them are still in its hands: at-least-once), it was recognised as done
    persisted, skipped = stack.persisted()
    figures.notes.append(
        f"records persisted: {persisted} for {_persists(stack, load)} sent; "
        f"submissions skipped as already done: {skipped}"
    )
    assert persisted >= _persists(stack, load)


def test_a_worker_stopped_as_heroku_stops_a_dyno_shuts_down_gracefully(make_stack, figures):
    # Given two worker processes sharing the queue, and a big batch being processed
    stack = make_stack(workers=2)
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=400, batches=0, batch_size=0)
    big = Item([plan.new_record() for _ in range(2500)], "json")
    plan.items.insert(0, big)
    load = Load(stack.url, plan, pace=0.02, figures=figures).start()
    load.wait_accepted(len(big.records))
    batch_id = next(a.batch_id for a in load.accepted if a.item is big)
    _wait_until(lambda: _done_in_batch(stack, batch_id) > 0, "the batch to start")

    # When every process of one worker gets SIGTERM, as Heroku does to every process of a dyno (and
    # systemd to a unit's control group): the worker process first, then the dramatiq main process
    # (which passes it on to its worker process once more)
    main = stack.workers[0]
    (child,) = _children(main.pid)
    os.kill(child, signal.SIGTERM)
    _wait_until(
        lambda: (
            f"[PID {child}] [MainThread] [dramatiq.WorkerProcess(0)] [INFO] Stopping" in stack.worker_log()
        ),
        "the worker process to begin its shutdown",
    )
    os.kill(main.pid, signal.SIGTERM)
    exit_code = main.wait(timeout=60)
    figures.faults.append("SIGTERM to every process of a worker")
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then nothing is lost nor written twice...
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    # ...and the shutdown was the graceful one: in-flight work finished, nothing left to run again
    _, skipped = stack.persisted()
    assert (exit_code, skipped) == (0, 0), "the second SIGTERM killed the worker process mid-work"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _persists(stack, load) -> int:
    """How many records the accepted requests hand to ``persist_users``: one per submission."""
    return sum(len(a.ids) for a in load.accepted)


def _done_in_batch(stack, batch_id: str) -> int:
    return int(stack.sql("SELECT count(*) FROM submissions WHERE batch_id = %s", batch_id)[0][0])


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
