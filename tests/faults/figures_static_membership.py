"""The figures of docs/operating.md, "Restarts and static membership": static against dynamic members,
the gap of a graceful and of a kill -9 restart, and the stall of a scale-in.  A measurement, not part of the
suite (its name keeps pytest from collecting it); run it by name:

    ./run.local.sh test tests/faults/figures_static_membership.py -s
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable

import pytest

from tests.faults.conftest import QUEUE
from tests.faults.load import Load, Plan
from tests.faults.test_static_membership import (
    SESSION_TIMEOUT_S,
    _paused_seconds,
    _start_host,
    _wait_for_line,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("membership", ["static", "dynamic"])
def test_figures_of_restarts_and_of_a_scale_in(make_stack, figures, membership):
    # Given two worker hosts, static members or dynamic ones, under a steady load (~75 s)
    stack = make_stack(workers=0)
    names = {"a": "host-a", "b": "host-b"} if membership == "static" else {"a": None, "b": None}
    host_a = _start_host(stack, "a", instance_id=names["a"])
    _start_host(stack, "b", instance_id=names["b"])
    stack.wait_consuming(2)
    plan = Plan(uuid.uuid4().hex[:8], singles=3000, batches=0, batch_size=0)
    load = Load(stack.url, plan, clients=2, pace=0.04, figures=figures).start()
    load.wait_accepted(100)
    topic = f"{stack.prefix}{QUEUE}"

    def restart(stop: Callable[[], object]) -> str:
        """Stop host a with ``stop``, start it again at once; the figures of what followed."""
        nonlocal host_a
        b_before = len(stack.log("worker-b"))
        stopped_at = time.time()
        stop()
        a_before = len(stack.log("worker-a"))
        host_a = _start_host(stack, "a", instance_id=names["a"])
        first_row_at = _wait_for_line(stack, "worker-a", a_before, "] persisted ")
        # (what the restart made the other host do has been logged by the time a dead member expires)
        time.sleep(SESSION_TIMEOUT_S + 2)
        seen = stack.log("worker-b")[b_before:]
        rebalances = len(re.findall(f"Partitions assigned to {re.escape(topic)}:", seen))
        return (
            f"gap to the restarted worker's first stored row {first_row_at - stopped_at:.1f} s, the other "
            f"worker rebalanced {rebalances} times and held none of the queue's partitions for "
            f"{_paused_seconds(seen, topic):.2f} s"
        )

    # When host a is restarted gracefully (SIGTERM, then a new process at once)...
    graceful = restart(lambda: stack.terminate(host_a))
    # ...then killed (SIGKILL) and started again at once...
    killed = restart(lambda: stack.stop(host_a, signal.SIGKILL))
    # ...and then stopped for good (a scale-in)
    b_before = len(stack.log("worker-b"))
    scaled_in_at = time.time()
    assert stack.terminate(host_a) == 0
    everything = str(list(range(4)))
    took_over_at = _wait_for_line(
        stack, "worker-b", b_before, f"Partitions assigned to {topic}: {everything}", timeout=60
    )
    assert load.accepted_count < plan.submissions, "the load ended before the scale-in: make it longer"
    load.stop()

    # Then (the figures)
    line = (
        f"{membership}: SIGTERM restart: {graceful}; kill -9 restart: {killed}; scale-in stall (SIGTERM "
        f"to the other worker holding every partition) {took_over_at - scaled_in_at:.1f} s"
    )
    print(line)
    figures.notes.append(line)
    stall = took_over_at - scaled_in_at
    if membership == "static":
        assert " rebalanced 0 times" in graceful and " rebalanced 0 times" in killed
        assert stall >= SESSION_TIMEOUT_S - 1
    else:
        assert " rebalanced 0 times" not in graceful
        assert stall < SESSION_TIMEOUT_S
