"""A queue's three topics: created when the broker may create topics, else checked, and named when missing.

Managed Kafka services often give an application no right to create topics (Heroku's multi-tenant plans,
many Confluent Cloud, Aiven and MSK set-ups): the operator makes them beforehand.  So creating is tried only
when the broker's ``create_topics`` is on, and a refusal for want of rights is not an error by itself: the
topics are then looked up through metadata (which such an application may describe), and used when they
exist.  When one is missing, :class:`MissingTopics` names each one and how to make it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.common import dq_name, q_name, xq_name

from .errors import KafkaConnectionError, KafkaSetupError

if TYPE_CHECKING:
    from .broker import KafkaBroker

#: Kafka's error code for a topic that exists already.
_TOPIC_ALREADY_EXISTS = 36
#: Kafka's error codes of a request refused for want of rights (topic, cluster), or by a service's policy.
_REFUSED = {29: "no right to create topics", 31: "no right to create topics", 44: "refused by a policy"}
#: A topic the metadata does not show: unknown (3), or not visible to this principal (29).
_NOT_FOUND = {3, 29}


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """A topic as the broker would create it.

    Attributes:
      name(str): The topic's full name, prefix included.
      partitions(int): Its partitions.
      replication_factor(int): Its replication factor.
      configs(dict[str, str]): Its settings (``retention.ms``, ``min.insync.replicas``...).
    """

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]

    def create_request(self) -> dict[str, Any]:
        """The topic as kafka-python's ``create_topics`` takes it."""
        return {
            "num_partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "configs": dict(self.configs),
        }

    def how_to_create(self, prefix: str) -> str:
        """One line telling an operator how to make this topic: its settings, and Heroku's command."""
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.configs.items()))
        heroku = f"heroku kafka:topics:create {self.name.removeprefix(prefix)} --partitions {self.partitions}"
        if "retention.ms" in self.configs:
            heroku += f" --retention-time {_duration(int(self.configs['retention.ms']))}"
        return (
            f"{self.name!r}: {self.partitions} partitions, replication factor {self.replication_factor}"
            f"{', ' + settings if settings else ''} (Heroku: `{heroku}`)"
        )


class MissingTopics(KafkaSetupError):
    """Topics a queue needs do not exist, and the broker may not (or must not) create them.

    The message names each missing topic and how to make it; it is meant for an operator, and is what the
    worker logs, the web's ``/readyz`` reports and its ``503 queue_unavailable`` says.

    Attributes:
      missing(list[TopicSpec]): The missing topics, as the broker would have created them.
    """

    def __init__(self, missing: list[TopicSpec], why: str, prefix: str, groups: Sequence[str] = ()) -> None:
        self.missing = missing
        lines = [f"Kafka topics missing ({why}); create each, then start again:"]
        lines += [f"  - {spec.how_to_create(prefix)}" for spec in missing]
        if groups:
            heroku = "; ".join(
                f"`heroku kafka:consumer-groups:create {group.removeprefix(prefix)}`" for group in groups
            )
            lines.append(
                f"  and, where the service wants them made too, the consumer groups (Heroku: {heroku})"
            )
        if prefix:
            lines.append(
                f"  (names start with the prefix {prefix!r}; Heroku's CLI adds KAFKA_PREFIX itself, "
                "other services need the full name)"
            )
        super().__init__("\n".join(lines))


def specs(broker: KafkaBroker, queue_name: str) -> list[TopicSpec]:
    """The queue's three topics (queue, ``.DQ``, ``.XQ``) as ``broker`` would create them."""
    canonical = q_name(queue_name)
    configs = {}
    if broker.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(broker.min_insync_replicas)
    failed = {**configs, "retention.ms": str(broker.dead_letter_retention_ms)}
    return [
        TopicSpec(broker.topic_for(name), broker.partitions, broker.replication_factor, topic_configs)
        for name, topic_configs in (
            (canonical, configs),
            (dq_name(canonical), configs),
            (xq_name(canonical), failed),
        )
    ]


def ensure(broker: KafkaBroker, queue_name: str) -> None:
    """Make sure the queue's topics exist: create them when the broker may, else find them.

    Raises:
      MissingTopics: If a topic is missing and cannot be created (no right, or ``create_topics`` off).
      KafkaConnectionError: If Kafka cannot be reached, or refuses to create a topic for another reason.
    """
    wanted = specs(broker, queue_name)
    if not broker.create_topics:
        _check(broker, wanted, "this app does not create topics: KAFKA_CREATE_TOPICS=false")
        return
    request = {spec.name: spec.create_request() for spec in wanted}
    result = broker.clients.admin_call("create_topics", request, raise_errors=False)
    refused = ""
    for topic in result.get("topics", []):
        code = topic["error_code"]
        if code in _REFUSED:
            refused = refused or f"Kafka refused to create them: {_REFUSED[code]}"
        elif code not in (0, _TOPIC_ALREADY_EXISTS):
            reason = topic.get("error_message") or code
            raise KafkaConnectionError(f"cannot create topic {topic['name']!r}: {reason}")
    if refused:
        # Kafka answers so even for topics that exist: whether they do, only the metadata tells.
        _check(broker, wanted, refused)
        return
    broker.clients.admin_call("wait_for_topics", list(request), timeout_ms=broker.send_timeout_ms)


def _check(broker: KafkaBroker, wanted: list[TopicSpec], why: str) -> None:
    described = broker.clients.admin_call("describe_topics", [spec.name for spec in wanted])
    found = {
        topic["name"]
        for topic in described
        if topic.get("error_code", 0) not in _NOT_FOUND and topic.get("partitions")
    }
    missing = [spec for spec in wanted if spec.name not in found]
    if missing:
        canonical = q_name(wanted[0].name.removeprefix(broker.topic_prefix))
        groups = [broker.group_for(canonical), broker.group_for(dq_name(canonical))]
        error = MissingTopics(missing, why, broker.topic_prefix, groups)
        broker.logger.error("%s", error)
        raise error


def _duration(milliseconds: int) -> str:
    """``retention.ms`` as Heroku's ``--retention-time`` takes it (``14d``, ``36h``, ``90m``)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if milliseconds >= size and milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"
