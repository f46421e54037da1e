"""A Kafka cluster of several nodes on this machine, for the tests that take one node away.

It is started by the project's own ``scripts/kafka.sh`` with ``LOCAL_KAFKA_NODES`` (the way a person runs
one: ``LOCAL_KAFKA_NODES=3 ./run.local.sh``), in a directory and on ports of its own, so the session's
single-node Kafka is untouched.  A node is lost the hard way (``kill -9`` of its JVM, read from its pid
file) and brought back by ``scripts/kafka.sh up``, which starts whichever node is not running.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from tests.livestack import run_script

ROOT = Path(__file__).resolve().parents[2]


def _free_port_run(length: int) -> int:
    """The first of ``length`` consecutive ports that are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(30_000, 60_000, 2)
        sockets = []
        try:
            for port in range(base, base + length):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {length} consecutive free ports found")


class LocalCluster:
    """``nodes`` Kafka nodes (each broker and controller) run by ``scripts/kafka.sh``."""

    def __init__(self, nodes: int = 3, heap: str = "384m") -> None:
        self.nodes = nodes
        self.port = _free_port_run(2 * nodes)
        self.dir = ROOT / ".local" / f"kafka-cluster-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env = {
            **env,
            "LOCAL_KAFKA_NODES": str(nodes),
            "LOCAL_KAFKA_PORT": str(self.port),
            "LOCAL_KAFKA_DIR": str(self.dir),
            "LOCAL_KAFKA_HEAP": heap,
        }
        self.bootstrap_servers = ",".join(self.address(node) for node in range(1, nodes + 1))

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.port + 2 * (node - 1)}"

    def _script(self, action: str) -> None:
        run_script("kafka.sh", action, env=self.env)

    def up(self) -> None:
        """Start every node that is not running; returns once each answers and the cluster names all."""
        self._script("up")

    def down(self) -> None:
        self._script("down")

    def remove(self) -> None:
        """Kill every node and delete the cluster's folder: its data goes anyway, so a controlled shutdown
        (which takes a three-node cluster ~15 s) would buy nothing."""
        for node in range(1, self.nodes + 1):
            with contextlib.suppress(OSError, ValueError):  # (a node that is not running, or never ran)
                if b"kafka.Kafka" in Path(f"/proc/{self.pid(node)}/cmdline").read_bytes():
                    self.kill(node)
        self.down()  # (forgets the pids; stops whatever the kills missed)
        shutil.rmtree(self.dir, ignore_errors=True)

    def pid(self, node: int) -> int:
        return int((self.dir / f"node-{node}" / "kafka.pid").read_text())

    def kill(self, node: int) -> None:
        """``kill -9`` node ``node``: no controlled shutdown, its leaderships move only once the controller
        fences it (``broker.session.timeout.ms``, 9 s)."""
        self._signal(node, signal.SIGKILL, timeout=10)

    def stop(self, node: int) -> None:
        """SIGTERM to node ``node``, as a rolling restart does: a controlled shutdown, which hands its
        leaderships to the other nodes before it exits."""
        self._signal(node, signal.SIGTERM, timeout=60)

    def _signal(self, node: int, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid(node)
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            if time.monotonic() > deadline:
                raise AssertionError(f"Kafka node {node} (pid {pid}) still runs {timeout} s after {sig.name}")
            time.sleep(0.05)

    @contextmanager
    def admin(self) -> Iterator[KafkaAdminClient]:
        client = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers.split(","), client_id="cluster-test"
        )
        try:
            yield client
        finally:
            client.close()

    def partitions(self, topic: str) -> list[dict[str, Any]]:
        """One topic's partitions: ``partition_index``, ``leader_id``, ``replica_nodes``, ``isr_nodes``."""
        with self.admin() as admin:
            (described,) = admin.describe_topics([topic])
        return sorted(described["partitions"], key=lambda p: p["partition_index"])

    def topic_config(self, topic: str, name: str) -> str | None:
        """The value of topic config ``name`` (``min.insync.replicas``...)."""
        from kafka.admin import ConfigResource, ConfigResourceType

        with self.admin() as admin:
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entry = described["topic"][topic].get(name)
        return None if entry is None else entry["value"]

    def wait_in_sync(self, topics: list[str], timeout: float = 120) -> None:
        """Wait until every partition of ``topics`` has all its replicas in sync again."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = [
                (topic, p["partition_index"], p["isr_nodes"])
                for topic in topics
                for p in self.partitions(topic)
                if sorted(p["isr_nodes"]) != sorted(p["replica_nodes"])
            ]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas still out of sync after {timeout} s: {lagging}")
            time.sleep(0.5)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return "X"
