"""The ground every other test stands on: the real Apache Kafka and PostgreSQL answer and keep data.

Plain clients only (kafka-python, psycopg2), no code of ours, so that a failure here points at the services
that ``./run.local.sh`` runs rather than at the application.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg2
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError
from psycopg2 import sql
from psycopg2.extras import Json

#: Seconds a produce or a consume may take before the test gives up (generous: a cold broker is slow).
KAFKA_WAIT_S = 30


@pytest.fixture
def kafka_admin(kafka_bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    yield admin
    admin.close()


@pytest.fixture
def topic(kafka_admin: KafkaAdminClient, unique_name: str) -> Iterator[str]:
    """A topic of this test's own, with one partition, deleted afterwards."""
    kafka_admin.create_topics({unique_name: {"num_partitions": 1, "replication_factor": 1}})
    yield unique_name
    kafka_admin.delete_topics([unique_name], raise_errors=False)


@pytest.mark.kafka
def test_a_record_produced_to_kafka_is_consumed_back_unchanged(
    kafka_bootstrap_servers: str, topic: str
) -> None:
    # Given a record acknowledged by every in-sync replica
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
    try:
        sent = producer.send(
            topic, key=b"user-1", value=b'{"name": "Ada", "age": 36}', headers=[("source", b"test")]
        ).get(timeout=KAFKA_WAIT_S)
    finally:
        producer.close()

    # When a consumer reads the topic from its beginning
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=KAFKA_WAIT_S * 1000,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        received = list(itertools.islice(consumer, 1))
    finally:
        consumer.close()

    # Then it gets the very record, at the offset the producer was told
    assert len(received) == 1
    record = received[0]
    assert (record.offset, record.key, record.value) == (
        sent.offset,
        b"user-1",
        b'{"name": "Ada", "age": 36}',
    )
    assert [(k, v) for k, v in record.headers] == [("source", b"test")]


@pytest.mark.kafka
def test_producing_to_a_topic_nobody_created_fails_instead_of_creating_it(
    kafka_bootstrap_servers: str, kafka_admin: KafkaAdminClient, unique_name: str
) -> None:
    # Given a topic name that was never created (the broker must create its topics on purpose)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers, max_block_ms=3000)

    # When a record is sent to it
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(unique_name, value=b"lost").get(timeout=KAFKA_WAIT_S)
    finally:
        producer.close()

    # Then the send failed and the topic still does not exist
    assert unique_name not in kafka_admin.list_topics()


@pytest.mark.postgres
def test_a_committed_row_is_read_back_by_another_connection(database_url: str, unique_name: str) -> None:
    # Given a table of this test's own
    table = sql.Identifier(unique_name)
    writer = psycopg2.connect(database_url)
    reader = psycopg2.connect(database_url)
    try:
        with writer, writer.cursor() as cursor:
            cursor.execute(
                sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, name text NOT NULL, info jsonb)").format(
                    table
                )
            )

        # When one connection inserts a row and commits
        with writer, writer.cursor() as cursor:
            cursor.execute(
                sql.SQL("INSERT INTO {} (name, info) VALUES (%s, %s) RETURNING id").format(table),
                ("Ada", Json({"languages": ["en", "fr"]})),
            )
            (row_id,) = cursor.fetchone()

        # Then another connection reads the same row back
        with reader, reader.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT id, name, info FROM {}").format(table))
            rows = cursor.fetchall()
        assert rows == [(row_id, "Ada", {"languages": ["en", "fr"]})]
    finally:
        with writer, writer.cursor() as cursor:
            cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        writer.close()
        reader.close()
