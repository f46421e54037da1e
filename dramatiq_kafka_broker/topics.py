"""A queue's three topics: created when the broker may create topics, else checked, and named when missing.

Managed Kafka services often give an application no right to create topics (Heroku's multi-tenant plans,
many Confluent Cloud, Aiven and MSK set-ups): the operator makes them beforehand.  So creating is tried only
when the broker's ``create_topics`` is on, and a refusal for want of rights is not an error by itself: the
topics are then looked up through metadata (which such an application may describe), and used when they
exist.  When one is missing, :class:`MissingTopics` names each one and how to make it.

:class:`TopicLayout` holds how a broker names its topics and consumer groups and what topics it creates: the
broker, :func:`ensure` and :class:`~.admin.KafkaAdmin` all read it from one instance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.logging import get_logger

from .errors import KafkaConnectionError, KafkaSetupError

if TYPE_CHECKING:
    from .clients import KafkaClients

#: Kafka's error code for a topic that exists already.
_TOPIC_ALREADY_EXISTS = 36
#: Kafka's error codes of a request refused for want of rights (topic, cluster), or by a service's policy.
_REFUSED = {29: "no right to create topics", 31: "no right to create topics", 44: "refused by a policy"}
#: A topic the metadata does not show: unknown (3), or not visible to this principal (29).
_NOT_FOUND = {3, 29}

logger = get_logger(__name__)


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


@dataclasses.dataclass(frozen=True)
class TopicLayout:
    """How a broker names its topics and consumer groups, and the topics it creates.

    Attributes:
      topic_prefix(str): Put in front of every topic and consumer group name.
      group_id(str): Base name of the consumer groups; one group per topic is derived from it.
      partitions(int): Partitions of the topics the broker creates.
      replication_factor(int): Replication factor of the topics the broker creates.
      min_insync_replicas(int | None): ``min.insync.replicas`` of the topics the broker creates.  None
        becomes 2 when the replication factor is 3 or more, and otherwise leaves the Kafka brokers' default.
      dead_letter_retention_ms(int): ``retention.ms`` of the failed-message topics the broker creates.
      create_topics(bool): Whether the broker may create topics; off, it only looks them up.

    Raises:
      ValueError: If ``min_insync_replicas`` is one Kafka could never meet.
    """

    topic_prefix: str
    group_id: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int | None
    dead_letter_retention_ms: int
    create_topics: bool

    def __post_init__(self) -> None:
        replicas = self.replication_factor
        if self.min_insync_replicas is None and replicas >= 3:
            # One node may go, and nothing acknowledged is on one node only.
            object.__setattr__(self, "min_insync_replicas", 2)
        if self.min_insync_replicas is not None and not 1 <= self.min_insync_replicas <= replicas:
            raise ValueError(
                f"min_insync_replicas must be from 1 to the replication factor ({replicas}), "
                f"not {self.min_insync_replicas}: Kafka would refuse every write"
            )

    def topic_for(self, queue_name: str) -> str:
        """The Kafka topic that carries ``queue_name`` (a queue, ``.DQ`` or ``.XQ`` name)."""
        return self.topic_prefix + queue_name

    def group_for(self, queue_name: str) -> str:
        """The consumer group that consumes ``queue_name``: ``<topic_prefix><group_id>.<queue_name>``, prefix
        included, as managed services' tenants need (Heroku: ``heroku kafka:consumer-groups:create``)."""
        return f"{self.topic_prefix}{self.group_id}.{queue_name}"

    def specs(self, queue_name: str) -> list[TopicSpec]:
        """The queue's three topics (queue, ``.DQ``, ``.XQ``) as the broker would create them."""
        canonical = q_name(queue_name)
        configs = {}
        if self.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        failed = {**configs, "retention.ms": str(self.dead_letter_retention_ms)}
        return [
            TopicSpec(self.topic_for(name), self.partitions, self.replication_factor, topic_configs)
            for name, topic_configs in (
                (canonical, configs),
                (dq_name(canonical), configs),
                (xq_name(canonical), failed),
            )
        ]


def ensure(clients: KafkaClients, layout: TopicLayout, queue_name: str) -> None:
    """Make sure the queue's topics exist: create them when the layout allows it, else find them.

    Parameters:
      clients(KafkaClients): The clients to ask Kafka with; a topic is waited for up to their timeout.
      layout(TopicLayout): The topics' names and settings, and whether they may be created.
      queue_name(str): The queue whose three topics are wanted.

    Raises:
      MissingTopics: If a topic is missing and cannot be created (no right, or ``create_topics`` off).
      KafkaConnectionError: If Kafka cannot be reached, or refuses to create a topic for another reason.
    """
    wanted = layout.specs(queue_name)
    if not layout.create_topics:
        _check(clients, layout, wanted, "this app does not create topics: KAFKA_CREATE_TOPICS=false")
        return
    request = {spec.name: spec.create_request() for spec in wanted}
    result = clients.admin_call("create_topics", request, raise_errors=False)
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
        _check(clients, layout, wanted, refused)
        return
    clients.admin_call("wait_for_topics", list(request), timeout_ms=clients.timeout_ms)


def _check(clients: KafkaClients, layout: TopicLayout, wanted: list[TopicSpec], why: str) -> None:
    described = clients.admin_call("describe_topics", [spec.name for spec in wanted])
    found = {
        topic["name"]
        for topic in described
        if topic.get("error_code", 0) not in _NOT_FOUND and topic.get("partitions")
    }
    missing = [spec for spec in wanted if spec.name not in found]
    if missing:
        canonical = q_name(wanted[0].name.removeprefix(layout.topic_prefix))
        groups = [layout.group_for(canonical), layout.group_for(dq_name(canonical))]
        error = MissingTopics(missing, why, layout.topic_prefix, groups)
        logger.error("%s", error)
        raise error


def _duration(milliseconds: int) -> str:
    """``retention.ms`` as Heroku's ``--retention-time`` takes it (``14d``, ``36h``, ``90m``)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if milliseconds >= size and milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"
