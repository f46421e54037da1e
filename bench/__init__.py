"""Benchmarks of batch-user-processing; not part of the service and not run by the tests."""
