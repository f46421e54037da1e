"""Actors that the Kafka-only tests run in real ``dramatiq`` worker processes: another team's app on our
broker, which imports the broker package and nothing of the service.

Run as ``dramatiq tests.broker.worker_app``; configured by the test through the environment:
``TEST_KAFKA`` (bootstrap servers), ``TEST_PREFIX`` (topic prefix), ``TEST_LOG`` (file every processed
message is appended to, as ``<pid> <n>``), ``TEST_SLEEP_MS`` (work per message), ``TEST_COMMIT_MS``,
``TEST_GROUP_TYPE`` (``classic``, the default, or ``share``).
"""

from __future__ import annotations

import json
import os
import sys
import time

import dramatiq

from tests.broker.conftest import make_kafka_broker

broker = make_kafka_broker(
    os.environ["TEST_KAFKA"],
    os.environ["TEST_PREFIX"],
    commit_interval_ms=int(os.environ.get("TEST_COMMIT_MS", "100")),
    group_type=os.environ.get("TEST_GROUP_TYPE", "classic"),
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


@dramatiq.actor(max_retries=0)
def report() -> None:
    """Record the actors this worker declared and the service's modules it loaded, as one JSON line."""
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in {"pipeline", "web"})
    line = json.dumps({"pid": os.getpid(), "actors": sorted(broker.actors), "service_modules": loaded})
    fd = os.open(_LOG + ".report", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
