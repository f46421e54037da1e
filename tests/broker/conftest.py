"""Fixtures for the broker's tests: a KafkaBroker on fresh topics per test, Dramatiq's StubBroker, and a
worker for either.  The services fixtures (``kafka_bootstrap_servers``) live in ``tests/conftest.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import default_middleware

from dramatiq_kafka_broker import KafkaBroker


def fast_middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware with retry backoffs short enough for tests."""
    chosen = [m() for m in default_middleware]
    for m in chosen:
        if isinstance(m, dramatiq.middleware.Retries):
            m.min_backoff, m.max_backoff = 50, 200
    return chosen


def make_kafka_broker(servers: str, prefix: str, **options: object) -> KafkaBroker:
    """A KafkaBroker whose topics and groups start with ``prefix`` (one per test: tests never share data)."""
    parameters: dict[str, object] = {
        "bootstrap_servers": servers,
        "middleware": fast_middleware(),
        "topic_prefix": prefix,
        "group_id": "test",
        "partitions": 3,
        "send_timeout_ms": 10_000,
    }
    parameters.update(options)
    return KafkaBroker(**parameters)  # type: ignore[arg-type]


def delete_topics(broker: KafkaBroker) -> None:
    """Remove the test's topics so that a long test run does not pile up partitions."""
    try:
        names = [t for t in broker.clients.admin_call("list_topics") if t.startswith(broker.topic_prefix)]
        if names:
            broker.clients.admin_call("delete_topics", names, raise_errors=False)
    except Exception:
        pass


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_broker(kafka_bootstrap_servers: str, topic_prefix: str) -> Iterator[KafkaBroker]:
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    delete_topics(broker)
    broker.close()


@pytest.fixture
def kafka_share_broker(kafka_bootstrap_servers: str, topic_prefix: str) -> Iterator[KafkaBroker]:
    """A KafkaBroker in share mode: its queues are consumed by share groups (KIP-932)."""
    broker = make_kafka_broker(kafka_bootstrap_servers, topic_prefix, group_type="share")
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    delete_topics(broker)
    broker.close()


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=fast_middleware())
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture(params=["stub", "kafka", "kafka_share"])
def broker(request: pytest.FixtureRequest) -> dramatiq.Broker:
    """The behaviour suite runs against StubBroker and KafkaBroker in both group types: what holds for
    StubBroker must hold for KafkaBroker, with consumer groups or share groups."""
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture
def worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def kafka_worker(kafka_broker: KafkaBroker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(kafka_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()
