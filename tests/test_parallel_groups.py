"""How ``./run.local.sh test`` splits the suite between processes (``tests/conftest.py``)."""

from __future__ import annotations

from tests.conftest import _group


def test_a_fault_test_goes_alone_the_managed_suite_together_and_other_files_one_each():
    assert _group("tests/faults/test_kafka_crash.py::t") != _group("tests/faults/test_kafka_crash.py::u")
    managed = _group("tests/managed/test_tenant_stack.py::t[sasl]")
    assert managed == _group("tests/managed/test_tenant_broker.py::t")
    assert _group("tests/test_house.py::t[web]") == _group("tests/test_house.py::u") == "tests/test_house.py"
    assert _group("tests/broker/test_offsets.py::t") != _group("tests/broker/test_partitions.py::t")
