"""A Dramatiq broker on Apache Kafka, built on kafka-python.  The only package that imports kafka-python;
it knows nothing about users.

Topics (``prefix`` is the broker's ``topic_prefix``)::

    <prefix><queue>        the queue: one topic, ``partitions`` partitions
    <prefix><queue>.DQ     its delay queue (Dramatiq's ``dq_name``): messages with an ``eta``
    <prefix><queue>.XQ     its failed messages (Dramatiq's ``xq_name``), with the failure reason in headers

Consumers join one consumer group per topic (``<prefix><group_id>.<topic>``: the prefix is the topics'
``topic_prefix``, as Heroku's multi-tenant plans want for groups too), so that any number of worker
processes on any number of hosts share a queue's partitions.

The modules, by what they hold:

* :mod:`.broker`: :class:`KafkaBroker`, the transport (declare, enqueue, consume, join, flush, close);
* :mod:`.consumer`: the consumer of one topic, and what it does when its group moves partitions
  (:mod:`.rebalance` relays kafka-python's callbacks to it);
* :mod:`.assignment`: what a consumer holds of its assigned partitions (states, fetched messages, acks);
* :mod:`.offsets`: one partition's ack bookkeeping and the acked offsets kept in commit metadata;
* :mod:`.middleware`: ``DurablePipelines`` and ``DurableRetries``, hand-offs that are durable on Kafka;
* :mod:`.topics`: a queue's topics, created, or found when the app may not create them;
* :mod:`.admin`: :class:`KafkaAdmin` (``broker.admin``): lag, replicas, partitions grown, failed messages
  and their replay;
* :mod:`.deadletters`: the failed-message records; :mod:`.clients`: the kafka-python clients;
* :mod:`.errors`: the error tree; :mod:`.metrics`: the delivery-error counter of ``confirm_delivery=False``;
* :mod:`.compat`: every private kafka-python and Dramatiq name we use;
* :mod:`.share`: share groups (KIP-932, ``KafkaBroker(group_type="share")``): the messages kafka-python
  lacks (:mod:`.share.protocol`), the share consumer (:mod:`.share.consumer`, its membership, sessions and
  bookkeeping in :mod:`.share.membership`, :mod:`.share.session`, :mod:`.share.state`), the group's
  set-up (:mod:`.share.admin`) and its offsets and lag (:mod:`.share.offsets`).
"""

from .admin import KafkaAdmin, PartitionGrowth
from .broker import (
    DEFAULT_COMMIT_INTERVAL_MS,
    DEFAULT_DEAD_LETTER_RETENTION_MS,
    DEFAULT_PARTITIONS,
    DEFAULT_REPLICATION_FACTOR,
    DEFAULT_SEND_TIMEOUT_MS,
    KafkaBroker,
)
from .deadletters import HEADER_ORIGIN, HEADER_QUEUE, HEADER_REASON, FailedMessage, FailedRanges, check_ranges
from .errors import (
    FailedMessagesChanged,
    KafkaConnectionError,
    KafkaSetupError,
    MessageFailed,
    MissingRight,
    RecordTooLarge,
    UnknownFailedMessages,
)
from .topics import MissingTopics, TopicSpec

__all__ = [
    "DEFAULT_COMMIT_INTERVAL_MS",
    "DEFAULT_DEAD_LETTER_RETENTION_MS",
    "DEFAULT_PARTITIONS",
    "DEFAULT_REPLICATION_FACTOR",
    "DEFAULT_SEND_TIMEOUT_MS",
    "HEADER_ORIGIN",
    "HEADER_QUEUE",
    "HEADER_REASON",
    "FailedMessage",
    "FailedMessagesChanged",
    "FailedRanges",
    "KafkaAdmin",
    "KafkaBroker",
    "KafkaConnectionError",
    "KafkaSetupError",
    "MessageFailed",
    "MissingRight",
    "MissingTopics",
    "PartitionGrowth",
    "RecordTooLarge",
    "TopicSpec",
    "UnknownFailedMessages",
    "check_ranges",
]
