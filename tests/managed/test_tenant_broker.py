"""The broker on a managed Kafka, as a tenant: TLS with client certificates (Heroku) and SASL_SSL/SCRAM,
with the tenant's rights only (its prefix's topics and groups, no topic creation), from the platform's
variables."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import dramatiq
import pytest
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from dramatiq_kafka_broker import MissingRight, MissingTopics

from .conftest import ROOT

pytestmark = [pytest.mark.managed, pytest.mark.slow]

#: The principal each listener's variables authenticate as (scripts/kafka_tenant.py).
PRINCIPALS = {"heroku": "User:CN=app", "sasl": "User:app-sasl"}


def test_messages_go_through_and_failed_ones_are_replayed_with_the_tenants_rights(
    tenant_broker_factory: Any, tenant_queue: str
):
    # Given a broker built from the platform's variables only, on topics the operator made
    broker = tenant_broker_factory()
    allowed = threading.Event()
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=tenant_queue, max_retries=0)
    def picky(n: int) -> None:
        if n < 0 and not allowed.is_set():
            raise RuntimeError("not now")
        done.append(n)

    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        # When one good and one failing message are sent
        picky.send(1)
        picky.send(-1)
        with pytest.raises(RuntimeError, match="not now"):
            broker.join(tenant_queue, timeout=60_000)

        # Then the good one ran and the failing one is on the failed-message topic
        assert done == [1]
        assert broker.admin.failed_count(tenant_queue) == 1

        # When the cause is fixed and the failed message replayed
        allowed.set()
        assert broker.admin.replay_failed(tenant_queue) == (1, 0)
        broker.join(tenant_queue, timeout=60_000)

        # Then it ran, and nothing is left failed
        assert sorted(done) == [-1, 1]
        assert broker.admin.failed_count(tenant_queue) == 0
    finally:
        worker.stop()


def test_a_missing_topic_is_named_with_how_to_make_it(tenant_broker_factory: Any):
    # Given a broker of the tenant, and a queue whose topics nobody made
    broker = tenant_broker_factory()
    broker.declare_queue("absent")
    message = dramatiq.Message(queue_name="absent", actor_name="x", args=(), kwargs={}, options={})

    # When a message is sent to it
    with pytest.raises(MissingTopics) as raised:
        broker.enqueue(message)

    # Then the error names each topic, its settings and Heroku's command, and says why it was not made
    text = str(raised.value)
    prefix = broker.topic_prefix
    assert "no right to create topics" in text
    for name in ("absent", "absent.DQ", "absent.XQ"):
        assert f"'{prefix}{name}': 2 partitions" in text
        assert f"heroku kafka:topics:create {name} --partitions 2" in text
    assert "retention.ms=1209600000" in text and "--retention-time 14d" in text


def test_topics_are_only_looked_up_when_creating_is_switched_off(
    tenant_broker_factory: Any, tenant_queue: str
):
    # Given KAFKA_CREATE_TOPICS=false: existing topics are used, missing ones are named
    broker = tenant_broker_factory({"KAFKA_CREATE_TOPICS": "false"})
    broker.declare_queue(tenant_queue)
    broker.declare_queue("absent")

    # When both queues are checked
    broker.ensure_topics(tenant_queue)
    with pytest.raises(MissingTopics, match="KAFKA_CREATE_TOPICS=false") as raised:
        broker.ensure_topics("absent")

    # Then only the missing queue's topics are named
    assert [spec.name for spec in raised.value.missing] == [
        f"{broker.topic_prefix}absent{suffix}" for suffix in ("", ".DQ", ".XQ")
    ]


def test_replay_says_which_right_it_lacks_and_leaves_the_failed_message(
    tenant_broker_factory: Any, tenant_queue: str, operator: Any, listener: str
):
    # Given a failed message, and a tenant denied the DELETE right on the failed-message topic
    broker = tenant_broker_factory()
    broker.declare_queue(tenant_queue)
    message = dramatiq.Message(queue_name=tenant_queue, actor_name="x", args=(1,), kwargs={}, options={})
    broker.dead_letter_raw(tenant_queue, message.encode(), "RuntimeError: boom", "test")
    failed_topic = f"{broker.topic_prefix}{tenant_queue}.XQ"
    literal = ACLResourcePatternType.LITERAL
    deny = ACL(
        PRINCIPALS[listener],
        "*",
        ACLOperation.DELETE,
        ACLPermissionType.DENY,
        ResourcePattern(ResourceType.TOPIC, failed_topic, literal),
    )
    operator.create_acls([deny])
    try:
        # When the failed messages are replayed
        with pytest.raises(MissingRight) as raised:
            broker.admin.replay_failed(tenant_queue)

        # Then the error names the right and the topic, and nothing was replayed or removed
        assert "DELETE right" in str(raised.value) and failed_topic in str(raised.value)
        assert broker.admin.failed_count(tenant_queue) == 1
        assert sum(broker.admin.lag(tenant_queue).values()) == 0
    finally:
        operator.delete_acls(
            [
                ACLFilter(
                    PRINCIPALS[listener],
                    "*",
                    ACLOperation.DELETE,
                    ACLPermissionType.DENY,
                    ResourcePatternFilter(ResourceType.TOPIC, failed_topic, literal),
                )
            ]
        )


def test_a_consumer_group_the_tenant_may_not_use_is_named_with_how_to_make_it(
    tenant_broker_factory: Any, tenant_queue: str, operator: Any, listener: str
):
    # Given a tenant denied READ on its queue's consumer group (a plan whose groups the operator makes)
    broker = tenant_broker_factory()
    broker.declare_queue(tenant_queue)
    group = broker.group_for(tenant_queue)
    literal = ACLResourcePatternType.LITERAL
    read, deny = ACLOperation.READ, ACLPermissionType.DENY
    operator.create_acls(
        [ACL(PRINCIPALS[listener], "*", read, deny, ResourcePattern(ResourceType.GROUP, group, literal))]
    )
    consumer = None
    try:
        # When a worker's consumer of the queue polls
        consumer = broker.consume(tenant_queue, prefetch=1, timeout=5_000)
        with pytest.raises(MissingRight) as raised:
            for _ in range(20):
                next(consumer)

        # Then the error names the group and Heroku's command that makes it
        assert repr(group) in str(raised.value)
        assert f"heroku kafka:consumer-groups:create {group.removeprefix(broker.topic_prefix)}" in str(
            raised.value
        )
    finally:
        if consumer is not None:
            consumer.close()
        operator.delete_acls(
            [
                ACLFilter(
                    PRINCIPALS[listener],
                    "*",
                    read,
                    deny,
                    ResourcePatternFilter(ResourceType.GROUP, group, literal),
                )
            ]
        )


def test_the_dlq_commands_work_from_the_platforms_variables(
    tenant_broker_factory: Any, tenant_queue: str, platform_variables: dict[str, str]
):
    # Given a failed message on the tenant's queue
    broker = tenant_broker_factory()
    broker.declare_queue(tenant_queue)
    message = dramatiq.Message(queue_name=tenant_queue, actor_name="x", args=(2,), kwargs={}, options={})
    broker.dead_letter_raw(tenant_queue, message.encode(), "RuntimeError: boom", "test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.update(platform_variables)

    def dlq(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "dlq", *args, tenant_queue],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    # When an operator counts, lists and replays it with the dlq commands
    counted, listed, replayed = dlq("count"), dlq("list"), dlq("replay")

    # Then each works within the tenant's rights
    assert counted.strip() == "1"
    assert "RuntimeError: boom" in listed
    assert replayed.startswith("replayed 1; left 0")
    assert broker.admin.failed_count(tenant_queue) == 0
