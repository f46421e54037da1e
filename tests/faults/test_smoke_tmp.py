from __future__ import annotations
import time, uuid
import pytest
from faults.load import Ledger, Load, Plan

pytestmark = pytest.mark.slow

def test_smoke(make_stack, figures):
    t0 = time.monotonic()
    stack = make_stack()
    t1 = time.monotonic()
    plan = Plan(uuid.uuid4().hex[:6], singles=1000, batches=8, batch_size=250)
    load = Load(stack.url, plan, figures=figures).start()
    load.join()
    t2 = time.monotonic()
    ledger = Ledger(stack, load)
    ledger.settle()
    t3 = time.monotonic()
    report = ledger.check()
    t4 = time.monotonic()
    print(f"startup {t1-t0:.1f} load {t2-t1:.1f} settle {t3-t2:.1f} check {t4-t3:.1f}", figures.line(), dict(load.statuses))
    assert report.problems == []
