"""What the web asks of its broker beyond Dramatiq's ``Broker`` (``web/broker_features.py``)."""

from __future__ import annotations

import pytest
from dramatiq.brokers.stub import StubBroker

from dramatiq_kafka_broker import KafkaBroker
from tests.web_support import BatchingBroker
from web.broker_features import BatchBroker, Unknown, operations_of


def test_a_kafka_broker_answers_with_its_admin():
    # Given a KafkaBroker (made without reaching Kafka)
    broker = KafkaBroker(bootstrap_servers="127.0.0.1:1", middleware=[])
    # Then its operations are its admin's, and it sends groups with one wait
    assert operations_of(broker) is broker.admin
    assert isinstance(broker, BatchBroker)


def test_a_broker_without_operations_answers_not_known():
    # Given Dramatiq's StubBroker, which has no Kafka operations
    operations = operations_of(StubBroker())
    # Then no figure is known, and its readiness cannot be told
    assert operations.lag("users") is None
    assert operations.failed_count("users") is None
    assert operations.under_replicated("users") is None
    with pytest.raises(Unknown):
        operations.ping()


def test_only_a_broker_with_enqueue_many_is_a_batch_broker():
    assert isinstance(BatchingBroker(), BatchBroker)
    assert not isinstance(StubBroker(), BatchBroker)
