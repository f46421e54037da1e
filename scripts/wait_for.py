"""Wait until Kafka or PostgreSQL accepts connections; the readiness probe of ``scripts/*.sh``.

    .venv/bin/python scripts/wait_for.py kafka 127.0.0.1:19092[,...] [--timeout SECONDS] [--brokers N]
    .venv/bin/python scripts/wait_for.py postgres postgresql://bup@127.0.0.1:55432/bup [--timeout SECONDS]

Kafka is ready when kafka-python's admin client gets the cluster's metadata with at least one broker in it
(sturdier than watching the broker's log for "Kafka Server started"), or N with ``--brokers N``;
PostgreSQL when psycopg2 connects and runs ``SELECT 1``. Exits 0 as soon as the service answers, 1 when it
did not within the timeout (default 5 s).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

#: Pause between two attempts, in seconds.
RETRY_INTERVAL = 0.5


def kafka_answers(servers: str, timeout: float, brokers: int = 1) -> bool:
    """One attempt: True when the cluster's metadata names at least ``brokers`` brokers."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout * 1000), 500)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=servers.split(","),
            client_id="run.local.sh",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError):
        return False
    try:
        return len(admin.describe_cluster().get("brokers") or []) >= brokers
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def postgres_answers(url: str, timeout: float) -> bool:
    """One attempt: True when a connection runs ``SELECT 1``."""
    import psycopg2

    try:
        connection = psycopg2.connect(url, connect_timeout=max(int(timeout), 1))
    except psycopg2.OperationalError:
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except psycopg2.Error:
        return False
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and retry the probe until it succeeds or the time is up."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("service", choices=["kafka", "postgres"])
    parser.add_argument("address", help="bootstrap servers (host:port,...) or a PostgreSQL URL")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to keep trying (default 5)")
    parser.add_argument("--brokers", type=int, default=1, help="Kafka: brokers the cluster must name (1)")
    args = parser.parse_args(argv)

    # kafka-python logs every refused connection as an error; the caller reports the outcome itself.
    logging.getLogger("kafka").addHandler(logging.NullHandler())
    logging.getLogger("kafka").propagate = False

    def probe(address: str, timeout: float) -> bool:
        if args.service == "kafka":
            return kafka_answers(address, timeout, args.brokers)
        return postgres_answers(address, timeout)

    deadline = time.monotonic() + args.timeout
    while True:
        remaining = deadline - time.monotonic()
        if probe(args.address, max(min(remaining, 5.0), 0.5)):
            return 0
        if time.monotonic() + RETRY_INTERVAL >= deadline:
            return 1
        time.sleep(RETRY_INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
