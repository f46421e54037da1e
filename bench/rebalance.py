"""How long a consumer stops fetching while a second one joins its group: eager against cooperative.

    python -m bench.rebalance [--rounds 2] [--heartbeats 2500,500]

A producer writes a record every 2 ms to a 6-partition topic; consumer A (kafka-python, as our broker's
consumers are) reads it alone, then consumer B joins the group.  Reported: A's longest pause between two
fetched batches from one second before B starts until five seconds after, with the ``range`` assignor
(eager rebalancing, what ``KafkaBroker`` uses) and with kafka-python's ``CooperativeStickyAssignor``
(incremental rebalancing, KIP-429).  Kafka comes from ``KAFKA_BOOTSTRAP_SERVERS`` (``source .local/env``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
import uuid
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor

from dramatiq_kafka_broker.clients import DEFAULT_HEARTBEAT_INTERVAL_MS

SERVERS = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
#: The broker's consumers' heartbeat interval (``clients.DEFAULT_HEARTBEAT_INTERVAL_MS``), in milliseconds.
HEARTBEAT_MS = DEFAULT_HEARTBEAT_INTERVAL_MS


def longest_pause(assignor: Any, heartbeat_ms: int = HEARTBEAT_MS) -> float:
    """A's longest pause, in seconds, while B joins a group that uses ``assignor``."""
    topic = f"bench-rebalance-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=SERVERS)
    admin.create_topics({topic: {"num_partitions": 6, "replication_factor": 1}})
    admin.wait_for_topics([topic], timeout_ms=10_000)
    producer = KafkaProducer(bootstrap_servers=SERVERS)
    stop = threading.Event()
    fetched_at: list[float] = []

    def produce() -> None:
        while not stop.is_set():
            producer.send(topic, b"x")
            time.sleep(0.002)

    def consume(record: bool, started: threading.Event) -> None:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=SERVERS,
            group_id=f"{topic}.group",
            auto_offset_reset="latest",
            enable_auto_commit=False,
            partition_assignment_strategy=(assignor,),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=heartbeat_ms,
        )
        started.set()
        while not stop.is_set():
            if consumer.poll(timeout_ms=20) and record:
                fetched_at.append(time.monotonic())
        consumer.close()

    threads = [threading.Thread(target=produce)]
    a_started, b_started = threading.Event(), threading.Event()
    threads.append(threading.Thread(target=consume, args=(True, a_started)))
    for thread in threads:
        thread.start()
    a_started.wait()
    time.sleep(3)
    b_starts = time.monotonic()
    threads.append(threading.Thread(target=consume, args=(False, b_started)))
    threads[-1].start()
    time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join()
    producer.close()
    admin.delete_topics([topic])
    admin.close()
    around = [t for t in fetched_at if t > b_starts - 1]
    return max((b - a for a, b in itertools.pairwise(around)), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--heartbeats", default=f"2500,{HEARTBEAT_MS}", help="heartbeat intervals to compare, in ms"
    )
    args = parser.parse_args()
    for _ in range(args.rounds):
        for heartbeat in (int(ms) for ms in args.heartbeats.split(",")):
            for name, assignor in (
                ("eager (range)", RangePartitionAssignor),
                ("cooperative", CooperativeStickyAssignor),
            ):
                pause = longest_pause(assignor, heartbeat) * 1000
                print(
                    f"{name:14} heartbeat {heartbeat:5} ms: A's longest pause while B joins {pause:7.0f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
