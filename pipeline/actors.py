"""The user pipeline's actors, all on the ``users`` queue.

The web enqueues the first stage of a Dramatiq pipeline of two actors (single posts gathered into one
message, or a chunk of a batch), and once a whole batch is in Kafka, ``register_batch``::

    validate_users(records, batch_id, source) | persist_users(results)

``process_user`` and ``process_users`` build the same pipeline from a single submission or a chunk: the
web sends neither, but messages of that form may still be in Kafka or replayed from the failed-message
topic.  ``validate_users`` is pure (Cerberus);
``persist_users`` writes every outcome of the chunk in one transaction of a few statements, each taking
the whole chunk as one JSON parameter (a handful of round trips per message whatever its size, none per
record), and is idempotent: a redelivered message never writes a second row, and never turns ``stored``
into ``duplicate``.  Transient database errors are retried with backoff by Dramatiq's ``Retries``; when
the retries run out the message goes to the failed-message topic and ``record_failure`` (Dramatiq's
``on_retry_exhausted`` callback, itself retried) marks its submissions ``failed``.  Not ``on_failure``:
that callback fires on *every* failed attempt, which would mark ``failed`` a submission still being
retried.  Every database access goes through :func:`_database_work`, which drops the thread's connection
after a transient error so that the retry reconnects.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import dramatiq
import peewee
import psycopg2

from pipeline import invalid_records, persist_plan, settings
from pipeline.contract import (
    PERSIST_USERS,
    PROCESS_USER,
    PROCESS_USERS,
    QUEUE,
    RECORD_FAILURE,
    REGISTER_BATCH,
    SINGLE_SOURCE,
    VALIDATE_USERS,
    BatchRecord,
    ChunkPayload,
    FieldError,
    Status,
    SubmissionPayload,
    ValidatedRecord,
)
from pipeline.db import database, reset_connection
from pipeline.models import Batch, Submission, unique_columns
from pipeline.persist_plan import Key, SubmissionRow, submission_row
from pipeline.validation import validate_record

logger = logging.getLogger("pipeline.actors")

#: Errors worth retrying: the database went away or is restarting.  Anything else is a bug or bad data.
TRANSIENT = (
    peewee.OperationalError,
    peewee.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)
#: Keys looked up per SELECT of the ids of users stored before (PostgreSQL takes at most 65,535
#: parameters in one statement).
INSERT_CHUNK = 1000

#: What ``persist_users`` writes: the whole chunk travels as one JSON parameter that PostgreSQL unpacks
#: (``jsonb_to_recordset``), because having psycopg2 quote every value of every row (``execute_values``)
#: cost more CPU in the worker than the rest of the persisting together.  ``created_at`` of a user is the
#: column's default (``now()``).
_INSERT_USERS = (
    "INSERT INTO users (name, age, email, phone_number, address, additional_info) "
    "SELECT name, age, email, phone_number, address, coalesce(additional_info, '{{}}'::jsonb) "
    "FROM jsonb_to_recordset(%s::jsonb) AS t(name text, age integer, email text, phone_number text, "
    "address jsonb, additional_info jsonb) "
    "ON CONFLICT DO NOTHING RETURNING id, {key}"
)
#: An outcome replaces an existing one only when that is ``failed`` (a replay).
_UPSERT_OUTCOMES = (
    "INSERT INTO submissions (id, batch_id, row, status, errors, user_id, created_at, updated_at) "
    "SELECT id, batch_id, row, status, errors, user_id, %(now)s, %(now)s "
    "FROM jsonb_to_recordset(%(rows)s::jsonb) AS t(id text, batch_id text, row integer, status text, "
    "errors jsonb, user_id bigint) "
    "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, errors = EXCLUDED.errors, "
    "user_id = EXCLUDED.user_id, updated_at = EXCLUDED.updated_at "
    "WHERE submissions.status = 'failed'"
)
#: Turns psycopg2's errors into Peewee's, as around Peewee's own queries (``TRANSIENT`` holds both).
_PEEWEE_ERRORS = peewee.__exception_wrapper__  # type: ignore[attr-defined]


@contextlib.contextmanager
def _database_work() -> Iterator[None]:
    """A connection and a transaction around a block; psycopg2's errors are raised as Peewee's.

    After a transient error the thread's connection is dropped (it is likely dead), so that the retry
    reconnects instead of getting the broken connection back from the pool.
    """
    try:
        with database.connection_context(), database.atomic(), _PEEWEE_ERRORS:
            yield
    except TRANSIENT:
        reset_connection()
        raise


def _retry_transient(retries: int, exception: Exception) -> bool:
    """Dramatiq's ``retry_when``: retry transient database errors, up to ``settings.MAX_RETRIES`` times."""
    return isinstance(exception, TRANSIENT) and retries < settings.MAX_RETRIES


_persisting = {
    "queue_name": QUEUE,
    "retry_when": _retry_transient,
    "min_backoff": settings.MIN_BACKOFF_MS,
    "max_backoff": settings.MAX_BACKOFF_MS,
    "on_retry_exhausted": RECORD_FAILURE,
}


#: Options of the actors that only start the pipeline: they touch no database, so nothing to retry on.
_starting = {"queue_name": QUEUE, "max_retries": settings.MAX_RETRIES, "on_retry_exhausted": RECORD_FAILURE}


def _start_pipeline(records: list[BatchRecord], batch_id: str | None, source: str) -> None:
    """Send ``validate_users(records, batch_id, source) | persist_users``."""
    dramatiq.pipeline([validate_users.message(records, batch_id, source), persist_users.message()]).run()


@dramatiq.actor(actor_name=PROCESS_USER, **_starting)
def process_user(submission: SubmissionPayload) -> None:
    """One submitted record ``{"id", "data"}``: validate, then dedupe and persist."""
    record: BatchRecord = {"id": submission["id"], "row": None, "data": submission.get("data"), "errors": []}
    _start_pipeline([record], None, SINGLE_SOURCE)


@dramatiq.actor(actor_name=PROCESS_USERS, **_starting)
def process_users(chunk: ChunkPayload) -> None:
    """A chunk of a batch ``{"batch_id", "source", "records": [{"id", "row", "data", "errors"}]}``."""
    _start_pipeline(chunk["records"], chunk["batch_id"], chunk.get("source", "json"))


@dramatiq.actor(actor_name=VALIDATE_USERS, queue_name=QUEUE, max_retries=0, on_retry_exhausted=RECORD_FAILURE)
def validate_users(records: list[BatchRecord], batch_id: str | None, source: str) -> list[ValidatedRecord]:
    """Validate every record with Cerberus; the result lists each record's user or all of its errors."""
    results: list[ValidatedRecord] = []
    for record in records:
        user, errors = validate_record(
            record.get("data"), source=source, parse_errors=record.get("errors") or ()
        )
        results.append(
            {
                "id": record["id"],
                "row": record.get("row"),
                "batch_id": batch_id,
                "user": user,
                "errors": errors,
            }
        )
    invalid_records.attach(records, results, batch_id)
    return results


@dramatiq.actor(actor_name=PERSIST_USERS, **_persisting, max_retries=settings.MAX_RETRIES)
def persist_users(results: list[ValidatedRecord]) -> None:
    """The pipeline's last stage: :func:`persist_chunk`.

    It returns nothing: nothing consumes the last stage's result, and a value without the Results
    middleware makes Dramatiq log a warning for every message.
    """
    persist_chunk(results)


def persist_chunk(results: list[ValidatedRecord]) -> dict[str, int]:
    """Store the valid users (``ON CONFLICT DO NOTHING``) and every outcome, in one transaction.

    Returns the records per outcome (:func:`persist_plan.empty_counts`).  When the chunk fails as a whole,
    its records are tried one by one: if some of them succeed, the chunk is done and each record that still
    fails goes on as a message of its own (retried, then on the failed topic alone), so that one poison
    record does not hold up the rest of its batch.  When none succeeds (the database is down), the chunk is
    retried as it is.
    """
    try:
        counts = _persist(results)
    except Exception:
        if len(results) < 2:
            raise
        counts = _persist_one_by_one(results)
    batch = results[0]["batch_id"] if results else None
    logger.info(
        "persisted %s stored=%d duplicate=%d invalid=%d skipped=%d",
        f"batch={batch}" if batch else f"id={results[0]['id'] if results else '-'}",
        counts[Status.STORED],
        counts[Status.DUPLICATE],
        counts[Status.INVALID],
        counts["skipped"],
    )
    return counts


def _persist_one_by_one(results: list[ValidatedRecord]) -> dict[str, int]:
    """Persist each record in its own transaction; send the ones that fail on as messages of their own."""
    counts = persist_plan.empty_counts()
    failing: list[ValidatedRecord] = []
    last_error: Exception | None = None
    header = invalid_records.header_of(results)  # kept with whichever record of the chunk gets through
    for result in results:
        try:
            for status, n in _persist([result], header).items():
                counts[status] += n
        except Exception as error:
            failing.append(result)
            last_error = error
    if last_error is not None and len(failing) == len(results):
        raise last_error  # nothing could be stored: retry the chunk as it is
    for result in failing:
        persist_users.send([result])
    logger.warning("split a chunk: %d record(s) go on alone: %s", len(failing), [r["id"] for r in failing])
    return counts


def _key_list(columns: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)  # names from models.unique_columns, never from a client


def _done_ids(cursor: Any, ids: list[str]) -> set[str]:
    """The submissions among ``ids`` that already have an outcome (``failed`` ones may get another)."""
    cursor.execute(
        "SELECT id FROM submissions WHERE id = ANY(%s) AND status <> %s", (ids, str(Status.FAILED))
    )
    return {row[0] for row in cursor.fetchall()}


def _insert_users(cursor: Any, users: list[dict[str, Any]], columns: list[str]) -> dict[Key, int]:
    """Insert the users whose key is not stored yet; the ids of those inserted, by key."""
    if not users:
        return {}
    cursor.execute(_INSERT_USERS.format(key=_key_list(columns)), (json.dumps(users),))
    return {tuple(row[1:]): row[0] for row in cursor.fetchall()}


def _existing_ids(cursor: Any, keys: list[Key], columns: list[str]) -> dict[Key, int]:
    """The ids of the users already stored under ``keys`` (one query per :data:`INSERT_CHUNK` keys)."""
    existing: dict[Key, int] = {}
    for start in range(0, len(keys), INSERT_CHUNK):
        conditions: list[str] = []
        params: list[Any] = []
        for key in keys[start : start + INSERT_CHUNK]:
            parts = []
            for column, value in zip(columns, key, strict=True):
                # "=" on each column (not IS NOT DISTINCT FROM) lets PostgreSQL use the unique index.
                parts.append(f'"{column}" IS NULL' if value is None else f'"{column}" = %s')
                params.extend(() if value is None else (value,))
            conditions.append(f"({' AND '.join(parts)})")
        statement = f"SELECT id, {_key_list(columns)} FROM users WHERE {' OR '.join(conditions)}"  # noqa: S608
        cursor.execute(statement, params)
        existing.update((tuple(row[1:]), row[0]) for row in cursor.fetchall())
    return existing


def _upsert_outcomes(cursor: Any, rows: list[SubmissionRow]) -> None:
    """Write the outcomes; an existing row is replaced only when it is ``failed`` (a replay)."""
    if rows:
        now = datetime.datetime.now(datetime.UTC)
        cursor.execute(_UPSERT_OUTCOMES, {"rows": json.dumps(rows), "now": now})


def _persist(results: list[ValidatedRecord], header: list[str] | None = None) -> dict[str, int]:
    """Persist a chunk in one transaction (the decisions are :mod:`pipeline.persist_plan`'s).

    Round trips: BEGIN, one SELECT of the outcomes already written, one INSERT of the users, a SELECT of
    the ids of keys stored before (only when some are, one per :data:`INSERT_CHUNK` keys), one upsert of
    the outcomes, the invalid records kept and their CSV header (only when some are), COMMIT.
    """
    columns = unique_columns(settings.UNIQUE_FIELDS)
    with _database_work():
        cursor = database.cursor()
        chunk = persist_plan.plan(results, _done_ids(cursor, [r["id"] for r in results]), columns)
        stored_ids = _insert_users(cursor, chunk.users, columns)
        missing = chunk.missing(stored_ids)
        existing = _existing_ids(cursor, missing, columns) if missing else {}
        rows, counts = persist_plan.outcomes(chunk, stored_ids, existing)
        _upsert_outcomes(cursor, rows)
        kept = invalid_records.kept_rows(chunk.todo, rows)
        invalid_records.keep(cursor, kept, header or invalid_records.header_of(results))
    return counts


@dramatiq.actor(
    actor_name=REGISTER_BATCH, queue_name=QUEUE, max_retries=settings.MAX_RETRIES, retry_when=_retry_transient
)
def register_batch(batch_id: str, count: int, source: str | None = None) -> None:
    """Record a batch's size once all of its chunks are in Kafka (the batch report needs it)."""
    with _database_work():
        Batch.insert(id=batch_id, count=count, source=source).on_conflict_ignore().execute()
    logger.info("registered batch=%s count=%d", batch_id, count)
    _prune_invalid_records()


def _prune_invalid_records() -> None:
    """Delete the kept invalid records past ``INVALID_RECORD_RETENTION_S`` (once per batch registered).

    Best effort: a failure is logged and left to the next batch, never a reason to redo the registration.
    """
    try:
        with database.connection_context(), _PEEWEE_ERRORS:
            invalid_records.prune(database, settings.INVALID_RECORD_RETENTION_S)
    except Exception as error:
        if isinstance(error, TRANSIENT):
            reset_connection()
        logger.warning("could not delete expired invalid records: %s: %s", type(error).__name__, error)


def _submission_records(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The submissions a failed message was carrying, whichever actor of the pipeline it was for."""
    args = message.get("args") or []
    actor = message.get("actor_name")
    if actor == PROCESS_USER and args:
        return [{"id": args[0]["id"], "row": None, "batch_id": None}]
    if actor == PROCESS_USERS and args:
        return [
            {"id": r["id"], "row": r.get("row"), "batch_id": args[0].get("batch_id")}
            for r in args[0]["records"]
        ]
    if actor == VALIDATE_USERS and args:
        return [
            {"id": r["id"], "row": r.get("row"), "batch_id": args[1] if len(args) > 1 else None}
            for r in args[0]
        ]
    if actor == PERSIST_USERS and args:
        return [{"id": r["id"], "row": r.get("row"), "batch_id": r.get("batch_id")} for r in args[0]]
    return []


#: Retries of ``record_failure`` itself: the database it writes to is often what made the message fail.
RECORD_FAILURE_RETRIES = 20


def _retry_record_failure(retries: int, exception: Exception) -> bool:
    """``retry_when`` of ``record_failure``: transient errors, with more patience than the other actors."""
    patience = max(settings.MAX_RETRIES, RECORD_FAILURE_RETRIES)
    return isinstance(exception, TRANSIENT) and retries < patience


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*[a-z]\w*)(?::\s?(.*))?$")


def _reason(message: dict[str, Any]) -> str:
    """``"<exception class>: <message>"`` from the traceback ``Retries`` stored in the message's options.

    The exception's line is the last one at column 0 that names a class (``psycopg2.OperationalError: ...``);
    the indented lines after it belong to its message (psycopg2 and PL/pgSQL write several lines).
    """
    traceback = message.get("options", {}).get("traceback") or ""
    lines = traceback.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index])
        if match and not lines[index].startswith(("Traceback", "During handling")):
            rest = [line.strip() for line in lines[index + 1 :] if line.strip()]
            text = " ".join([match.group(2) or "", *rest]).strip()
            return f"{match.group(1)}: {text}"[:1000] if text else match.group(1)
    return "unknown error: the retries ran out"


@dramatiq.actor(actor_name=RECORD_FAILURE, queue_name=QUEUE, retry_when=_retry_record_failure)
def record_failure(message: dict[str, Any], retries: dict[str, Any] | None = None) -> None:
    """``on_retry_exhausted`` callback: mark the message's submissions ``failed`` with the reason.

    Called with the failed message (``Message.asdict()``) and ``{"retries", "max_retries"}``.  A
    submission that already has an outcome keeps it.  Replaying the failed message later (``python -m
    pipeline dlq replay``) replaces ``failed`` with the real outcome.
    """
    reason = _reason(message)
    records = _submission_records(message)
    if not records:
        return
    errors: list[FieldError] = [{"field": "_system", "message": reason}]
    rows = [submission_row(r, Status.FAILED, errors=errors) for r in records]
    with _database_work():
        for start in range(0, len(rows), INSERT_CHUNK):
            # created_at and updated_at: the model's defaults
            Submission.insert_many(rows[start : start + INSERT_CHUNK]).on_conflict_ignore().execute()
    logger.warning("failed %d submission(s) of %s: %s", len(rows), message.get("actor_name"), reason)
