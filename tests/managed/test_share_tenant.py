"""Share groups on a managed Kafka: a tenant that may not read or change its groups' configs, a group
outside its rights, and a cluster whose operator turned share groups off (``share/admin.py``,
``share/offsets.py``).  The managed suite's Kafka is the one whose ACLs and features a test may change."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

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
    UpdateFeatureType,
)

from dramatiq_kafka_broker import KafkaSetupError, MissingRight
from dramatiq_kafka_broker.share import admin as share_admin
from dramatiq_kafka_broker.share.offsets import describe_share_group_offsets

pytestmark = [pytest.mark.managed, pytest.mark.slow]

#: The principal each listener's variables authenticate as (scripts/kafka_tenant.py).
PRINCIPALS = {"heroku": "User:CN=app", "sasl": "User:app-sasl"}


@pytest.fixture
def share_groups_off(operator: Any) -> Iterator[None]:
    """The cluster's feature ``share.version`` turned off by its operator for the test, then on again."""
    feature, level = share_admin.SHARE_FEATURE
    answer = operator.update_features({feature: (UpdateFeatureType.SAFE_DOWNGRADE, 0)})
    assert answer == {feature: "OK"}, answer
    try:
        yield
    finally:
        operator.update_features({feature: (UpdateFeatureType.UPGRADE, level)})


def test_a_tenant_that_may_not_set_its_groups_configs_is_told_what_to_set(
    tenant_broker_factory: Any, caplog: pytest.LogCaptureFixture
):
    # Given a tenant with READ and DESCRIBE on its prefix's groups, and no right on their configs
    broker = tenant_broker_factory()
    group = broker.group_for("shared")
    # When a worker prepares the share group at start-up
    with caplog.at_level(logging.WARNING, logger=share_admin.__name__):
        prepared = share_admin.prepare_share_group(broker.clients, group, delivery_limit=4)
    # Then it starts, assuming Kafka's defaults, and the log says what happens and what to set by hand
    assert prepared == share_admin.ShareGroupConfig(group, 5, False, None)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"ALTER_CONFIGS on GROUP {group}" in said
    assert "messages sent before a worker first joined are skipped" in said
    assert (
        f"--entity-name {group} --add-config share.auto.offset.reset=earliest,share.delivery.count.limit=5"
        in said
    )


def test_a_group_known_to_skip_old_messages_that_the_tenant_may_not_change_stops_the_start(
    tenant_broker_factory: Any, operator: Any, listener: str
):
    # Given a tenant that may read its group's configs (an ACL for that group) but not change them, and a
    # group still at Kafka's default, which starts at the latest offset
    broker = tenant_broker_factory()
    group = broker.group_for("latest")
    literal, allow = ACLResourcePatternType.LITERAL, ACLPermissionType.ALLOW
    describe = ACLOperation.DESCRIBE_CONFIGS
    pattern = ResourcePattern(ResourceType.GROUP, group, literal)
    operator.create_acls([ACL(PRINCIPALS[listener], "*", describe, allow, pattern)])
    try:
        # When a worker prepares it
        with pytest.raises(KafkaSetupError) as raised:
            share_admin.prepare_share_group(broker.clients, group, delivery_limit=4)
        # Then it does not start: the error says what would be lost and what to set
        message = str(raised.value)
        assert "share.auto.offset.reset=latest" in message and "would be skipped" in message
        assert f"ALTER_CONFIGS on GROUP {group!r}" in message
        assert "--add-config share.auto.offset.reset=earliest" in message
    finally:
        filter_ = ResourcePatternFilter(ResourceType.GROUP, group, literal)
        operator.delete_acls([ACLFilter(PRINCIPALS[listener], "*", describe, allow, filter_)])


def test_a_share_group_outside_the_tenants_rights_names_the_missing_right(
    tenant_broker_factory: Any, tenant_queue: str
):
    # Given a tenant and a group name outside its prefix
    broker = tenant_broker_factory()
    topic = broker.topic_for(tenant_queue)
    # When it asks for that share group's offsets
    with pytest.raises(MissingRight) as raised:
        describe_share_group_offsets(broker.clients, "someone-else.share", topic, [0, 1])
    # Then the error names the right and the group
    assert "DESCRIBE right on GROUP 'someone-else.share'" in str(raised.value)
    assert "--operation Describe --group someone-else.share" in str(raised.value)


@pytest.mark.usefixtures("share_groups_off")
def test_a_cluster_whose_share_groups_are_off_is_named_with_the_feature(tenant_broker_factory: Any):
    # Given a cluster whose operator set share.version to 0
    broker = tenant_broker_factory()
    # When a worker in share mode starts (or the web's /readyz asks)
    with pytest.raises(share_admin.ShareGroupsUnavailable) as raised:
        share_admin.prepare_share_group(broker.clients, broker.group_for("shared"), delivery_limit=4)
    # Then the error names the feature, its level, and the ways out
    message = str(raised.value)
    assert "share.version is 0" in message
    assert "kafka-features.sh" in message and "KAFKA_GROUP_TYPE=classic" in message
    # ...and a broker in share mode says so where the web's /readyz asks (without joining a group)
    share_broker = tenant_broker_factory({"KAFKA_GROUP_TYPE": "share"})
    with pytest.raises(share_admin.ShareGroupsUnavailable, match=r"share\.version is 0"):
        share_broker.admin.ping()
