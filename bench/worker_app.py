"""The no-op actor of ``bench/brokers.py`` on our KafkaBroker, for a worker run as its own process.

    dramatiq bench.worker_app:broker --processes 1 --threads 8

The broker is configured from ``pipeline.settings`` like the service's own (the benchmark gives the worker
``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_TOPIC_PREFIX`` and ``KAFKA_GROUP_ID``), but with Dramatiq's default
middleware, as every broker of the in-process runs has.
"""

from __future__ import annotations

import dramatiq

from pipeline.broker import build_broker

#: Queue of the separate-process runs; the per-run topic prefix keeps runs apart.
QUEUE = "bench_proc"
#: Actor name shared with the process that enqueues.
ACTOR = "bench_noop"

broker = build_broker(middleware=None)


@dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ACTOR, max_retries=0)
def bench_noop() -> None:
    """Does nothing: the benchmark measures the broker and the worker loop, not the work."""
