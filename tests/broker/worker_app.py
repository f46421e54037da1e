"""Actors that the Kafka-only tests run in real ``dramatiq`` worker processes.

Run as ``dramatiq tests.broker.worker_app``; configured by the test through the environment:
``TEST_KAFKA`` (bootstrap servers), ``TEST_PREFIX`` (topic prefix), ``TEST_LOG`` (file every processed
message is appended to, as ``<pid> <n>``), ``TEST_SLEEP_MS`` (work per message), ``TEST_COMMIT_MS``.
"""

from __future__ import annotations

import os
import time

import dramatiq

from tests.broker.conftest import make_kafka_broker

broker = make_kafka_broker(
    os.environ["TEST_KAFKA"],
    os.environ["TEST_PREFIX"],
    commit_interval_ms=int(os.environ.get("TEST_COMMIT_MS", "100")),
)
dramatiq.set_broker(broker)

_LOG = os.environ["TEST_LOG"]
_SLEEP = int(os.environ.get("TEST_SLEEP_MS", "0")) / 1000


@dramatiq.actor(max_retries=0)
def work(n: int) -> None:
    """Record that message ``n`` was processed (one small O_APPEND write: atomic across processes)."""
    if _SLEEP:
        time.sleep(_SLEEP)
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {n}\n".encode())
    finally:
        os.close(fd)
