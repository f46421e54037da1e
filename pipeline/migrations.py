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


#: Every migration, in order; append only.
MIGRATIONS: list[tuple[str, Callable[[PostgresqlMigrator], None]]] = [
    ("0001_initial", _0001_initial),
    ("0002_users_name_index", _0002_users_name_index),
    ("0003_timestamptz_and_defaults", _0003_timestamptz_and_defaults),
    ("0004_submission_status_check", _0004_submission_status_check),
    ("0005_idempotency_keys", _0005_idempotency_keys),
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
