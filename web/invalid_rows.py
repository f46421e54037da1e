"""A batch's invalid records as a file to correct and post again.

``routes`` is added to the application by ``web.app``:

=======  ==================================  ==========================================================
GET      /api/batches/{id}/invalid.csv        a CSV batch's invalid rows, in the uploader's columns
GET      /api/batches/{id}/invalid.ndjson     a JSON or NDJSON batch's invalid records, one per line
=======  ==================================  ==========================================================

Each record comes as its client sent it (kept by the worker for ``INVALID_RECORD_RETENTION_S``,
``pipeline/invalid_records.py``) with two fields in front: ``_row`` (its row in the batch) and ``_errors``
(every error; in CSV ``field: message`` joined by ``"; "``).  Posted again to ``POST /api/users`` as it is,
the file reads as those records (:mod:`web.invalid_file`: the markers are dropped, and the quote that
defuses a formula cell is taken off again).  A record no longer kept comes with its row and errors only.

The file is streamed: the rows are read by keyset pages of :data:`PAGE_ROWS` (``row > last row``, on the
``submissions (batch_id, status, row)`` index), each page written out before the next is read, so that a
batch of a million invalid rows never sits in memory.  The first page is read before the answer starts, so
an unknown batch is a ``404`` and an unreachable database a ``503``; a database lost midway cuts the
download short (the connection is closed, the client sees an incomplete body).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pipeline.contract import Status
from web import invalid_file
from web.errors import InvalidBody, NotFound
from web.ids import BATCH
from web.parsing import parse_csv_header
from web.reads import run_database_work, run_query

logger = logging.getLogger(__name__)

#: Invalid rows read (and written out) per query.
PAGE_ROWS = 1000
#: The batch forms each file serves (``batches.source``; a batch registered without one is served both).
_FORMS = {"csv": ("csv",), "ndjson": ("json", "ndjson")}
_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}

# One keyset page: the batch's invalid outcomes after a row, each with its record while it is kept.
_PAGE = (
    "SELECT s.row, s.errors, r.data, r.raw FROM submissions s "
    "LEFT JOIN invalid_records r ON r.id = s.id AND r.created_at >= now() - make_interval(secs => %s) "
    "WHERE s.batch_id = %s AND s.status = %s AND s.row > %s ORDER BY s.row LIMIT %s"
)
_BATCH = (
    "SELECT b.source, h.header FROM batches b LEFT JOIN invalid_record_headers h ON h.batch_id = b.id "
    "WHERE b.id = %s"
)

#: A page's rows: (row, errors, data, raw).
Rows = list[tuple[int, list[dict[str, Any]], Any, Any]]


def _database() -> Any:
    from pipeline.db import database  # on first use, as web/reads.py: the web starts without it

    return database


def fetch_page(batch_id: str, after_row: int, limit: int, retention_s: int) -> Rows:
    """The next keyset page of a batch's invalid rows: at most ``limit`` rows after ``after_row``."""
    cursor = _database().execute_sql(_PAGE, (retention_s, batch_id, str(Status.INVALID), after_row, limit))
    return [tuple(row) for row in cursor.fetchall()]  # type: ignore[misc]


@dataclass
class _Batch:
    source: str | None
    header: list[str]


def _find_batch(batch_id: str) -> _Batch | None:
    row = _database().execute_sql(_BATCH, (batch_id,)).fetchone()
    return None if row is None else _Batch(row[0], list(row[1] or []))


def _errors_text(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e.get('field', '')}: {e.get('message', '')}" for e in errors or [])


class _CsvRows:
    """Writes the rows of an invalid-rows CSV: the markers, then the uploader's columns, cells escaped."""

    def __init__(self, header: list[str]) -> None:
        self.header = header
        try:
            self.paths = parse_csv_header(header) if header else []
        except InvalidBody:  # not a header the upload would take; the cells then cannot be placed
            self.paths = []

    def first(self) -> str:
        return self._text([[invalid_file.ROW, invalid_file.ERRORS, *self.header]])

    def page(self, rows: Rows) -> str:
        return self._text(
            [[str(row), _errors_text(errors), *self._cells(data, raw)] for row, errors, data, raw in rows]
        )

    def _cells(self, data: Any, raw: Any) -> list[str]:
        if isinstance(raw, list):
            return [cell if isinstance(cell, str) else json.dumps(cell) for cell in raw]
        if not isinstance(data, dict) or not self.paths:
            return []
        return [_lookup(data, path) for path in self.paths]

    @staticmethod
    def _text(rows: list[list[str]]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerows([[invalid_file.escape_cell(cell) for cell in row] for row in rows])
        return buffer.getvalue()


def _lookup(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """The cell of a dotted column in a record built from it (an absent field is an empty cell)."""
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return ""
        value = value[key]
    return value if isinstance(value, str) else json.dumps(value)


def _ndjson_page(rows: Rows) -> str:
    lines = []
    for row, errors, data, raw in rows:
        record: dict[str, Any] = {invalid_file.ROW: row, invalid_file.ERRORS: errors or []}
        if isinstance(data, dict):
            markers = (invalid_file.ROW, invalid_file.ERRORS)
            record.update((key, value) for key, value in data.items() if key not in markers)
        elif raw is not None:
            record[invalid_file.RAW] = raw
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def _check_form(batch_id: str, batch: _Batch | None, form: str) -> None:
    if batch is None:
        raise NotFound("no batch has this id yet (a batch is known once all of its records are queued)")
    if batch.source is not None and batch.source not in _FORMS[form]:
        other = "csv" if batch.source == "csv" else "ndjson"
        raise NotFound(
            f"the batch was uploaded as {batch.source}: its invalid rows are at "
            f"/api/batches/{batch_id}/invalid.{other}",
            code="other_form",
        )


def _export(form: str) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        batch_id = request.path_params["id"]
        if not request.app.state.signer.verify(batch_id, BATCH):
            raise NotFound("no batch has this id")
        retention_s = int(request.app.state.settings.invalid_record_retention_s)

        def first() -> tuple[_Batch | None, Rows]:
            batch = _find_batch(batch_id)
            return batch, ([] if batch is None else fetch_page(batch_id, 0, PAGE_ROWS, retention_s))

        batch, rows = await run_query(request, first)
        _check_form(batch_id, batch, form)
        assert batch is not None
        retry_after = int(request.app.state.settings.retry_after_seconds)

        pending = [rows]  # handed over, not held: one page in memory at a time

        async def body() -> AsyncIterator[str]:
            page = pending.pop()
            writer = _CsvRows(batch.header) if form == "csv" else None
            if writer is not None:
                yield writer.first()
            while page:
                yield writer.page(page) if writer is not None else _ndjson_page(page)
                if len(page) < PAGE_ROWS:
                    return
                last = page[-1][0]
                page = await run_database_work(
                    functools.partial(fetch_page, batch_id, last, PAGE_ROWS, retention_s),
                    where=request.url.path,
                    retry_after=retry_after,
                )

        headers = {
            "Content-Disposition": f'attachment; filename="{batch_id}-invalid.{form}"',
            "Cache-Control": "no-store",  # personal data: not for shared caches
        }
        return StreamingResponse(body(), media_type=_MEDIA_TYPES[form], headers=headers)

    endpoint.__name__ = f"invalid_{form}"
    endpoint.__doc__ = f"``GET /api/batches/{{id}}/invalid.{form}``: the batch's invalid records as a file."
    return endpoint


#: The two files, added to the application's routes.
routes = [
    Route("/api/batches/{id}/invalid.csv", _export("csv"), methods=["GET"]),
    Route("/api/batches/{id}/invalid.ndjson", _export("ndjson"), methods=["GET"]),
]
