"""Deletes what a benchmark made on Kafka: the topics and consumer groups under its fresh prefix.

Runs must not pile them up: a local Kafka holding a few thousand partitions restarts after a crash, and
answers metadata requests, far slower, which the fault tests and the next benchmark would then measure.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaAdminClient


def delete_prefix(servers: str | Sequence[str], prefix: str, *, client_id: str = "bench") -> str:
    """Delete every topic and consumer group whose name starts with ``prefix``; returns what was done.

    A group whose member has not left yet cannot be deleted; it expires on its own.
    """
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id=client_id)
    try:
        topics = [t for t in admin.list_topics() if t.startswith(prefix)]
        if topics:
            admin.delete_topics(topics, timeout_ms=30_000)
        groups = [g["group_id"] for g in admin.list_groups() if g["group_id"].startswith(prefix)]
        deleted_groups = 0
        if groups:
            outcome = admin.delete_groups(groups)
            deleted_groups = sum(1 for status in outcome.values() if status == "OK")
        return f"deleted {len(topics)} topics and {deleted_groups}/{len(groups)} groups under {prefix!r}"
    finally:
        admin.close()
