"""Fixtures of the fault-injection suite: a fresh stack per test, the local services to break, and figures.

Faults are destructive, so every test gets a stack of its own (:func:`make_stack`): its own PostgreSQL
database, its own topic prefix and consumer groups, real ``uvicorn`` and ``dramatiq pipeline`` processes
(the ``Stack`` of the harness, ``tests/livestack.py``).  The services are stopped and started with the
project's own scripts (``scripts/kafka.sh``, ``scripts/postgres.sh``), so only the services this checkout
runs under ``.local/`` can be broken: against external ones (``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL``
naming other addresses) the tests that stop a service skip, and fail in CI, where the services are always
local.

Whatever a test stops is started again before it ends (``livestack.Services``, try/finally), and the fixture
checks both services answer before the next test runs: other suites share them in the same session.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from dramatiq_kafka_broker import KafkaBroker, KafkaConnectionError
from tests.conftest import (
    DEFAULT_DATABASE_URL,
    DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
    _kafka_problem,
    _postgres_problem,
    in_ci,
)
from tests.faults.load import FIGURES, Figures
from tests.livestack import ROOT, Services, Stack, new_stack, run_script

#: The queue of the user pipeline (``pipeline.contract.QUEUE``) and the workers' consumer group base name.
QUEUE = "users"
GROUP_ID = "bup-workers"
#: The line ``persist_users`` logs once its transaction is committed (``pipeline/actors.py``).
PERSISTED = re.compile(r"\] persisted \S+ stored=(\d+) duplicate=(\d+) invalid=(\d+) skipped=(\d+)")


#: Where the services of a lane listen: lane ``gw<n>`` (pytest-xdist's worker ``n``) on the Kafka port
#: ``LANE_KAFKA_PORT + 10 n`` (its controller on the next) and the PostgreSQL port ``LANE_POSTGRES_PORT + n``:
#: clear of the session's (19092, 55432), the managed suite's (19392...) and the clusters' (30000 and up).
LANE_KAFKA_PORT = 19492
LANE_POSTGRES_PORT = 55532


def _lane() -> dict[str, str] | None:
    """The services of this process's lane, when the suite runs in parallel (pytest-xdist), else None.

    The fault tests stop, kill and restart Kafka and PostgreSQL: beside other tests, they break services of
    their own, one set per xdist worker, in ``.local/lanes/<worker>/``.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return None
    n = int(worker.removeprefix("gw"))
    where = ROOT / ".local" / "lanes" / worker
    return {
        "LOCAL_KAFKA_PORT": str(LANE_KAFKA_PORT + 10 * n),
        "LOCAL_KAFKA_DIR": str(where / "kafka"),
        "LOCAL_PG_PORT": str(LANE_POSTGRES_PORT + n),
        "LOCAL_PG_DIR": str(where / "pg"),
    }


@pytest.fixture(scope="session")
def lane() -> Iterator[dict[str, str] | None]:
    """This process's lane (:func:`_lane`), its Kafka and PostgreSQL started new for the session and
    stopped at its end; None when the suite runs in one process, on the session's services."""
    where = _lane()
    if where is None:
        yield None
        return
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}}
    env.update(where)
    for directory in (where["LOCAL_KAFKA_DIR"], where["LOCAL_PG_DIR"]):
        subprocess.run(["rm", "-rf", directory], check=True)  # (a fresh Kafka: no topics of earlier runs)
    try:
        run_script("kafka.sh", "up", env=env, quiet=True)
        run_script("postgres.sh", "up", env=env, quiet=True)
        yield where
    finally:
        for script in ("kafka.sh", "postgres.sh"):
            run_script(script, "down", env=env, quiet=True)


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(kafka_bootstrap_servers: str, lane: dict[str, str] | None) -> str:
    """The Kafka the fault tests break: the lane's, or the session's when the suite runs in one process."""
    return f"127.0.0.1:{lane['LOCAL_KAFKA_PORT']}" if lane else kafka_bootstrap_servers


@pytest.fixture(scope="session")
def database_url(database_url: str, lane: dict[str, str] | None) -> str:
    """The PostgreSQL the fault tests break: the lane's, or the session's in a run of one process."""
    return f"postgresql://bup@127.0.0.1:{lane['LOCAL_PG_PORT']}/bup" if lane else database_url


def _is_local(kafka: str, database_url: str) -> bool:
    return kafka == DEFAULT_KAFKA_BOOTSTRAP_SERVERS and database_url == DEFAULT_DATABASE_URL


@pytest.fixture
def services(
    kafka_bootstrap_servers: str, database_url: str, lane: dict[str, str] | None
) -> Iterator[Services]:
    """The local services, to be stopped and started by the test (skips for external ones, fails in CI)."""
    if lane is None and not _is_local(kafka_bootstrap_servers, database_url):
        message = (
            f"fault injection stops this checkout's own services ({DEFAULT_KAFKA_BOOTSTRAP_SERVERS}, "
            f"{DEFAULT_DATABASE_URL}); the environment names others"
        )
        if in_ci():
            pytest.fail(f"{message} (CI=true: the services must be the local ones)", pytrace=False)
        pytest.skip(message)
    services = Services(
        kafka_bootstrap_servers,
        database_url,
        kafka_problem=_kafka_problem,
        postgres_problem=_postgres_problem,
        where=lane,
    )
    yield services
    # Whatever happened in the test, leave both services answering for the tests that follow.
    services.kafka_up()
    services.postgres_up()


class FaultStack(Stack):
    """A :class:`Stack` with a view of its own topics (lag, failed messages) and of its ledger."""

    prefix: str
    broker: KafkaBroker

    def drained(self) -> bool:
        """True when the queue and its delay queue hold no message that was not acked."""
        return all(sum(self.broker.admin.lag(name).values()) == 0 for name in (QUEUE, f"{QUEUE}.DQ", QUEUE))

    def wait_consuming(self, workers: int, timeout: float = 60) -> None:
        """Wait until ``workers`` worker processes share the queue: its consumer group (and the delay
        queue's) is stable with that many members.  A crashed worker stays a member until its session
        times out (10 s), so this also waits for the group to forget the dead.  In share mode
        (``KAFKA_GROUP_TYPE=share``) the delay queue's group counts the members, and the queue's share
        group must be stable."""
        deadline = time.monotonic() + timeout
        share = self.broker.group_type == "share"
        # (in share mode the queue's share group has no classic description: its delay queue's consumer
        # group, one member per worker process, counts them, and the share group must be Stable)
        groups = [self.broker.group_for(f"{QUEUE}.DQ")]
        if not share:
            groups.insert(0, self.broker.group_for(QUEUE))
        while True:
            try:
                described = self.broker.clients.admin_call("describe_groups", groups)
                if share:
                    listed = self.broker.clients.admin_call("list_groups", types_filter=["share"])
                    queue_group = self.broker.group_for(QUEUE)
                    share_states = [g["group_state"] for g in listed if g["group_id"] == queue_group]
            except KafkaConnectionError as error:  # (no coordinator yet: a new cluster's offsets topic)
                states = [str(error)]
            else:
                states = [(g["group_state"], len(g["members"])) for g in described.values()]
                if share:
                    states.append((share_states[0] if share_states else "absent", workers))
            if all(state == ("Stable", workers) for state in states):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the consumer groups are {states}, not stable with {workers} members")
            time.sleep(0.2)

    def failed_count(self) -> int:
        return self.broker.admin.failed_count(QUEUE)

    def failed_messages(self) -> list[Any]:
        return list(self.broker.admin.failed_messages(QUEUE))

    def cli(self, *args: str) -> str:
        """Run ``python -m pipeline ARGS`` with the stack's environment; returns its output."""
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"python -m pipeline {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    @staticmethod
    def terminate(process: subprocess.Popen, timeout: float = 60) -> int:
        """SIGTERM to the ``dramatiq`` main process only, as ``docker stop`` or ``kill <pid>`` do; returns the
        exit code.  (``Stack.stop`` signals the whole process group, so each worker process gets SIGTERM
        twice -- once directly, once forwarded by its parent -- and Dramatiq takes the second one as "kill
        now", and exits mid-work.)"""
        os.kill(process.pid, signal.SIGTERM)
        return process.wait(timeout=timeout)

    def execute(self, statement: str, *params: object) -> None:
        """Run one statement on the stack's database and commit it (``sql`` only reads)."""
        connection = psycopg2.connect(self.database_url)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params or None)  # (None: a "%" in the statement is itself)
        finally:
            connection.close()

    def worker_log(self) -> str:
        """Every worker's log so far, one after the other."""
        return "".join(path.read_text(errors="replace") for path in sorted(self.logs.glob("worker*.log")))

    def persisted(self) -> tuple[int, int]:
        """From the workers' logs: how many records ``persist_users`` messages carried (single posts that
        arrive together share a message, so records are counted, not messages), and how many of them were
        skipped because an earlier delivery had stored them already."""
        found = [[int(n) for n in counts] for counts in PERSISTED.findall(self.worker_log())]
        return sum(sum(counts) for counts in found), sum(counts[3] for counts in found)

    def alive(self) -> list[int]:
        """The pids of the stack's processes that are still running (web first)."""
        return [p.pid for p in [self.web, *self.workers] if p is not None and p.poll() is None]


#: The environment of every fault stack; tests add what their fault needs (retry budget, timeouts).
BASE_ENV = {
    "KAFKA_PARTITIONS": "4",
    "MAX_RETRIES": "8",
    "MIN_BACKOFF_MS": "200",
    "MAX_BACKOFF_MS": "2000",
    "WORKER_METRICS_PORT": "0",
    "BATCH_CHUNK_SIZE": "50",
    # Short enough that a POST answers 503 within seconds while Kafka is down.
    "KAFKA_SEND_TIMEOUT_MS": "5000",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture
def make_stack(
    kafka_bootstrap_servers: str, database_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultStack]]:
    """A factory: ``make_stack(workers=2, **env)`` starts web + ``workers`` worker processes, ready to use.

    Each stack has its own database (``bup_fault_<hex>``, dropped at the end) and topic prefix; its logs
    are kept under ``tests/artifacts/fault-<test>-<hex>/``.
    """
    made: list[FaultStack] = []

    def make(*, workers: int = 2, threads: int = 4, **env: str) -> FaultStack:
        stack = new_stack(
            kafka_bootstrap_servers,
            database_url,
            kind="fault",
            label=f"fault-{request.node.name[:40]}",
            env={"KAFKA_GROUP_ID": GROUP_ID, **BASE_ENV, **env},
            stack_class=FaultStack,
        )
        stack.prefix = stack.topic_prefix
        stack.broker = KafkaBroker(
            bootstrap_servers=kafka_bootstrap_servers,
            topic_prefix=stack.prefix,
            group_id=GROUP_ID,
            group_type=stack.env.get("KAFKA_GROUP_TYPE", "classic"),
            replication_factor=int(stack.env.get("KAFKA_REPLICATION_FACTOR", "1")),
            middleware=[],
        )
        stack.broker.declare_queue(QUEUE)
        made.append(stack)
        stack.start(workers=workers, threads=threads)
        return stack

    yield make
    for stack in made:
        stack.stop_all()
        stack.broker.close()
        try:
            stack.close()
        except Exception as error:
            print(f"could not drop {stack.database_name}: {error}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """This test's figures (submissions sent, faults, outcomes, lost, duplicated), kept for the summary."""
    found = Figures(test=request.node.name)
    FIGURES.append(found)
    return found
