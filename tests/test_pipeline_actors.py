"""The actors, run by a Dramatiq Worker on a StubBroker (with the service's middleware), on real PostgreSQL.

The actors are declared on the service's broker when ``pipeline.worker`` is imported; the ``stub`` fixture
moves them onto a StubBroker for the test (and back), so nothing here needs Kafka.  A database outage is a
real one: the test database stops accepting connections (``ALLOW_CONNECTIONS false``) and its sessions are
terminated, then it is let back in.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import dramatiq
import psycopg2
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import prometheus

from pipeline import settings
from pipeline.middleware import middleware as service_middleware

pytestmark = pytest.mark.postgres

#: Longest a test waits for the worker to get somewhere, in seconds (a bound, not a measurement).
PATIENCE_S = 60


class Observer(dramatiq.Middleware):
    """Records every message the worker finished, with the name of the exception it raised."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str | None]] = []
        self.changed = threading.Condition()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        with self.changed:
            self.finished.append((message.actor_name, type(exception).__name__ if exception else None))
            self.changed.notify_all()

    def after_skip_message(self, broker, message):
        self.after_process_message(broker, message)

    def wait_for(self, predicate, what):
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.finished), timeout=PATIENCE_S):
                pytest.fail(f"the worker never {what}: {self.finished}")

    def runs_of(self, actor_name):
        return [exception for name, exception in self.finished if name == actor_name]


@pytest.fixture
def actors():
    """``pipeline.actors``, imported the way the worker imports it (after the global broker is set)."""
    from pipeline.worker import actors as module

    return module


@pytest.fixture
def stub(actors, clean_database, monkeypatch):
    """A StubBroker with the service's middleware (no Prometheus) carrying every actor, and a worker on it."""
    observer = Observer()
    middleware = [m for m in service_middleware() if not isinstance(m, prometheus.Prometheus)]
    broker = StubBroker(middleware=[*middleware, observer])
    broker.observer = observer
    declared = [value for value in vars(actors).values() if isinstance(value, dramatiq.Actor)]
    previous = dramatiq.get_broker()
    dramatiq.set_broker(broker)
    for actor in declared:
        monkeypatch.setattr(actor, "broker", broker)
        # Retries go fast in tests; how many there are stays the service's choice unless a test says.
        monkeypatch.setitem(actor.options, "min_backoff", 20)
        monkeypatch.setitem(actor.options, "max_backoff", 100)
        broker.declare_actor(actor)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield broker
    worker.stop()
    broker.close()
    dramatiq.set_broker(previous)


def drain(broker):
    broker.join("users", fail_fast=False, timeout=PATIENCE_S * 1000)


def outcomes(sql):
    rows = sql("SELECT id, row, status, user_id, errors FROM submissions ORDER BY id")
    return {
        i: {"row": row, "status": status, "user_id": user_id, "errors": errors}
        for i, row, status, user_id, errors in rows
    }


@contextmanager
def outage(database_url, database):
    """The test database refuses connections and loses its sessions until the block (or ``heal``) ends."""
    name = database.database
    admin = psycopg2.connect(database_url)
    admin.autocommit = True

    def run(statement, *params):
        with admin.cursor() as cursor:
            cursor.execute(statement, params)

    def heal():
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)
    try:
        yield heal
    finally:
        heal()
        admin.close()


# --- the happy paths ---------------------------------------------------------------------------------------


def test_process_user_validates_then_stores_through_the_pipeline(stub, actors, sql):
    # When
    actors.process_user.send({"id": "s1", "data": {"name": "Ada", "age": 36, "gender": "f"}})
    drain(stub)
    # Then
    [(user_id, name, info)] = sql("SELECT id, name, additional_info FROM users")
    assert (name, info) == ("Ada", {"gender": "f"})
    assert outcomes(sql)["s1"]["status"] == "stored" and outcomes(sql)["s1"]["user_id"] == user_id
    assert [name for name, _ in stub.observer.finished] == ["process_user", "validate_users", "persist_users"]


def test_process_users_stores_a_csv_chunk_with_its_bad_rows_and_duplicates(stub, actors, sql):
    # Given a chunk as the web sends it for a CSV with a ragged row, a bad age and a duplicate
    records = [
        {
            "id": "b1.1",
            "row": 1,
            "data": {"name": {"firstName": "Ann", "lastName": "Lee"}, "age": "30"},
            "errors": [],
        },
        {"id": "b1.2", "row": 2, "data": {"name": "Bob", "age": "abc"}, "errors": []},
        {
            "id": "b1.3",
            "row": 3,
            "data": None,
            "errors": [{"field": "_row", "message": "row 3 has 2 fields"}],
        },
        {"id": "b1.4", "row": 4, "data": {"name": "Ann  Lee", "age": " 30 "}, "errors": []},
    ]
    # When
    actors.process_users.send({"batch_id": "b1", "source": "csv", "records": records})
    actors.register_batch.send("b1", 4)
    drain(stub)
    # Then
    found = outcomes(sql)
    assert {i: (o["row"], o["status"]) for i, o in found.items()} == {
        "b1.1": (1, "stored"),
        "b1.2": (2, "invalid"),
        "b1.3": (3, "invalid"),
        "b1.4": (4, "duplicate"),
    }
    assert found["b1.4"]["user_id"] == found["b1.1"]["user_id"]
    assert found["b1.2"]["errors"] == [{"field": "age", "message": "must be an integer"}]
    assert sql("SELECT batch_id, row FROM submissions WHERE id = 'b1.3'") == [("b1", 3)]
    assert sql("SELECT id, count FROM batches") == [("b1", 4)]


def test_processing_messages_logs_no_warning_about_discarded_results(stub, actors, sql, caplog):
    # Given
    caplog.set_level(logging.WARNING)
    records = [{"id": "b4.1", "row": 1, "data": {"name": "Gus", "age": 7}, "errors": []}]
    # When a single post and a chunk go through the whole pipeline
    actors.process_user.send({"id": "s1", "data": {"name": "Hal", "age": 8}})
    actors.process_users.send({"batch_id": "b4", "source": "json", "records": records})
    drain(stub)
    # Then every stage ran, and none returned a value Dramatiq would discard with a warning per message
    assert {o["status"] for o in outcomes(sql).values()} == {"stored"}
    assert len(stub.observer.runs_of("persist_users")) == 2
    assert [r.getMessage() for r in caplog.records if "returned a value" in r.getMessage()] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_register_batch_twice_keeps_one_row(stub, actors, sql):
    actors.register_batch.send("b2", 7)
    actors.register_batch.send("b2", 7)
    drain(stub)
    assert sql("SELECT id, count FROM batches") == [("b2", 7)]


def test_a_redelivered_message_keeps_its_outcome(stub, actors, sql):
    # Given a submission processed once
    message = {"id": "s1", "data": {"name": "Cy", "age": 3}}
    actors.process_user.send(message)
    drain(stub)
    first = outcomes(sql)
    # When Kafka delivers the same message again
    actors.process_user.send(message)
    drain(stub)
    # Then
    assert outcomes(sql) == first and first["s1"]["status"] == "stored"
    assert sql("SELECT count(*) FROM users") == [(1,)]


def test_invalid_input_is_never_retried(stub, actors, sql):
    # When
    actors.process_user.send({"id": "s1", "data": {"name": 1, "age": "x"}})
    actors.process_user.send({"id": "s2", "data": ["not", "an", "object"]})
    drain(stub)
    # Then every message ran once, without an exception, and nothing was dead-lettered
    assert all(exception is None for _, exception in stub.observer.finished)
    assert len(stub.observer.runs_of("persist_users")) == 2
    assert stub.dead_letters == []
    assert {i: o["status"] for i, o in outcomes(sql).items()} == {"s1": "invalid", "s2": "invalid"}
    assert outcomes(sql)["s2"]["errors"][0]["field"] == "_root"


# --- a database outage -------------------------------------------------------------------------------------


def test_an_outage_that_heals_is_retried_and_the_user_stored_never_failed(
    stub, actors, sql, database_url, clean_database, monkeypatch
):
    # Given plenty of retries
    monkeypatch.setattr(settings, "MAX_RETRIES", 50)
    with outage(database_url, clean_database) as heal:
        # When a user arrives while the database refuses connections
        actors.process_user.send({"id": "s1", "data": {"name": "Dee", "age": 4}})
        stub.observer.wait_for(
            lambda done: ("persist_users", "OperationalError") in done, "failed to persist"
        )
        # ... and the database comes back
        heal()
        drain(stub)
    # Then the retry stored it, and it was never marked failed on the way
    assert outcomes(sql)["s1"]["status"] == "stored"
    assert stub.observer.runs_of("persist_users")[-1] is None
    assert stub.observer.runs_of("record_failure") == []
    assert stub.dead_letters == []


def test_an_outage_that_outlasts_the_retries_marks_failed_and_a_replay_stores(
    stub, actors, sql, database_url, clean_database, monkeypatch
):
    # Given few retries
    monkeypatch.setattr(settings, "MAX_RETRIES", 2)
    with outage(database_url, clean_database) as heal:
        # When a chunk arrives while the database stays away until its retries run out
        records = [{"id": "b3.1", "row": 1, "data": {"name": "Eve", "age": 5}, "errors": []}]
        actors.process_users.send({"batch_id": "b3", "source": "json", "records": records})
        stub.observer.wait_for(
            lambda done: [n for n, e in done if n == "persist_users" and e] and stub.dead_letters, "gave up"
        )
        heal()
        drain(stub)
    # Then the message is dead-lettered and the submission is failed with the reason
    [dead] = [m for m in stub.dead_letters if m.actor_name == "persist_users"]
    found = outcomes(sql)["b3.1"]
    assert (found["status"], found["row"], found["user_id"]) == ("failed", 1, None)
    [reason] = found["errors"]
    assert reason["field"] == "_system" and "OperationalError" in reason["message"]
    assert sql("SELECT batch_id FROM submissions") == [("b3",)]

    # When the dead message is replayed once the database is back
    stub.enqueue(dead.copy(options={}))
    drain(stub)
    # Then the user is stored and the failure is forgotten
    found = outcomes(sql)["b3.1"]
    assert found["status"] == "stored" and found["errors"] == []
    assert sql("SELECT count(*) FROM users") == [(1,)]


def test_a_transient_error_leaves_the_connection_pool_usable(stub, actors, sql, database_url, clean_database):
    # Given sessions of the pool killed under it (a server restart)
    with clean_database.connection_context():
        clean_database.execute_sql("SELECT 1")
    with outage(database_url, clean_database):
        pass
    # When
    actors.process_user.send({"id": "s1", "data": {"name": "Flo", "age": 6}})
    drain(stub)
    # Then
    assert outcomes(sql)["s1"]["status"] == "stored"
