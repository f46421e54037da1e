"""How ``./run.local.sh test`` splits the suite between processes (``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FAULT_LANES, _group

TESTS = Path(__file__).resolve().parent


def test_every_fault_test_file_has_a_lane_and_the_lanes_are_two():
    files = {path.name for path in (TESTS / "faults").glob("test_*.py")}
    assert files == set(FAULT_LANES), "give each fault test file a lane in tests/conftest.py's FAULT_LANES"
    assert set(FAULT_LANES.values()) == {"faults-1", "faults-2"}


def test_a_lane_and_the_managed_suite_are_one_group_and_other_files_one_each():
    assert _group("tests/faults/test_kafka_crash.py::test_x") == _group(
        "tests/faults/test_kafka_cluster.py::t"
    )
    assert _group("tests/faults/test_worker_crashes.py::t") != _group("tests/faults/test_kafka_crash.py::t")
    assert _group("tests/managed/test_tenant_stack.py::t[sasl]") == _group(
        "tests/managed/test_tenant_broker.py::t"
    )
    assert _group("tests/test_house.py::t[web]") == "tests/test_house.py"
    assert _group("tests/broker/test_offsets.py::t") != _group("tests/broker/test_partitions.py::t")
