"""Numbered schema migrations (Peewee's ``playhouse.migrate``), applied by ``python -m pipeline migrate``.

Applied migrations are recorded in ``schema_migrations``; a PostgreSQL advisory lock makes two processes
that migrate at once (two ``release`` phases, a test and a worker) take turns.  After the numbered
migrations, the unique index of ``users`` is made to match ``settings.UNIQUE_FIELDS``: changing that
variable and migrating again rebuilds the index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from playhouse.migrate import PostgresqlMigrator

from pipeline import settings
from pipeline.db import database
from pipeline.models import Batch, Submission, User, unique_columns

logger = logging.getLogger(__name__)

#: Key of the advisory lock held while migrating (any constant of our own).
_LOCK_KEY = 7_246_310_001
UNIQUE_INDEX = "users_unique_key"


def _0001_initial(migrator: PostgresqlMigrator) -> None:
    database.create_tables([User, Submission, Batch], safe=True)


def _0002_users_name_index(migrator: PostgresqlMigrator) -> None:
    # GET /api/users?name= filters on lower(name).
    database.execute_sql("CREATE INDEX IF NOT EXISTS users_lower_name ON users (lower(name))")


#: Every migration, in order; append only.
MIGRATIONS: list[tuple[str, Callable[[PostgresqlMigrator], None]]] = [
    ("0001_initial", _0001_initial),
    ("0002_users_name_index", _0002_users_name_index),
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
