"""Numbered schema migrations (Peewee's ``playhouse.migrate``), applied by ``python -m pipeline migrate``.

Applied migrations are recorded in ``schema_migrations``; a PostgreSQL advisory lock makes two processes
that migrate at once (two ``release`` phases, a test and a worker) take turns.  After the numbered
migrations, the unique index of ``users`` is made to match ``settings.UNIQUE_FIELDS``: changing that
variable and migrating again rebuilds the index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from peewee import SQL
from playhouse.migrate import PostgresqlMigrator
from playhouse.migrate import migrate as run_operations
from playhouse.postgres_ext import DateTimeTZField

from pipeline import settings
from pipeline.db import database
from pipeline.models import unique_columns

logger = logging.getLogger(__name__)

#: Key of the advisory lock held while migrating (any constant of our own).
_LOCK_KEY = 7_246_310_001
UNIQUE_INDEX = "users_unique_key"


def _0001_initial(migrator: PostgresqlMigrator) -> None:
    # Frozen: the tables as the models first were, so that later changes to the models never change
    # what this step does (later migrations alter them).
    for statement in (
        "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, age integer NOT NULL, email text, "
        "phone_number text, address jsonb, additional_info jsonb NOT NULL, created_at timestamp NOT NULL)",
        "CREATE TABLE submissions (id varchar(128) PRIMARY KEY, batch_id varchar(128), row integer, "
        "status varchar(16) NOT NULL, errors jsonb NOT NULL, "
        "user_id bigint REFERENCES users (id) ON DELETE SET NULL, "
        "created_at timestamp NOT NULL, updated_at timestamp NOT NULL)",
        "CREATE INDEX submission_batch_id_status_row ON submissions (batch_id, status, row)",
        "CREATE INDEX submission_user_id ON submissions (user_id)",
        "CREATE TABLE batches (id varchar(128) PRIMARY KEY, count integer NOT NULL, source varchar(16), "
        "created_at timestamp NOT NULL)",
    ):
        database.execute_sql(statement)


def _0002_users_name_index(migrator: PostgresqlMigrator) -> None:
    # GET /api/users?name= filters on lower(name).
    database.execute_sql("CREATE INDEX IF NOT EXISTS users_lower_name ON users (lower(name))")


def _0003_timestamptz_and_defaults(migrator: PostgresqlMigrator) -> None:
    # The times become timestamptz (Peewee wrote UTC wall-clock times into the old columns, hence AT TIME
    # ZONE 'UTC'), and the columns get the defaults the contract states, for writers other than Peewee.
    def to_timestamptz(table: str, column: str) -> Any:
        cast = SQL(f"{column} AT TIME ZONE 'UTC'")
        return migrator.alter_column_type(table, column, DateTimeTZField(), cast=cast)

    run_operations(
        to_timestamptz("users", "created_at"),
        migrator.add_column_default("users", "created_at", "now()"),
        migrator.add_column_default("users", "additional_info", "'{}'"),
        to_timestamptz("submissions", "created_at"),
        to_timestamptz("submissions", "updated_at"),
        migrator.add_column_default("submissions", "created_at", "now()"),
        migrator.add_column_default("submissions", "updated_at", "now()"),
        migrator.add_column_default("submissions", "errors", "'[]'"),
        to_timestamptz("batches", "created_at"),
        migrator.add_column_default("batches", "created_at", "now()"),
    )


def _0004_submission_status_check(migrator: PostgresqlMigrator) -> None:
    # submissions.status admits only the outcomes of contract.OUTCOMES.  Frozen, like every migration: a
    # later status comes with a migration of its own that replaces this constraint.
    database.execute_sql(
        "ALTER TABLE submissions ADD CONSTRAINT submissions_status_check "
        "CHECK (status IN ('stored', 'duplicate', 'invalid', 'failed'))"
    )


def _0005_idempotency_keys(migrator: PostgresqlMigrator) -> None:
    # The Idempotency-Keys of keyed posts (web/idempotency.py).  Only the web writes it.  The answer is
    # json, not jsonb, so that a replay gives the keys in their order; created_at is indexed for the
    # deletion of rows past the retention window.
    for statement in (
        "CREATE TABLE idempotency_keys (scope varchar(64) NOT NULL, key varchar(255) NOT NULL, "
        "fingerprint varchar(64) NOT NULL, "
        "kind varchar(8) NOT NULL "
        "CONSTRAINT idempotency_keys_kind_check CHECK (kind IN ('single', 'batch')), "
        "submission_id varchar(128) NOT NULL, "
        "state varchar(16) NOT NULL "
        "CONSTRAINT idempotency_keys_state_check CHECK (state IN ('in_flight', 'accepted', 'unsure')), "
        "answer json, locked_until timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (scope, key))",
        "CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at)",
    ):
        database.execute_sql(statement)


#: Rows per counter: each writer adds to the row of its connection's slot (``mod(pg_backend_pid(), 8)``), so
#: that workers persisting chunks of one batch at once do not queue on one row.
_COUNTER_SLOTS = 8
#: Minutes of ``outcome_minutes``' ring: two hours, so that the last hour is always whole.
_RING_MINUTES = 120
_STATUSES = ("stored", "duplicate", "invalid", "failed")

# What each trigger adds: (batch_id, status, at, sign) per submission whose outcome appears, changes or
# goes.  ``at`` (the outcome's time) is NULL for what goes: a deletion is no throughput.
_DELTAS = {
    "INSERT": "SELECT batch_id, status, updated_at AS at, 1 AS sign FROM new_rows",
    "UPDATE": (
        "SELECT n.batch_id, n.status, n.updated_at AS at, 1 AS sign FROM new_rows n JOIN old_rows o "
        "ON o.id = n.id WHERE o.status IS DISTINCT FROM n.status "
        "UNION ALL SELECT o.batch_id, o.status, NULL, -1 FROM old_rows o JOIN new_rows n ON o.id = n.id "
        "WHERE o.status IS DISTINCT FROM n.status"
    ),
    "DELETE": "SELECT batch_id, status, NULL::timestamptz AS at, -1 AS sign FROM old_rows",
}


def _filtered_counts() -> str:
    return ", ".join(f"count(*) FILTER (WHERE status = '{s}')" for s in _STATUSES)


def _counter_function(operation: str) -> str:
    sums = ", ".join(f"coalesce(sum(sign) FILTER (WHERE status = '{s}'), 0)" for s in _STATUSES)
    counts = _filtered_counts()
    added = ", ".join(f"{s} = c.{s} + EXCLUDED.{s}" for s in _STATUSES)
    ring = ", ".join(
        f"{s} = CASE WHEN EXCLUDED.minute = c.minute THEN c.{s} + EXCLUDED.{s} "
        f"WHEN EXCLUDED.minute > c.minute THEN EXCLUDED.{s} ELSE c.{s} END"
        for s in _STATUSES
    )
    columns = ", ".join(_STATUSES)
    # Rows are upserted in key order, so that two transactions never wait for each other's rows in a
    # cycle.  Only outcomes inside the ring's window count for the minutes: a ring position then appears
    # once per statement.
    return f"""
CREATE FUNCTION submissions_count_{operation.lower()}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  WITH d AS ({_DELTAS[operation]})
  INSERT INTO batch_outcomes AS c (batch_id, slot, {columns}, first_at, last_at)
  SELECT batch_id, mod(pg_backend_pid(), {_COUNTER_SLOTS}), {sums}, min(at), max(at)
  FROM d WHERE batch_id IS NOT NULL GROUP BY batch_id ORDER BY batch_id
  ON CONFLICT (batch_id, slot) DO UPDATE SET {added},
    first_at = least(c.first_at, EXCLUDED.first_at), last_at = greatest(c.last_at, EXCLUDED.last_at);
  WITH d AS ({_DELTAS[operation]}), m AS (
    SELECT date_trunc('minute', at) AS minute, status FROM d
    WHERE sign > 0 AND at >= date_trunc('minute', now()) - interval '{_RING_MINUTES - 2} minutes'
      AND at < date_trunc('minute', now()) + interval '2 minutes')
  INSERT INTO outcome_minutes AS c (position, slot, minute, {columns})
  SELECT mod(floor(extract(epoch FROM minute) / 60)::bigint, {_RING_MINUTES})::smallint,
    mod(pg_backend_pid(), {_COUNTER_SLOTS}), minute, {counts}
  FROM m GROUP BY minute ORDER BY 1
  ON CONFLICT (position, slot) DO UPDATE SET {ring}, minute = greatest(c.minute, EXCLUDED.minute);
  RETURN NULL;
END $$"""  # noqa: S608 (names and numbers of this module, no input)


def _0006_outcome_counters(migrator: PostgresqlMigrator) -> None:
    # Counters of outcomes kept by triggers on submissions, so that the list of batches and the
    # throughput report read a few rows whatever the size of a batch (a COUNT over a batch of a million
    # submissions reads a million index entries at every refresh): per batch (batch_outcomes) and per
    # minute of the last two hours (outcome_minutes, a ring).  Triggers, not the actors, so that every
    # writer (persist, record_failure, a replay, a deletion) keeps them right.  TRUNCATE of submissions
    # empties them.  batches gets the index of its newest-first list.
    counters = " ".join(f"{s} bigint NOT NULL DEFAULT 0," for s in _STATUSES)
    statements = [
        f"CREATE TABLE batch_outcomes (batch_id varchar(128) NOT NULL, slot smallint NOT NULL, {counters} "
        "first_at timestamptz, last_at timestamptz, PRIMARY KEY (batch_id, slot))",
        f"CREATE TABLE outcome_minutes (position smallint NOT NULL, slot smallint NOT NULL, "
        f"minute timestamptz NOT NULL, {counters} PRIMARY KEY (position, slot))",
        "CREATE INDEX batches_created_at_id ON batches (created_at, id)",
        *(_counter_function(operation) for operation in _DELTAS),
        "CREATE FUNCTION submissions_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN DELETE FROM batch_outcomes; DELETE FROM outcome_minutes; RETURN NULL; END $$",
        "CREATE TRIGGER submissions_count_insert AFTER INSERT ON submissions REFERENCING NEW TABLE AS "
        "new_rows FOR EACH STATEMENT EXECUTE FUNCTION submissions_count_insert()",
        "CREATE TRIGGER submissions_count_update AFTER UPDATE ON submissions REFERENCING OLD TABLE AS "
        "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION submissions_count_update()",
        "CREATE TRIGGER submissions_count_delete AFTER DELETE ON submissions REFERENCING OLD TABLE AS "
        "old_rows FOR EACH STATEMENT EXECUTE FUNCTION submissions_count_delete()",
        "CREATE TRIGGER submissions_count_truncate AFTER TRUNCATE ON submissions "
        "FOR EACH STATEMENT EXECUTE FUNCTION submissions_count_truncate()",
        # What was written before the triggers (the lock CREATE TRIGGER takes holds writers off meanwhile).
        f"INSERT INTO batch_outcomes (batch_id, slot, {', '.join(_STATUSES)}, first_at, last_at) "  # noqa: S608
        f"SELECT batch_id, 0, {_filtered_counts()}, min(updated_at), max(updated_at) FROM submissions "
        "WHERE batch_id IS NOT NULL GROUP BY batch_id",
        f"INSERT INTO outcome_minutes (position, slot, minute, {', '.join(_STATUSES)}) "  # noqa: S608
        f"SELECT mod(floor(extract(epoch FROM minute) / 60)::bigint, {_RING_MINUTES})::smallint, 0, minute, "
        f"{_filtered_counts()} FROM (SELECT date_trunc('minute', updated_at) AS minute, status "
        "FROM submissions WHERE updated_at >= date_trunc('minute', now()) - interval "
        f"'{_RING_MINUTES - 2} minutes' AND updated_at < date_trunc('minute', now()) + interval '2 minutes') "
        "AS m GROUP BY minute",
    ]
    for statement in statements:
        database.execute_sql(statement)


def _0007_invalid_records(migrator: PostgresqlMigrator) -> None:
    # The invalid records of batches as their clients sent them, and the CSV header of each batch that has
    # some (pipeline/invalid_records.py): personal data, deleted INVALID_RECORD_RETENTION_S after they were
    # written, hence the created_at indexes; batch_id is indexed for a batch's header to go with its last
    # record.  The invalid-rows file reads a record by its submission's id (the primary key).
    for statement in (
        "CREATE TABLE invalid_records (id varchar(128) PRIMARY KEY, batch_id varchar(128) NOT NULL, "
        "row integer NOT NULL, data jsonb, raw jsonb, created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX invalid_records_created_at ON invalid_records (created_at)",
        "CREATE INDEX invalid_records_batch_id ON invalid_records (batch_id)",
        "CREATE TABLE invalid_record_headers (batch_id varchar(128) PRIMARY KEY, header jsonb NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX invalid_record_headers_created_at ON invalid_record_headers (created_at)",
    ):
        database.execute_sql(statement)


def _0008_batches_in_flight(migrator: PostgresqlMigrator) -> None:
    # A batch is registered (batches) when a worker takes its register_batch, sent after its last chunk:
    # with a lag, that is near the end of a large batch.  Until then its id is in batches_in_flight, noted
    # by a trigger when its first outcomes are written, so that the list of batches shows it while it runs.
    # Registering it deletes the row; a row left by a registration that raced the note is never listed
    # (the list skips registered ids).  TRUNCATE of submissions empties it, as it does the counters.
    for statement in (
        "CREATE TABLE batches_in_flight (batch_id varchar(128) PRIMARY KEY, first_at timestamptz NOT NULL)",
        "CREATE INDEX batches_in_flight_first_at ON batches_in_flight (first_at, batch_id)",
        "CREATE FUNCTION submissions_note_in_flight() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO batches_in_flight (batch_id, first_at) SELECT n.batch_id, min(n.updated_at) "
        "FROM new_rows n WHERE n.batch_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = n.batch_id) "
        "GROUP BY n.batch_id ORDER BY n.batch_id ON CONFLICT DO NOTHING; RETURN NULL; END $$",
        "CREATE TRIGGER submissions_note_in_flight AFTER INSERT ON submissions REFERENCING NEW TABLE AS "
        "new_rows FOR EACH STATEMENT EXECUTE FUNCTION submissions_note_in_flight()",
        "CREATE FUNCTION batches_registered() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM batches_in_flight WHERE batch_id = NEW.id; RETURN NULL; END $$",
        "CREATE TRIGGER batches_registered AFTER INSERT ON batches FOR EACH ROW "
        "EXECUTE FUNCTION batches_registered()",
        "CREATE FUNCTION submissions_forget_in_flight() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN DELETE FROM batches_in_flight; RETURN NULL; END $$",
        "CREATE TRIGGER submissions_forget_in_flight AFTER TRUNCATE ON submissions "
        "FOR EACH STATEMENT EXECUTE FUNCTION submissions_forget_in_flight()",
        "INSERT INTO batches_in_flight (batch_id, first_at) SELECT o.batch_id, min(o.first_at) "
        "FROM batch_outcomes o WHERE o.first_at IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = o.batch_id) GROUP BY o.batch_id",
    ):
        database.execute_sql(statement)


#: Every migration, in order; append only.
MIGRATIONS: list[tuple[str, Callable[[PostgresqlMigrator], None]]] = [
    ("0001_initial", _0001_initial),
    ("0002_users_name_index", _0002_users_name_index),
    ("0003_timestamptz_and_defaults", _0003_timestamptz_and_defaults),
    ("0004_submission_status_check", _0004_submission_status_check),
    ("0005_idempotency_keys", _0005_idempotency_keys),
    ("0006_outcome_counters", _0006_outcome_counters),
    ("0007_invalid_records", _0007_invalid_records),
    ("0008_batches_in_flight", _0008_batches_in_flight),
]


def _current_unique_columns() -> list[str] | None:
    row = database.execute_sql(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s",
        (UNIQUE_INDEX,),
    ).fetchone()
    if row is None:
        return None
    inside = row[0].split("(", 1)[1].rsplit(")", 1)[0]
    return [part.strip().strip('"') for part in inside.split(",")]


def ensure_unique_index(fields: list[str]) -> None:
    """Make the unique index of ``users`` cover exactly ``fields`` (NULLs count as equal)."""
    wanted = unique_columns(fields)
    if _current_unique_columns() == wanted:
        return
    logger.info("Unique key of users becomes (%s)", ", ".join(wanted))
    database.execute_sql(f"DROP INDEX IF EXISTS {UNIQUE_INDEX}")
    columns = ", ".join(f'"{c}"' for c in wanted)
    database.execute_sql(f"CREATE UNIQUE INDEX {UNIQUE_INDEX} ON users ({columns}) NULLS NOT DISTINCT")


def migrate(unique_fields: list[str] | None = None) -> list[str]:
    """Apply what is missing; returns the names of the migrations applied now.  Safe to run concurrently."""
    applied_now = []
    with database.connection_context(), database.atomic():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        database.execute_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in database.execute_sql("SELECT name FROM schema_migrations").fetchall()}
        migrator = PostgresqlMigrator(database)
        for name, step in MIGRATIONS:
            if name in done:
                continue
            step(migrator)
            database.execute_sql("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
        ensure_unique_index(unique_fields or settings.UNIQUE_FIELDS)
    return applied_now
