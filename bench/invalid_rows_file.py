"""The invalid-rows file of a large batch: how fast it streams, and whether its memory grows with it.

A database of its own is created on ``DATABASE_URL``'s server (and dropped at the end); for each size N a
registered CSV batch of N invalid rows with their kept records is written with ``generate_series``, then
``GET /api/batches/<id>/invalid.csv`` is called on the ASGI app directly (no HTTP client buffering the
body), the body counted and thrown away.  With ``TRACE=1`` Python's allocation peak (``tracemalloc``) is
reported too (it slows the run several times).

    PYTHONPATH=. .venv/bin/python -m bench.invalid_rows_file 20000 200000
    TRACE=1 PYTHONPATH=. .venv/bin/python -m bench.invalid_rows_file 20000 200000
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg2

from pipeline import db, migrations, settings

_ERRORS = '[{"field": "age", "message": "must be an integer"}]'
_HEADER = '["name.firstName", "name.lastName", "age", "phoneNumber"]'


def _seed(batch_id: str, rows: int) -> None:
    run = db.database.execute_sql
    run("INSERT INTO batches (id, count, source) VALUES (%s, %s, 'csv')", (batch_id, rows))
    run(
        "INSERT INTO submissions (id, batch_id, row, status, errors) "
        "SELECT %s || '.' || g, %s, g, 'invalid', %s FROM generate_series(1, %s) g",
        (batch_id, batch_id, _ERRORS, rows),
    )
    run(
        "INSERT INTO invalid_records (id, batch_id, row, data) "
        "SELECT %s || '.' || g, %s, g, jsonb_build_object("
        "'name', jsonb_build_object('firstName', 'First' || g, 'lastName', 'Last'), 'age', 'x', "
        "'phoneNumber', '+1 415 555 ' || g) FROM generate_series(1, %s) g",
        (batch_id, batch_id, rows),
    )
    run("INSERT INTO invalid_record_headers (batch_id, header) VALUES (%s, %s)", (batch_id, _HEADER))
    run("ANALYZE")


def _download(app: Any, path: str) -> tuple[int, int]:
    """Call the app for ``path``; returns the status and the bytes of the body."""
    got = {"status": 0, "bytes": 0}
    asked: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep(3600)  # the client stays until the body ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got["status"] = message["status"]
        elif message["type"] == "http.response.body":
            got["bytes"] += len(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }

    async def call() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    anyio.run(call)
    return got["status"], got["bytes"]


def main(sizes: list[int]) -> None:
    """Create the database, measure each size, drop the database."""
    from tests.web_support import make_client
    from web.ids import IdSigner

    trace = bool(os.environ.get("TRACE"))
    name = f"bup_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(settings.DATABASE_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        db.configure(urlunsplit(urlsplit(settings.DATABASE_URL)._replace(path=f"/{name}")))
        migrations.migrate(settings.UNIQUE_FIELDS)
        app = make_client().app
        signer = IdSigner("test-secret")
        for rows in sizes:
            batch_id = signer.new_batch_id()
            with db.database.connection_context():
                _seed(batch_id, rows)
            if trace:
                tracemalloc.start()
            start = time.perf_counter()
            status, size = _download(app, f"/api/batches/{batch_id}/invalid.csv")
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 1e6 if trace else float("nan")
            tracemalloc.stop()
            print(
                f"rows={rows} status={status} bytes={size} seconds={seconds:.2f} "
                f"rows/s={rows / seconds:,.0f} allocation_peak_mb={peak:.1f}"
            )
    finally:
        db.database.close_all()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [20_000, 200_000])
