"""The broker's own Prometheus metric: messages enqueued without confirmation that Kafka then refused.

The counter is made on first use, not at import: prometheus_client decides once, when it is first imported,
whether its values live in the files of multiprocess mode, and Dramatiq's ``Prometheus`` middleware turns
that mode on only when a worker process boots (after it has imported the broker).  Made later, in a worker
process, the counter lands in those files and Dramatiq's exporter serves it beside Dramatiq's own counters;
in any other process it is on prometheus_client's default registry.
"""

from __future__ import annotations

import threading
from typing import Any

#: The counter's name, in Dramatiq's style (``dramatiq_messages_total``...).
DELIVERY_ERRORS_METRIC = "dramatiq_kafka_delivery_errors_total"

_lock = threading.Lock()
_delivery_errors: Any = None


def delivery_errors() -> Any:
    """The ``prometheus_client.Counter`` of messages Kafka did not take after ``enqueue`` had returned
    (``confirm_delivery`` off), by queue and actor, as Dramatiq labels its own counters."""
    global _delivery_errors
    if _delivery_errors is None:
        with _lock:
            if _delivery_errors is None:
                import prometheus_client

                _delivery_errors = prometheus_client.Counter(
                    DELIVERY_ERRORS_METRIC.removesuffix("_total"),
                    "Messages enqueued without confirm_delivery that Kafka then refused.",
                    ["queue_name", "actor_name"],
                )
    return _delivery_errors
