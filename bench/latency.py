"""How soon a message starts: on a warm queue, on a queue declared on a running worker, and as a retry.

    python -m bench.latency [--rounds 20] [--only kafka,stub,redis]

For each broker, with a Dramatiq ``Worker`` of 4 threads running in this process (Dramatiq's default
middleware), one message at a time:

* **warm**: ``send`` returning -> the actor starting, on a queue the worker already consumes;
* **fresh**: an actor on a queue declared *after* the worker started (as a user's test declares its actors
  inside the test): ``send`` returning -> the actor starting.  The declaration itself is timed apart;
* **retry**: that fresh actor fails once with ``min_backoff=max_backoff=0``: the failure -> its retry
  starting.

The issue's targets for KafkaBroker: fresh <= 100 ms, retry <= 50 ms.  RedisBroker needs the Redis that
``bench/setup.sh`` starts (``REDIS_URL``, default ``redis://127.0.0.1:16379/0``); Kafka comes from
``KAFKA_BOOTSTRAP_SERVERS`` (``source .local/env``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable

import dramatiq
from dramatiq.middleware import default_middleware

from tests.livestack import delete_topics_with_prefix

#: Longest wait for one message, in seconds.
WAIT_S = 30.0


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    p50, top = statistics.median(ordered), ordered[-1]
    return f"p50 {p50 * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms  max {top * 1000:7.1f} ms"


def measure(make_broker: Callable[[], dramatiq.Broker], rounds: int) -> dict[str, list[float]]:
    """Times of ``rounds`` warm sends, fresh queues and zero-backoff retries on one broker."""
    broker = make_broker()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    figures: dict[str, list[float]] = {"warm": [], "declare": [], "fresh": [], "retry": []}
    started = threading.Event()
    at: list[float] = []

    @dramatiq.actor(queue_name="warm")
    def warm() -> None:
        at.append(time.monotonic())
        started.set()

    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        warm.send()
        started.wait(WAIT_S)
        time.sleep(0.5)
        for _ in range(rounds):
            started.clear()
            warm.send()
            sent = time.monotonic()
            if started.wait(WAIT_S):
                figures["warm"].append(at[-1] - sent)
        for n in range(rounds):
            attempts: list[float] = []
            done = threading.Event()

            def fails_once() -> None:
                attempts.append(time.monotonic())
                if len(attempts) == 1:
                    raise RuntimeError("once")
                done.set()

            before = time.monotonic()
            fresh = dramatiq.actor(
                fails_once, actor_name=f"fresh{n}", queue_name=f"fresh{n}", min_backoff=0, max_backoff=0
            )
            figures["declare"].append(time.monotonic() - before)
            fresh.send()
            sent = time.monotonic()
            if done.wait(WAIT_S):
                figures["fresh"].append(attempts[0] - sent)
                figures["retry"].append(attempts[1] - attempts[0])
    finally:
        worker.stop()
        broker.close()
        clients = getattr(broker, "clients", None)  # (a KafkaBroker: its topics and groups go too)
        if clients is not None:
            servers, prefix = clients.bootstrap_servers, broker.topic_prefix
            delete_topics_with_prefix(servers, prefix, client_id="bench-latency")
    return figures


def _kafka() -> dramatiq.Broker:
    from dramatiq_kafka_broker import KafkaBroker

    return KafkaBroker(
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
        topic_prefix=f"bench-{secrets.token_hex(3)}.",
        middleware=[m() for m in default_middleware],
    )


def _stub() -> dramatiq.Broker:
    from dramatiq.brokers.stub import StubBroker

    return StubBroker(middleware=[m() for m in default_middleware])


def _redis() -> dramatiq.Broker:
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(
        url=os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0"),
        namespace=f"bench-{secrets.token_hex(3)}",
        middleware=[m() for m in default_middleware],
    )


BROKERS = {"kafka": _kafka, "stub": _stub, "redis": _redis}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", default=",".join(BROKERS))
    args = parser.parse_args()
    for name in args.only.split(","):
        try:
            figures = measure(BROKERS[name], args.rounds)
        except Exception as error:  # a broker whose server is missing is reported, the others still run
            print(f"{name}: not measured ({type(error).__name__}: {error})")
            continue
        for what, values in figures.items():
            print(f"{name:6} {what:8} {_percentiles(values)}  (n={len(values)})")


if __name__ == "__main__":
    main()
