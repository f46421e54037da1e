"""The whole system as the Procfile runs it, for tests: a real uvicorn web process and real ``dramatiq
pipeline`` worker processes, on the real Kafka (topics of their own) and a PostgreSQL database of their own.

The session-wide ``stack`` fixture (``tests/conftest.py``) comes from :func:`start_stack`: starting
processes and consumer groups is the slow part, so it is done once, and tests keep out of each other's way
by using their own names.  The fault suite builds stacks of its own from the same parts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
TERMINAL = {"stored", "duplicate", "invalid", "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; returns its URL."""
    connection = psycopg2.connect(server_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(server_url: str, name: str) -> None:
    connection = psycopg2.connect(server_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


@dataclass
class Stack:
    """A running web + workers, and what a test needs to talk to them."""

    url: str
    env: dict[str, str]
    database_url: str
    logs: Path
    web: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def start_web(self) -> None:
        port = urlsplit(self.url).port
        self.web = self._spawn(
            "web",
            [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port)],
        )

    def start_worker(self, processes: int = 1, threads: int = 4) -> subprocess.Popen:
        worker = self._spawn(
            f"worker{len(self.workers)}",
            [
                sys.executable,
                "-m",
                "dramatiq",
                "pipeline",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
            ],
        )
        self.workers.append(worker)
        return worker

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (the process writes it until it ends)
        return subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @staticmethod
    def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"web did not become ready; see {self.logs}")

    def outcome(self, client: httpx.Client, submission_id: str, timeout: float = 90) -> dict:
        """Poll a submission until it has a terminal outcome."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = client.get(f"/api/submissions/{submission_id}")
            if response.status_code == 200 and response.json()["status"] in TERMINAL:
                return response.json()
            time.sleep(0.1)
        raise AssertionError(f"no outcome for {submission_id} within {timeout} s")

    def batch(self, client: httpx.Client, batch_id: str, timeout: float = 120) -> dict:
        """Poll a batch until it is completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = client.get(f"/api/batches/{batch_id}")
            if response.status_code == 200 and response.json().get("state") == "completed":
                return response.json()
            time.sleep(0.2)
        raise AssertionError(f"batch {batch_id} not completed within {timeout} s")

    def sql(self, query: str, *params: object) -> list[tuple]:
        connection = psycopg2.connect(self.database_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()


@contextlib.contextmanager
def start_stack(kafka_bootstrap_servers: str, database_url: str) -> Iterator[Stack]:
    """A stack with one worker process; stopped, and its database dropped, when the block ends."""
    run = uuid.uuid4().hex[:8]
    db_name = f"bup_e2e_{run}"
    db_url = create_database(database_url, db_name)
    logs = ARTIFACTS / f"e2e-{run}"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": db_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": f"e2e{run}.",
        "KAFKA_PARTITIONS": "4",
        "MAX_RETRIES": "3",
        "MIN_BACKOFF_MS": "200",
        "MAX_BACKOFF_MS": "1000",
        "WORKER_METRICS_PORT": "0",
        "BATCH_CHUNK_SIZE": "50",
        "dramatiq_restart_delay": "1000",
    }
    env.pop("API_TOKEN", None)
    subprocess.run([sys.executable, "-m", "pipeline", "migrate"], cwd=ROOT, env=env, check=True)
    stack = Stack(url=f"http://127.0.0.1:{free_port()}", env=env, database_url=db_url, logs=logs)
    stack.start_web()
    stack.start_worker(processes=1, threads=4)
    try:
        stack.wait_ready()
        yield stack
    finally:
        for process in [*stack.workers, stack.web]:
            if process is not None:
                stack.stop(process)
        drop_database(database_url, db_name)
