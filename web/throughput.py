"""``GET /api/reports/throughput``: records reaching an outcome per interval over the last hour, and lag.

The web cannot read the workers' own metrics, so the figures come from PostgreSQL: ``outcome_minutes``,
the per-minute counters that triggers on ``submissions`` keep (migration ``0006_outcome_counters``, a ring
of two hours, at most 8 rows a minute).  The report is one query over at most 480 small rows, whatever the
load.  A record counts in the minute of its outcome (``submissions.updated_at``); a failed record replayed
later counts again, under its new outcome.

The lag (messages of the ``users`` topics the workers have not acknowledged yet) is Kafka's, asked as
``GET /api/overview`` asks it; it is ``null`` when Kafka does not answer within
:data:`LAG_TIMEOUT_SECONDS` (the report itself is the database's and does not wait for Kafka).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import anyio
import anyio.to_thread
from dramatiq.common import dq_name
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.contract import OUTCOMES, QUEUE
from web.broker_features import operations_of
from web.errors import InvalidParameter
from web.reads import run_query

logger = logging.getLogger(__name__)

#: Seconds per bucket by default, and the window of the report, in seconds.
DEFAULT_INTERVAL_SECONDS = 60
WINDOW_SECONDS = 3600
#: Seconds the report waits for Kafka's lag before it answers without it.
LAG_TIMEOUT_SECONDS = 2.0

_REPORT = """
WITH w AS (SELECT now() AS until, date_trunc('minute', now()) - interval '59 minutes' AS since)
SELECT w.since, w.until, date_bin(make_interval(secs => %s), m.minute, timestamptz '2000-01-01') AS bucket,
       sum(m.stored)::bigint, sum(m.duplicate)::bigint, sum(m.invalid)::bigint, sum(m.failed)::bigint
FROM w LEFT JOIN outcome_minutes AS m ON m.minute >= w.since AND m.minute <= w.until
GROUP BY w.since, w.until, bucket ORDER BY bucket
"""
_ORIGIN = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def _interval(request: Request) -> int:
    """``interval`` in seconds: a whole number of minutes from 1 to 60 (400 ``invalid_parameter`` else)."""
    raw = request.query_params.get("interval")
    if raw is None or raw == "":
        return DEFAULT_INTERVAL_SECONDS
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) % 60 or not 60 <= int(raw) <= 3600:
        raise InvalidParameter("interval must be a number of seconds from 60 to 3600, a multiple of 60")
    return int(raw)


def _bucket_start(moment: datetime.datetime, seconds: int) -> datetime.datetime:
    """Start of the bucket of ``moment`` (buckets of ``seconds`` counted from 2000-01-01, as ``date_bin``)."""
    step = datetime.timedelta(seconds=seconds)
    return _ORIGIN + ((moment - _ORIGIN) // step) * step


def report(rows: list[tuple[Any, ...]], seconds: int) -> dict[str, Any]:
    """The report from the query's rows: every bucket of the window, those without outcomes as zeros."""
    since, until = rows[0][0], rows[0][1]
    found = {row[2]: [int(n or 0) for n in row[3:]] for row in rows if row[2] is not None}
    step = datetime.timedelta(seconds=seconds)
    series = []
    start = _bucket_start(since, seconds)
    while start <= until:
        values = found.get(start, [0] * len(OUTCOMES))
        series.append({"start": start.isoformat(), **dict(zip(OUTCOMES, values, strict=True))})
        start += step
    totals = {status: sum(point[status] for point in series) for status in OUTCOMES}
    return {
        "interval_seconds": seconds,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "series": series,
        "totals": totals,
    }


def _read(seconds: int) -> list[tuple[Any, ...]]:
    from pipeline.db import database  # on first use, as web.reads does

    return list(database.execute_sql(_REPORT, (seconds,)).fetchall())


def _lag(broker: Any) -> dict[str, int] | None:
    operations = operations_of(broker)
    lags = {name: operations.lag(name) for name in (QUEUE, dq_name(QUEUE))}
    if any(lag is None for lag in lags.values()):
        return None
    return {name: sum((lag or {}).values()) for name, lag in lags.items()}


async def _lag_or_none(request: Request) -> dict[str, int] | None:
    try:
        with anyio.fail_after(LAG_TIMEOUT_SECONDS):
            return await anyio.to_thread.run_sync(_lag, request.app.state.broker, abandon_on_cancel=True)
    except Exception as exc:  # Kafka away or slow: the report stands without the lag
        logger.warning("throughput: no lag from Kafka: %s: %s", type(exc).__name__, exc)
        return None


async def throughput(request: Request) -> Response:
    """``GET /api/reports/throughput?interval=60``: outcomes per bucket over the last hour, and the lag.

    ``{"interval_seconds", "since", "until", "series": [{"start", "stored", "duplicate", "invalid",
    "failed"}, ...], "totals": {...}, "lag": {"users": n, "users.DQ": n} | null}``.
    """
    seconds = _interval(request)
    rows = await run_query(request, lambda: _read(seconds))
    answer = report(rows, seconds)
    answer["lag"] = await _lag_or_none(request)
    return JSONResponse(answer)
