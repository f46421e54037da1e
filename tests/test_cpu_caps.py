"""The harness's stand-in for a host of its own (``tests.livestack.CpuCap``), which ``bench/scaleout.py``
measures on: a process started inside a cap uses no more CPU than the cap allows, and so do the processes
it forks.  Needs root and the cgroup v1 CPU controller: skipped where they are missing, a failure in CI."""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from tests.conftest import in_ci
from tests.livestack import CpuCap, cpu_caps_problem, spawn, stop

#: A busy loop in a child of the capped process: the cap must hold for what it forks too.
_BUSY = "import os, time\nif os.fork() == 0:\n    while True: pass\nwhile True: pass\n"


@pytest.fixture
def cap():
    problem = cpu_caps_problem()
    if problem:
        if in_ci():
            pytest.fail(f"CPU caps are unavailable: {problem} (CI's machines give root and cgroup v1)")
        pytest.skip(f"CPU caps are unavailable: {problem}")
    made = CpuCap(f"bup-test-{uuid.uuid4().hex[:8]}", 0.2)
    yield made
    made.remove()


def test_a_capped_process_and_its_children_use_no_more_than_the_cap(cap):
    # Given two busy loops (a process and its fork) started inside a cap of 0.2 core
    process = spawn("busy", cap.argv([sys.executable, "-c", _BUSY]), env={}, logs=None)
    try:
        time.sleep(0.5)  # (started, forked)
        used_before, started = cap.cpu_seconds(), time.monotonic()
        # When they run for two seconds
        time.sleep(2.0)
        cores = (cap.cpu_seconds() - used_before) / (time.monotonic() - started)
        throttled, _ = cap.throttled()
    finally:
        stop(process, timeout=5)
    # Then together they used about the cap, not the two cores they would take unchecked
    assert 0.1 < cores < 0.3, cores
    assert throttled > 0
