"""Fixtures shared by every test.

The first section holds the real services: the addresses of the Apache Kafka and PostgreSQL that
``./run.local.sh test`` starts (or that ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` name). A test that
needs a service which does not answer is skipped on a developer's machine and fails in CI (``CI=true``):
CI must never turn green by skipping. Add fixtures of your own in a section below it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

# ======================================================================================================
# Services (owned by the foundation: run.local.sh, scripts/)
# ======================================================================================================

#: Where ``./run.local.sh`` runs its services when the environment names none (as in ``scripts/lib.sh``,
#: whose ``LOCAL_KAFKA_PORT`` moves the local Kafka: a fault test may then break a Kafka of its own).
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{os.environ.get('LOCAL_KAFKA_PORT') or 19092}"
DEFAULT_DATABASE_URL = f"postgresql://bup@127.0.0.1:{os.environ.get('LOCAL_PG_PORT') or 55432}/bup"
#: Seconds a service gets to answer the probe made once per test session.
PROBE_TIMEOUT_S = 10


def pytest_configure(config: pytest.Config) -> None:
    # (here rather than in pyproject.toml's list: a change there makes scripts/venv.sh reinstall .venv)
    config.addinivalue_line("markers", "smoke: the end-to-end test that the quick loop keeps (README.md)")
    config.addinivalue_line("markers", "fuzz: generated input (hypothesis, schemathesis); marked by itself")


def _is_fault_test(item: pytest.Item) -> bool:
    return item.nodeid.startswith("tests/faults/")


#: Suites whose files share a service of their own (the managed suite's secured Kafka): one process runs all
#: their files, so that it starts one.
ONE_PROCESS_SUITES = {"managed"}


def _group(nodeid: str) -> str:
    """What ``./run.local.sh test`` runs in one process: a fault test alone (each process breaks a Kafka and a
    PostgreSQL of its own, ``tests/faults/conftest.py``), a suite of :data:`ONE_PROCESS_SUITES`, or a file
    (whose module and session fixtures then start once)."""
    if nodeid.startswith("tests/faults/"):
        return nodeid
    parts = nodeid.split("::", 1)[0].split("/")
    if len(parts) > 2 and parts[1] in ONE_PROCESS_SUITES:
        return "/".join(parts[:2])
    return "/".join(parts)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadscope`` (``./run.local.sh test``): each group of :func:`_group` in one process, the
    groups in the order of collection (``--no-loadscope-reorder``), so the fault tests first."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # As LoadScopeScheduling's, but every item of a node id is sent, not its first only: the tests
            # schemathesis makes of one function (one per API operation) share their node id.
            scope, work_unit = self.workqueue.popitem(last=False)
            self.assigned_work.setdefault(node, {})[scope] = work_unit
            wanted = {nodeid for nodeid, completed in work_unit.items() if not completed}
            collection = self.registered_collections[node]
            node.send_runtest_some([i for i, nodeid in enumerate(collection) if nodeid in wanted])

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that hypothesis (or schemathesis, through it) drives as ``fuzz``; put the fault tests
    first."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)
    # The fault tests are the longest: in a parallel run (pytest-xdist hands the tests out in this order)
    # they start first, spread over the processes, and do not end the run alone.
    items.sort(key=lambda item: not _is_fault_test(item))


def in_ci() -> bool:
    """True when the tests run in CI, where a missing service must fail the run instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)", pytrace=False)
    pytest.skip(f"{message}; start it with `./run.local.sh services up && source .local/env`")


def _kafka_problem(servers: str) -> str | None:
    """Why the Kafka at ``servers`` cannot be used, or None when it answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=servers.split(","),
            bootstrap_timeout_ms=PROBE_TIMEOUT_S * 1000,
            request_timeout_ms=PROBE_TIMEOUT_S * 1000,
        )
    except (KafkaError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    try:
        if not admin.describe_cluster().get("brokers"):
            return "the cluster reports no broker"
    except (KafkaError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        admin.close()
    return None


def _postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` cannot be used, or None when it runs a query."""
    import psycopg2

    try:
        connection = psycopg2.connect(url, connect_timeout=PROBE_TIMEOUT_S)
    except psycopg2.Error as error:
        return f"{type(error).__name__}: {str(error).strip()}"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except psycopg2.Error as error:
        return f"{type(error).__name__}: {str(error).strip()}"
    finally:
        connection.close()
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap_servers() -> str:
    """``host:port[,host:port...]`` of a real Apache Kafka that answers (skip or fail otherwise)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    problem = _kafka_problem(servers)
    if problem:
        _unavailable(f"Kafka at {servers} does not answer ({problem})")
    return servers


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of a real PostgreSQL database that answers (skip or fail otherwise)."""
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    problem = _postgres_problem(url)
    if problem:
        _unavailable(f"PostgreSQL at {url} does not answer ({problem})")
    return url


@pytest.fixture
def unique_name() -> str:
    """A fresh name for this test's own topic, table or group: lower-case, starts with a letter, 14 chars.

    Valid both as a Kafka topic name and as an unquoted PostgreSQL identifier, so tests never see each
    other's data (nor that of an earlier run).
    """
    return f"t_{uuid.uuid4().hex[:12]}"


# ======================================================================================================
# More fixtures: add your own sections below.
# ======================================================================================================


# ======================================================================================================
# Web (owned by the web helper; helpers in tests/web_support.py)
# ======================================================================================================


@pytest.fixture
def web_broker():
    """A fresh Dramatiq StubBroker for a web app under test (what it enqueued: ``web_support.enqueued``)."""
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    yield broker
    broker.close()


@pytest.fixture
def web_client(web_broker):
    """A Starlette TestClient of ``create_app(web_broker)`` with the small limits of ``web_support``."""
    from tests.web_support import make_client

    with make_client(web_broker) as client:
        yield client


# ======================================================================================================
# Pipeline (owned by the pipeline helper): a PostgreSQL database of the session, migrated once
# ======================================================================================================


@pytest.fixture(scope="session")
def pipeline_database(database_url):
    """``pipeline.db.database`` pointed at a database created for this session and migrated once.

    The database is new (``bup_test_<hex>``, on the server of ``DATABASE_URL``) and dropped at the end, so
    that migration tests may change the unique key without touching anyone else's data.
    """
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    from pipeline import db, migrations, settings

    name = f"bup_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    db.configure(url)
    migrations.migrate(settings.UNIQUE_FIELDS)
    yield db.database
    db.database.close_all()
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def clean_database(pipeline_database):
    """The session's database, emptied (users, submissions, batches) for this test."""
    with pipeline_database.connection_context():
        pipeline_database.execute_sql("TRUNCATE users, submissions, batches RESTART IDENTITY CASCADE")
    return pipeline_database


@pytest.fixture
def sql(clean_database):
    """Run one SQL statement on the test database and return its rows (``sql("SELECT ...", arg, ...)``)."""

    def run(statement, *params):
        with clean_database.connection_context():
            cursor = clean_database.execute_sql(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    return run


# ======================================================================================================
# The live stack (real web + worker processes), shared by every suite that needs it: tests/livestack.py
# ======================================================================================================


@pytest.fixture(scope="session")
def stack(kafka_bootstrap_servers: str, database_url: str) -> Iterator[Any]:
    """Web + one worker process on the real Kafka and a PostgreSQL database of their own, for the session."""
    from tests.livestack import start_stack

    with start_stack(kafka_bootstrap_servers, database_url) as running:
        yield running


# ======================================================================================================
# The run's figures: the fault suite's (``tests.faults.load.FIGURES``) and the hostile suite's
# (``tests.hostile.conftest.TALLY``), printed at the end of the run.  Under pytest-xdist each worker hands
# its own to the controller (``workeroutput``), which prints those of the whole run.
# ======================================================================================================


def _suite_figures() -> tuple[list[Any], Any]:
    from tests.faults.load import FIGURES
    from tests.hostile.conftest import TALLY

    return FIGURES, TALLY


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        figures, tally = _suite_figures()
        workeroutput["suite_figures"] = json.dumps(
            {
                "faults": [item.asdict() for item in figures],
                "cases": dict(tally.cases),
                "server_errors": tally.server_errors,
            }
        )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    sent = getattr(node, "workeroutput", {}).get("suite_figures")
    if not sent:
        return
    from tests.faults.load import Figures

    figures, tally = _suite_figures()
    data = json.loads(sent)
    figures.extend(Figures(**item) for item in data["faults"])
    tally.cases.update(data["cases"])
    tally.server_errors.extend(data["server_errors"])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return  # (a worker's figures go to the controller)
    figures, tally = _suite_figures()
    _fault_summary(terminalreporter, figures)
    _hostile_summary(terminalreporter, tally)


def _fault_summary(terminalreporter: Any, figures: list[Any]) -> None:
    """Print the fault suite's figures and write them to ``tests/artifacts/fault-figures.json``."""
    from tests.livestack import ARTIFACTS

    if not figures:
        return
    terminalreporter.write_sep("-", "fault injection")
    totals: dict[str, int] = {}
    for item in figures:
        terminalreporter.write_line(item.line())
        for key, value in item.totals().items():
            totals[key] = totals.get(key, 0) + value
    terminalreporter.write_line("total: " + ", ".join(f"{k}={v}" for k, v in totals.items()))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fault-figures.json").write_text(
        json.dumps({"tests": [f.asdict() for f in figures], "totals": totals}, indent=2) + "\n"
    )


def _hostile_summary(terminalreporter: Any, tally: Any) -> None:
    """Print how many hostile cases were sent, and how many 5xx came back."""
    if not tally.cases:
        return
    total = sum(tally.cases.values())
    parts = ", ".join(f"{source} {count}" for source, count in sorted(tally.cases.items()))
    terminalreporter.write_sep("-", "hostile input")
    terminalreporter.write_line(f"cases sent: {total} ({parts})")
    terminalreporter.write_line(f"5xx seen: {len(tally.server_errors)}")
    for line in tally.server_errors[:20]:
        terminalreporter.write_line(f"  {line}")
