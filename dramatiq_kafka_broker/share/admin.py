"""What a share group (KIP-932) needs from the cluster, checked and set once, when a worker starts.

:func:`prepare_share_group` is what the broker calls for each share group before its consumer joins:

1. :func:`check_share_support`: the cluster takes share groups (its ApiVersions list ShareGroupHeartbeat,
   ShareFetch and ShareAcknowledge at version 1 or later, and its finalized feature ``share.version`` is 1 or
   more), else :class:`ShareGroupsUnavailable`, which names what is missing.  The web's ``/readyz`` asks this
   too: it needs no group.
2. :func:`configure_share_group`: the group's configs (IncrementalAlterConfigs on a GROUP resource).
   ``share.auto.offset.reset=earliest``, since a share group otherwise starts at the partitions' end and
   every message accepted before its first member joined is skipped; and ``share.delivery.count.limit``
   above the consumer's own limit, since past Kafka's limit a record is archived, which for us is dropped.
   Kafka bounds that limit by the brokers' static ``group.share.max.delivery.count.limit`` (10 by default;
   the group's own may be no less than ``group.share.min.delivery.count.limit``, 2).

And, for the consumer's heartbeats and fetches, :func:`share_group_error` turns Kafka's error codes that an
operator must act on (an ACL, a group id a classic group holds) into a :class:`~..errors.KafkaSetupError`
whose message says what to do.

Rights: joining a share group needs READ on the GROUP and READ on its topics (as a consumer group does);
setting its configs needs ALTER_CONFIGS on the GROUP, reading them DESCRIBE_CONFIGS on the GROUP, and
reading the brokers' bound DESCRIBE_CONFIGS on the CLUSTER.  Without the config rights nothing is set; the
log says what an operator must set by hand, and a group known to start at the latest offset stops the start.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger
from kafka.admin import ConfigResource, ConfigResourceType

from ..errors import KafkaConnectionError, KafkaSetupError, MissingRight

if TYPE_CHECKING:
    from ..clients import KafkaClients

#: The requests a share consumer sends, by API key, and the least version of each it needs (version 0 was
#: Kafka 4.0's early access, which later versions dropped).
SHARE_APIS = {76: ("ShareGroupHeartbeat", 1), 78: ("ShareFetch", 1), 79: ("ShareAcknowledge", 1)}
#: The finalized feature that turns share groups on in a cluster, and its least level.
SHARE_FEATURE = ("share.version", 1)
#: The group config that says where a share group starts on a partition it has no state for.
AUTO_OFFSET_RESET = "share.auto.offset.reset"
#: The group config that caps deliveries of one record; past it Kafka archives the record.
DELIVERY_COUNT_LIMIT = "share.delivery.count.limit"
#: The brokers' (static) bound on a group's ``share.delivery.count.limit``.
MAX_DELIVERY_COUNT_LIMIT = "group.share.max.delivery.count.limit"
#: Kafka's defaults, assumed where they cannot be read: the group limit, its upper and lower bounds.
KAFKA_DEFAULT_DELIVERY_COUNT_LIMIT = 5
KAFKA_DEFAULT_MAX_DELIVERY_COUNT_LIMIT = 10
KAFKA_MIN_DELIVERY_COUNT_LIMIT = 2
#: Deliveries the group's limit is set above the consumer's own: the consumer dead-letters a record on its
#: own last delivery, and one more leaves room for a delivery spent by a crash while doing so.
DELIVERY_MARGIN = 1
#: Kafka's error codes of a refusal for want of a right: topic, group, cluster.
_AUTHORIZATION = {29: "TOPIC", 30: "GROUP", 31: "CLUSTER"}
#: A group id that belongs to a group of another type: INCONSISTENT_GROUP_PROTOCOL, GROUP_ID_NOT_FOUND.
_OTHER_TYPE = {23, 69}
#: Kafka's UNSUPPORTED_VERSION, INVALID_REQUEST: a broker without (or with share groups turned off).
_UNSUPPORTED = {35, 42}
_ERROR_CODE = re.compile(r"^\[Error (\d+)\]")

logger = get_logger(__name__)


class ShareGroupsUnavailable(KafkaSetupError):
    """The cluster has no share groups (a Kafka before 4.1, or its feature ``share.version`` off).

    The message names what is missing and what to do: upgrade, turn the feature on, or run with
    ``KAFKA_GROUP_TYPE=classic``.
    """


@dataclasses.dataclass(frozen=True)
class ShareGroupConfig:
    """A share group's configs as :func:`configure_share_group` left (or found) them.

    Attributes:
      group_id(str): The group.
      delivery_count_limit(int): Kafka's limit on deliveries of one record in this group: a record fetched
        with this delivery count is the last delivery Kafka makes of it, so the consumer dead-letters it
        then (to ``.XQ``) rather than let a crash or a released lock have Kafka archive it.  Kafka's
        default (5) when it could not be read.
      limit_known(bool): Whether ``delivery_count_limit`` was read (or set), not assumed.
      starts_at_earliest(bool | None): Whether ``share.auto.offset.reset`` is ``earliest``; None: unknown.
    """

    group_id: str
    delivery_count_limit: int
    limit_known: bool
    starts_at_earliest: bool | None


def prepare_share_group(clients: KafkaClients, group_id: str, *, delivery_limit: int) -> ShareGroupConfig:
    """Check that the cluster takes share groups, and set the group's configs; once, at a worker's start.

    Parameters:
      clients(KafkaClients): The broker's clients.
      group_id(str): The share group (prefix included: ``TopicLayout.group_for``).
      delivery_limit(int): The most deliveries of one record the consumer allows before it dead-letters the
        record itself; the group's ``share.delivery.count.limit`` is set above it.

    Returns:
      The group's configs, and the delivery limit the consumer must dead-letter at.

    Raises:
      ShareGroupsUnavailable: If the cluster has no share groups.
      KafkaSetupError: If the group starts at the latest offset and this app may not change that.
      KafkaConnectionError: If Kafka cannot be reached.
    """
    check_share_support(clients)
    return configure_share_group(clients, group_id, delivery_limit=delivery_limit)


def check_share_support(clients: KafkaClients) -> None:
    """Raise :class:`ShareGroupsUnavailable` unless the cluster takes share groups: its ApiVersions list
    :data:`SHARE_APIS` and its feature ``share.version`` is finalized at 1 or more.  Needs no right.

    Raises:
      ShareGroupsUnavailable: If it does not, naming what is missing.
      KafkaConnectionError: If Kafka cannot be reached.
    """
    versions = {int(key): span for key, span in clients.admin_call("api_versions").items()}
    missing = [
        f"{name} v{least}+"
        for key, (name, least) in SHARE_APIS.items()
        if versions.get(key, (0, -1))[1] < least
    ]
    if missing:
        raise ShareGroupsUnavailable(
            f"this Kafka has no share groups: its brokers do not offer {', '.join(missing)} (KIP-932 needs "
            "Apache Kafka 4.1 or later, production-ready from 4.2). Upgrade the cluster, or run with "
            "KAFKA_GROUP_TYPE=classic."
        )
    feature, least = SHARE_FEATURE
    finalized = clients.admin_call("describe_features").get(feature, {}).get("finalized")
    level = finalized[1] if finalized else 0
    if level < least:
        raise ShareGroupsUnavailable(
            f"this Kafka has share groups turned off: its finalized feature {feature} is {level}, and share "
            f"groups need {least} or more. Turn it on (`kafka-features.sh --bootstrap-server <host:port> "
            f"upgrade --feature {feature}={least}`), or run with KAFKA_GROUP_TYPE=classic."
        )


def configure_share_group(clients: KafkaClients, group_id: str, *, delivery_limit: int) -> ShareGroupConfig:
    """Set the group's ``share.auto.offset.reset`` to ``earliest`` and its ``share.delivery.count.limit``
    above ``delivery_limit`` (never lowering one an operator set higher), as far as Kafka's bound allows.

    Where this app may not read or change the group's configs (an ACL), it logs what an operator must set,
    and goes on; where Kafka's bound keeps the limit at or below ``delivery_limit``, it logs an error: the
    consumer must then dead-letter at the returned limit.

    Raises:
      KafkaSetupError: If the group is known to start at the latest offset and cannot be changed: every
        message sent before a worker first joined would be skipped.
      KafkaConnectionError: If Kafka cannot be reached.
    """
    current = _group_configs(clients, group_id)
    ceiling = _ceiling(clients)
    wanted = max(delivery_limit + DELIVERY_MARGIN, KAFKA_MIN_DELIVERY_COUNT_LIMIT)
    target = min(wanted, ceiling)
    updates: dict[str, str] = {}
    reset = current.get(AUTO_OFFSET_RESET) if current is not None else None
    limit = int(current[DELIVERY_COUNT_LIMIT]) if current and DELIVERY_COUNT_LIMIT in current else None
    if reset != "earliest":
        updates[AUTO_OFFSET_RESET] = "earliest"
    if limit is None or limit < target:
        updates[DELIVERY_COUNT_LIMIT] = str(target)
    refusal = _alter(clients, group_id, updates) if updates else None
    if refusal is None:
        limit = max(limit or 0, target)
        reset = "earliest"
    else:
        _refused(group_id, refusal, updates, reset)
    known = limit is not None
    limit = limit if limit is not None else KAFKA_DEFAULT_DELIVERY_COUNT_LIMIT
    if limit <= delivery_limit:
        logger.error(
            "Share group %s: Kafka archives (drops) a record after %d deliveries (%s%s), which is not above "
            "this app's own limit of %d: the consumer dead-letters at Kafka's limit instead, so a message "
            "whose deliveries were spent by crashes, shutdowns or a database outage goes to .XQ sooner. "
            "Raise %s on the Kafka brokers (a static config) to %d or more, or lower MAX_RETRIES.",
            group_id,
            limit,
            DELIVERY_COUNT_LIMIT,
            "" if known else ", assumed: Kafka's default",
            delivery_limit,
            MAX_DELIVERY_COUNT_LIMIT,
            wanted,
        )
    starts = None if reset is None else reset == "earliest"
    return ShareGroupConfig(group_id, limit, known, starts)


def share_group_error(
    group_id: str,
    error_code: int,
    message: str | None = None,
    *,
    topic: str | None = None,
    operation: str = "Read",
) -> KafkaSetupError | None:
    """The start-up error for an error code of a share request (ShareGroupHeartbeat, ShareFetch,
    ShareAcknowledge, DescribeShareGroupOffsets) that an operator must act on; None for any other code
    (the caller retries or fails as it would).

    The consumer raises it, so that the worker's start-up log says what to do: GROUP_AUTHORIZATION_FAILED
    names READ on the GROUP, TOPIC_AUTHORIZATION_FAILED READ on the topic, a group id a classic group holds
    a new id, UNSUPPORTED_VERSION a Kafka with share groups.

    Parameters:
      group_id(str): The share group.
      error_code(int): Kafka's error code from the response.
      message(str | None): Kafka's error message, if any.
      topic(str | None): The topic the error is about (a partition-level error), if any.
      operation(str): The right the request needs, as ``kafka-acls.sh`` names it: ``Read`` to join, fetch
        and acknowledge, ``Describe`` to describe the group's offsets.
    """
    said = f" (Kafka: {message})" if message else ""
    resource = _AUTHORIZATION.get(error_code)
    right = operation.upper()
    if resource == "GROUP":
        return MissingRight(
            f"this app lacks the {right} right on GROUP {group_id!r}, which a share group's members need; "
            f"grant it (`kafka-acls.sh --bootstrap-server <host:port> --add --allow-principal User:<app> "
            f"--operation {operation} --group {group_id}`) or ask the Kafka service's operator{said}"
        )
    if resource == "TOPIC":
        name = topic or "<the queue's topic>"
        return MissingRight(
            f"this app lacks the {right} right on TOPIC {name!r}, which share group {group_id!r} reads; "
            f"grant it (`kafka-acls.sh ... --operation {operation} --topic {name}`) or ask the Kafka "
            f"service's operator{said}"
        )
    if resource == "CLUSTER":
        return MissingRight(f"Kafka refused share group {group_id!r} a CLUSTER right{said}")
    if error_code in _OTHER_TYPE:
        return KafkaSetupError(
            f"group id {group_id!r} belongs to a group of another type (a group id has one type: a classic "
            f"consumer group of this name exists){said}. Give the share groups another KAFKA_GROUP_ID, or, "
            "once the classic group's work is done, delete it (`kafka-consumer-groups.sh --delete --group "
            f"{group_id}`)."
        )
    if error_code in _UNSUPPORTED:
        return ShareGroupsUnavailable(
            f"Kafka refused share group {group_id!r}'s request (error {error_code}){said}: the broker that "
            "answered has no share groups (Kafka 4.1 or later with share.version=1 is needed); upgrade it, "
            "or run with KAFKA_GROUP_TYPE=classic."
        )
    return None


def _group_configs(clients: KafkaClients, group_id: str) -> dict[str, str] | None:
    """The group's two configs (defaults included), or None when this app may not read them."""
    resource = ConfigResource(ConfigResourceType.GROUP, group_id, [AUTO_OFFSET_RESET, DELIVERY_COUNT_LIMIT])
    try:
        found = clients.admin_call("describe_configs", [resource], config_filter="all")
    except MissingRight:
        return None
    # kafka-python leaves a refused resource out, or empty, rather than raising.
    configs = found.get("group", {}).get(group_id) or {}
    values = {name: entry["value"] for name, entry in configs.items() if entry.get("value") is not None}
    return values or None


def _ceiling(clients: KafkaClients) -> int:
    """The brokers' ``group.share.max.delivery.count.limit``, or Kafka's default when it cannot be read."""
    try:
        node = clients.admin_call("describe_cluster")["brokers"][0]["broker_id"]
        resource = ConfigResource(ConfigResourceType.BROKER, str(node), [MAX_DELIVERY_COUNT_LIMIT])
        found = clients.admin_call("describe_configs", [resource], config_filter="all")
        return int(found["broker"][str(node)][MAX_DELIVERY_COUNT_LIMIT]["value"])
    except (KafkaConnectionError, KeyError, IndexError, TypeError, ValueError):
        return KAFKA_DEFAULT_MAX_DELIVERY_COUNT_LIMIT


def _alter(clients: KafkaClients, group_id: str, updates: dict[str, str]) -> str | None:
    """Set ``updates`` on the group; None when done, else why Kafka refused for want of a right.

    Raises:
      KafkaConnectionError: If Kafka refused for another reason, or cannot be reached.
    """
    resource = ConfigResource(ConfigResourceType.GROUP, group_id, dict(updates))
    try:
        result = clients.admin_call("alter_configs", [resource], raise_on_unknown=False, incremental=True)
    except MissingRight as e:
        return str(e)
    answer: Any = result.get("group", {}).get(group_id, "no answer")
    if answer == "OK":
        logger.info("Share group %s configured: %s", group_id, _settings(updates))
        return None
    matched = _ERROR_CODE.match(str(answer))
    if matched and int(matched.group(1)) in _AUTHORIZATION:
        return str(answer)
    raise KafkaConnectionError(
        f"cannot set the configs of share group {group_id!r} ({_settings(updates)}): {answer}"
    )


def _refused(group_id: str, why: str, updates: dict[str, str], reset: str | None) -> None:
    """Say what an operator must set by hand; raise when the group is known to skip old messages."""
    command = (
        "`kafka-configs.sh --bootstrap-server <host:port> --alter --entity-type groups "
        f"--entity-name {group_id} --add-config {_settings(updates)}`"
    )
    if reset is not None and reset != "earliest":
        raise KafkaSetupError(
            f"share group {group_id!r} starts at the latest offset ({AUTO_OFFSET_RESET}={reset}), so every "
            f"message sent before a worker first joined would be skipped, and this app may not change it "
            f"(it lacks ALTER_CONFIGS on GROUP {group_id!r}: {why}). Set it by hand: {command}"
        )
    logger.warning(
        "Share group %s: this app may not set its configs (ALTER_CONFIGS on GROUP %s: %s). What happens: "
        "unless an operator set them, the group starts at the latest offset (messages sent before a worker "
        "first joined are skipped) and Kafka drops a record after %d deliveries. Set by hand: %s",
        group_id,
        group_id,
        why,
        KAFKA_DEFAULT_DELIVERY_COUNT_LIMIT,
        command,
    )


def _settings(updates: dict[str, str]) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(updates.items()))
