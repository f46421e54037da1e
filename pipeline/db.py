"""The one place that builds the database connection.

``database`` is a pooled PostgreSQL connection from Peewee's ``playhouse``; Peewee keeps one connection per
thread, so Dramatiq's worker threads and Starlette's thread pool can share it.  ``DATABASE_URL`` may use the
``postgres://`` form that Heroku hands out.
"""

from __future__ import annotations

import contextlib
from typing import Any

from playhouse.db_url import parse
from playhouse.pool import PooledPostgresqlDatabase

from pipeline import settings

#: Most connections a process keeps open (a worker process needs one per thread).
MAX_CONNECTIONS = 32
#: Seconds after which an idle pooled connection is closed instead of reused.
STALE_TIMEOUT_S = 300


def _parameters(url: str) -> dict[str, Any]:
    parameters = parse(url)
    # Fail fast while the server is down, so that the caller's retry (Dramatiq's Retries, a 503) takes over.
    parameters.setdefault("connect_timeout", 5)
    return parameters


database = PooledPostgresqlDatabase(
    None, max_connections=MAX_CONNECTIONS, stale_timeout=STALE_TIMEOUT_S, timeout=10, autoconnect=True
)
database.init(**_parameters(settings.DATABASE_URL))


def configure(url: str) -> None:
    """Point ``database`` at another PostgreSQL URL (tests, tools), dropping every pooled connection."""
    database.close_all()
    database.init(**_parameters(url))


def reset_connection() -> None:
    """Drop this thread's connection (after the server went away) so that the next query reconnects."""
    try:
        if not database.is_closed():
            database.close()
    except Exception:  # a dead connection may fail to close; then drop it without returning it
        with contextlib.suppress(Exception):
            database.manual_close()
