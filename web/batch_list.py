"""``GET /api/batches``: the recent batches, newest first, each with its progress.

A batch is registered (``batches``) when a worker takes its ``register_batch``, sent after its last chunk;
before that, from its first outcome on, it is in ``batches_in_flight`` (migration
``0008_batches_in_flight``) and is listed with its count unknown (``null``) and the time of its first
outcome.  Its outcomes are read from ``batch_outcomes``, the counters that triggers on ``submissions`` keep
(migration ``0006_outcome_counters``): a page of ``limit`` batches costs one query that reads at most
``limit`` rows of each table by the indexes on their times, and at most 8 counter rows per batch, whatever
the size of the batches (``docs/operating.md`` gives the figure for a batch of a million records).

Pages are by keyset: ``cursor`` is the opaque ``next_cursor`` of the previous page (the creation time and
id of its last batch, base64url); a cursor the API did not make is ``400 invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.contract import OUTCOMES, Status
from web.errors import InvalidCursor
from web.reads import int_parameter, run_query

#: Default and largest ``limit`` of ``GET /api/batches``.
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: Longest cursor accepted, in characters (a cursor the API makes is about 70).
MAX_CURSOR_LENGTH = 200
#: What a batch id in a cursor may be made of (the column is ``varchar(128)``).
_BATCH_ID = re.compile(r"[0-9A-Za-z._-]{1,128}")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: Microseconds of the latest time a cursor may carry (year 9999; PostgreSQL's timestamptz goes further).
_MAX_MICROSECONDS = (datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC) - _EPOCH) // datetime.timedelta(
    microseconds=1
)

_PAGE = """
SELECT b.id, b.count, b.source, b.created_at, o.stored, o.duplicate, o.invalid, o.failed,
       o.first_at, o.last_at, now()
FROM (
  (SELECT id, count, source, created_at FROM batches {registered}
   ORDER BY created_at DESC, id DESC LIMIT %(n)s)
  UNION ALL
  (SELECT f.batch_id, NULL::integer, NULL::varchar, f.first_at FROM batches_in_flight AS f
   WHERE NOT EXISTS (SELECT 1 FROM batches AS r WHERE r.id = f.batch_id) {in_flight}
   ORDER BY f.first_at DESC, f.batch_id DESC LIMIT %(n)s)
  ORDER BY created_at DESC, id DESC LIMIT %(n)s) AS b
LEFT JOIN LATERAL (
  SELECT sum(stored)::bigint AS stored, sum(duplicate)::bigint AS duplicate, sum(invalid)::bigint AS invalid,
         sum(failed)::bigint AS failed, min(first_at) AS first_at, max(last_at) AS last_at
  FROM batch_outcomes WHERE batch_id = b.id) AS o ON true
ORDER BY b.created_at DESC, b.id DESC
"""
#: The keyset conditions of every page after the first (PostgreSQL compares the row values in index order).
_AFTER_REGISTERED = "WHERE (created_at, id) < (%(at)s, %(id)s)"
_AFTER_IN_FLIGHT = "AND (f.first_at, f.batch_id) < (%(at)s, %(id)s)"


def encode_cursor(created_at: datetime.datetime, batch_id: str) -> str:
    """The opaque cursor of the page after the batch created at ``created_at`` with id ``batch_id``."""
    moment = created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=datetime.UTC)
    microseconds = (moment - _EPOCH) // datetime.timedelta(microseconds=1)
    raw = f"{microseconds}:{batch_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    """The creation time and batch id a cursor stands for; :class:`InvalidCursor` for anything else."""
    if len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
        raise InvalidCursor("cursor is not one this API gave: pass next_cursor as it came")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not one this API gave: pass next_cursor as it came") from None
    number, _, batch_id = raw.partition(":")
    valid = number.isdigit() and len(number) <= 18 and _BATCH_ID.fullmatch(batch_id) is not None
    if not valid or int(number) > _MAX_MICROSECONDS:
        raise InvalidCursor("cursor is not one this API gave: pass next_cursor as it came")
    return _EPOCH + datetime.timedelta(microseconds=int(number)), batch_id


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=datetime.UTC)


def batch_summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """One batch of the list from a row of the page's query: progress, rate (records a second) and age."""
    batch_id, count, source, created_at, *outcomes, first_at, last_at, now = row
    counts = {status: int(n or 0) for status, n in zip(OUTCOMES, outcomes, strict=True)}
    processed = sum(counts.values())
    completed = count is not None and processed >= count
    now = _utc(now) or datetime.datetime.now(datetime.UTC)
    created_at, first_at, last_at = _utc(created_at) or now, _utc(first_at), _utc(last_at)
    rate = None
    if first_at is not None and processed:
        # Until the last outcome when done; until now while running, so that a stall shows as a falling rate.
        end = last_at if completed and last_at is not None else now
        rate = round(processed / max((end - first_at).total_seconds(), 1.0), 1)
    return {
        "batch_id": batch_id,
        "source": source,
        "count": count,
        "state": "completed" if completed else "processing",
        "processed": processed,
        "counts": {Status.QUEUED: None if count is None else max(0, count - processed), **counts},
        "rate": rate,
        "created_at": created_at.isoformat(),
        "age_seconds": round(max((now - created_at).total_seconds(), 0.0), 1),
        "last_outcome_at": None if last_at is None else last_at.isoformat(),
    }


def _read_page(limit: int, after: tuple[datetime.datetime, str] | None) -> list[tuple[Any, ...]]:
    from pipeline.db import database  # on first use, as web.reads does

    params: dict[str, Any] = {"n": limit + 1}
    registered = in_flight = ""
    if after is not None:
        registered, in_flight = _AFTER_REGISTERED, _AFTER_IN_FLIGHT
        params.update(at=after[0], id=after[1])
    statement = _PAGE.format(registered=registered, in_flight=in_flight)
    return list(database.execute_sql(statement, params).fetchall())


async def list_batches(request: Request) -> Response:
    """``GET /api/batches?limit=&cursor=``: ``{"items": [batch, ...], "next_cursor"}``, newest first."""
    limit = int_parameter(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    raw_cursor = request.query_params.get("cursor") or None
    after = None if raw_cursor is None else decode_cursor(raw_cursor)
    rows = await run_query(request, lambda: _read_page(limit, after))
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if page else None
    return JSONResponse(
        {
            "items": [batch_summary(row) for row in page],
            "next_cursor": encode_cursor(last[3], last[0]) if more and last is not None else None,
        }
    )
