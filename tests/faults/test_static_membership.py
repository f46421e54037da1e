"""Static group membership (KIP-345): worker hosts with names of their own (``KAFKA_GROUP_INSTANCE_ID``).

A host restarted within the session timeout gets its partitions back with no rebalance: the other hosts
never stop.  Two hosts given the same name do not take the partitions from each other in a loop: the one
put out of its place goes on as a dynamic member.  The figures of docs/operating.md, "Restarts and static
membership", are taken by ``figures_static_membership.py`` beside this file (a measurement, outside the
suite).
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from dramatiq_kafka_broker.clients import DEFAULT_SESSION_TIMEOUT_MS
from tests.faults.conftest import QUEUE, FaultStack
from tests.faults.load import Ledger, Load, Plan
from tests.livestack import spawn

pytestmark = pytest.mark.slow

#: How long the group keeps a silent static member, in seconds.
SESSION_TIMEOUT_S = DEFAULT_SESSION_TIMEOUT_MS / 1000
#: What a consumer (``dramatiq_kafka_broker/consumer.py``) logs when its group moves partitions.
REBALANCE = re.compile(r"Partitions (?:revoked from|assigned to) ")
#: What a consumer logs when another member took its group_instance_id (``consumer.py``).
FENCED = "Another worker uses group_instance_id"
#: The time at the head of a worker's log line (Dramatiq's format: local time, milliseconds).
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (.*)$", re.MULTILINE)


def test_a_static_worker_killed_and_restarted_within_the_session_timeout_causes_no_rebalance(
    make_stack, figures
):
    # Given two worker hosts with names of their own (one of two processes), under load
    stack = make_stack(workers=0)
    host_a = _start_host(stack, "a", instance_id="host-a")
    _start_host(stack, "b", instance_id="host-b", processes=2)
    stack.wait_consuming(3)
    # (each process is a static member named after its host and its index)
    assert _members(stack) == [f"{stack.prefix}host-{n}" for n in ("a-p0", "b-p0", "b-p1")]
    plan = Plan(uuid.uuid4().hex[:8], singles=700, batches=3, batch_size=100)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 5)

    # When host a is killed (SIGKILL: no goodbye to Kafka) and started again at once
    b_before = len(stack.log("worker-b"))
    a_before = len(stack.log("worker-a"))
    killed_at = time.time()
    stack.stop(host_a, signal.SIGKILL)
    figures.faults.append("kill -9 static worker, restarted")
    _start_host(stack, "a", instance_id="host-a")
    back_at = _wait_for_line(stack, "worker-a", a_before, f"Partitions assigned to {stack.prefix}{QUEUE}:")
    assert back_at - killed_at < SESSION_TIMEOUT_S, "the restart outlasted the session timeout"
    assert load.accepted_count < plan.submissions, "the load ended before the restart: slow it down"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the other host's consumers kept their partitions throughout: the group never rebalanced...
    assert REBALANCE.findall(stack.log("worker-b")[b_before:]) == []
    assert _members(stack) == [f"{stack.prefix}host-{n}" for n in ("a-p0", "b-p0", "b-p1")]
    # ...and every accepted submission has one outcome, and no user row is there twice
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    figures.notes.append(f"static restart after kill -9: partitions back in {back_at - killed_at:.1f} s")


def test_a_static_worker_restarted_gracefully_causes_no_rebalance_and_runs_nothing_twice(make_stack, figures):
    # Given two worker hosts with names of their own, under load
    stack = make_stack(workers=0)
    host_a = _start_host(stack, "a", instance_id="host-a")
    _start_host(stack, "b", instance_id="host-b")
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=700, batches=3, batch_size=100)
    load = Load(stack.url, plan, pace=0.03, figures=figures).start()
    load.wait_accepted(plan.submissions // 5)

    # When host a is stopped gracefully (SIGTERM, as a deploy does) and started again
    b_before = len(stack.log("worker-b"))
    stopped_at = time.time()
    exit_code = stack.terminate(host_a)
    assert exit_code == 0, f"the worker did not shut down cleanly (exit {exit_code})"
    a_before = len(stack.log("worker-a"))
    figures.faults.append("SIGTERM static worker, restarted")
    _start_host(stack, "a", instance_id="host-a")
    back_at = _wait_for_line(stack, "worker-a", a_before, f"Partitions assigned to {stack.prefix}{QUEUE}:")
    assert back_at - stopped_at < SESSION_TIMEOUT_S, "the restart outlasted the session timeout"
    assert load.accepted_count < plan.submissions, "the load ended before the restart: slow it down"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the group never rebalanced (a static member sends no LeaveGroup, and came back in time)...
    assert REBALANCE.findall(stack.log("worker-b")[b_before:]) == []
    # ...nothing is lost nor written twice, and nothing even ran twice: the stopped worker committed what
    # it had done, and its successor went on from there
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0
    _, skipped = stack.persisted()
    assert skipped == 0
    figures.notes.append(f"static graceful restart: partitions back in {back_at - stopped_at:.1f} s")


def test_two_workers_given_the_same_name_do_not_fence_each_other_in_a_loop(make_stack, figures):
    # Given a worker host named "twin", consuming under load
    stack = make_stack(workers=0)
    first = _start_host(stack, "a", instance_id="twin")
    stack.wait_consuming(1)
    plan = Plan(uuid.uuid4().hex[:8], singles=1400, batches=3, batch_size=100)
    load = Load(stack.url, plan, clients=2, pace=0.05, figures=figures).start()
    load.wait_accepted(200)

    # When a second host is started with the same name (one config var for every dyno, say)
    second = _start_host(stack, "b", instance_id="twin")
    figures.faults.append("second worker with the same group_instance_id")
    # (the first is put out of its place in both groups, the queue's and the delay queue's, and rejoins them
    # as a dynamic member; the second keeps the name)
    _wait_until(lambda: stack.log("worker-a").count(FENCED) == 2, "the first worker to be fenced")
    _wait_until(lambda: _members(stack) == ["", f"{stack.prefix}twin-p0"], "one static, one dynamic member")
    stack.wait_consuming(2)
    settled = {name: len(stack.log(name)) for name in ("worker-a", "worker-b")}
    # (long enough for a loop to show several times: a fenced member learns it within a heartbeat, 0.5 s,
    # and Dramatiq makes a consumer again 3 s later)
    time.sleep(SESSION_TIMEOUT_S)
    assert load.accepted_count < plan.submissions, "the load ended before the wait: slow it down"
    load.join()
    ledger = Ledger(stack, load)
    ledger.settle()

    # Then the fencing happened once per group and never again: neither took the name back...
    assert (stack.log("worker-a").count(FENCED), stack.log("worker-b").count(FENCED)) == (2, 0)
    assert _members(stack) == ["", f"{stack.prefix}twin-p0"]
    # ...both hosts are still up and sharing the work...
    assert first.poll() is None and second.poll() is None
    assert all("] persisted " in stack.log(name)[offset:] for name, offset in settled.items())
    # ...and every accepted submission has one outcome, and no user row is there twice
    report = ledger.check()
    assert report.problems == []
    assert report.lost == [] and report.duplicated == 0


# -- helpers --------------------------------------------------------------------------------------------
def _start_host(
    stack: FaultStack, name: str, *, instance_id: str | None, processes: int = 1, threads: int = 4
) -> subprocess.Popen:
    """Start ``dramatiq pipeline`` as worker host ``name`` (its log: ``worker-<name>.log``, appended to
    across restarts), with ``KAFKA_GROUP_INSTANCE_ID`` set to ``instance_id`` (None: dynamic members)."""
    env = {k: v for k, v in stack.env.items() if k not in {"KAFKA_GROUP_INSTANCE_ID", "DYNO"}}
    if instance_id is not None:
        env["KAFKA_GROUP_INSTANCE_ID"] = instance_id
    argv = [sys.executable, "-m", "dramatiq", "pipeline", "--processes", str(processes)]
    process = spawn(f"worker-{name}", [*argv, "--threads", str(threads)], env=env, logs=stack.logs)
    stack.workers.append(process)
    return process


def _members(stack: FaultStack, queue: str = QUEUE) -> list[str]:
    """The group_instance_id of each member of the queue's group ("" for a dynamic member), sorted."""
    group = stack.broker.group_for(queue)
    described = stack.broker.clients.admin_call("describe_groups", [group])[group]
    return sorted(member["group_instance_id"] or "" for member in described["members"])


def _lines(text: str) -> list[tuple[float, str]]:
    """The lines of a worker's log, each with its time (seconds since the epoch)."""
    found = []
    for stamp, rest in LINE.findall(text):
        moment = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        found.append((moment.timestamp(), rest))
    return found


def _wait_for_line(stack: FaultStack, name: str, offset: int, text: str, timeout: float = 60) -> float:
    """The time of the first line containing ``text`` that ``name`` logs after ``offset``, once it has."""
    deadline = time.monotonic() + timeout
    while True:
        for moment, rest in _lines(stack.log(name)[offset:]):
            if text in rest:
                return moment
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not log {text!r} within {timeout} s")
        time.sleep(0.05)


def _paused_seconds(text: str, topic: str) -> float:
    """How long, in all, the log's consumer of ``topic`` held none of its partitions (revoked to assigned)."""
    paused, revoked_at = 0.0, None
    for moment, rest in _lines(text):
        if f"Partitions revoked from {topic}:" in rest:
            revoked_at = moment
        elif f"Partitions assigned to {topic}:" in rest and revoked_at is not None:
            paused += moment - revoked_at
            revoked_at = None
    return paused


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.1)
