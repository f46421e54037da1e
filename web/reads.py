"""The read side of the API: submissions, batches, users, the age report and readiness.

Peewee is synchronous, so every query runs in the thread pool (:func:`run_query`), inside a connection
context of the pipeline's database.  When PostgreSQL cannot be reached the routes answer
``503 database_unavailable`` with ``Retry-After``, never a 500.

Pagination is by keyset: ``limit`` (1..1000, default 100) and ``cursor``, the last row number (batch
items) or user id (users) of the previous page, which the answer gives as ``next_cursor`` (``null`` on the
last page).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import peewee
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dramatiq_kafka_broker import KafkaSetupError
from pipeline.contract import OUTCOMES, REJECTED, Status
from web.broker_features import Unknown, operations_of
from web.errors import DatabaseUnavailable, InvalidParameter, NotFound
from web.ids import BATCH, parse_submission_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Seconds each readiness check may take.
READY_TIMEOUT_SECONDS = 2.0
#: Longest ``name`` filter accepted by ``GET /api/users``.
MAX_NAME_FILTER = 200

#: A batch's outcomes from the counters the triggers of migration 0006 keep (at most 8 rows a batch): a
#: COUNT over the submissions of a batch of a million records read them all at every poll of the page.
_BATCH_COUNTS = (
    "SELECT coalesce(sum(stored), 0), coalesce(sum(duplicate), 0), coalesce(sum(invalid), 0), "
    "coalesce(sum(failed), 0) FROM batch_outcomes WHERE batch_id = %s"
)

# Errors that mean "the database is not there", as opposed to a bug in a query.
_UNAVAILABLE = (peewee.OperationalError, peewee.InterfaceError)


def _models() -> Any:
    # Imported on first use: the web must start (and accept submissions) even if the models module
    # or the database is not ready.
    from pipeline import models

    return models


def _run_in_connection(function: Callable[[], T]) -> T:
    models = _models()
    with models.database.connection_context():
        return function()


def retry_after(request: Request) -> int:
    """Seconds a client is told to wait (``Retry-After``) when a backing service is unavailable."""
    return int(request.app.state.settings.retry_after_seconds)


async def run_database_work(function: Callable[[], T], *, where: str, retry_after: int) -> T:
    """Run ``function`` (Peewee calls) in the thread pool, in a connection; 503 ``database_unavailable``
    with ``Retry-After: retry_after`` when the database is unreachable (logged as on ``where``)."""
    try:
        return await run_in_threadpool(_run_in_connection, function)
    except _UNAVAILABLE as exc:
        logger.warning("database unavailable on %s: %s", where, type(exc).__name__)
        raise DatabaseUnavailable(
            "the database cannot be reached; retry later", retry_after=retry_after
        ) from None


async def run_query(request: Request, function: Callable[[], T]) -> T:
    """Run ``function`` (Peewee calls) in the thread pool; 503 when the database is unreachable."""
    return await run_database_work(function, where=request.url.path, retry_after=retry_after(request))


def int_parameter(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    """The query parameter ``name`` as an integer from ``minimum`` to ``maximum`` (``default`` when absent
    or empty); 400 ``invalid_parameter`` otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # The length check first: int() of a huge digit string is slow (and limited) in Python.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or not minimum <= int(raw) <= maximum:
        raise InvalidParameter(f"{name} must be an integer from {minimum} to {maximum}")
    return int(raw)


#: Largest cursor of each kind: a row (PostgreSQL ``int``) and a user id (``bigint``).
MAX_ROW_CURSOR = 2**31 - 1
MAX_ID_CURSOR = 2**63 - 1


def _page(request: Request, max_cursor: int) -> tuple[int, int]:
    limit = int_parameter(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = int_parameter(request, "cursor", 0, 0, max_cursor)
    return limit, cursor


def _iso(moment: datetime.datetime | None) -> str | None:
    # The column is timestamptz; a naive value (a driver or row written without zone) is UTC by convention,
    # and RFC 3339 (the document's date-time) wants the offset.
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)).isoformat()


def user_json(user: Any) -> dict[str, Any] | None:
    """A row of ``users`` as the API shows it (field names as submitted: ``phoneNumber``)."""
    if user is None or user.id is None:
        return None
    created = getattr(user, "created_at", None)
    return {
        "id": user.id,
        "name": user.name,
        "age": user.age,
        "email": user.email,
        "phoneNumber": user.phone_number,
        "address": user.address,
        "additional_info": user.additional_info or {},
        "created_at": _iso(created),
    }


async def get_submission(request: Request) -> Response:
    """``GET /api/submissions/{id}``: 200 with the outcome, 202 while queued, 404 for unknown ids."""
    ref = parse_submission_id(request.app.state.signer, request.path_params["id"])
    if ref is None:
        raise NotFound("no submission has this id")

    def find() -> tuple[Any, int | None]:
        models = _models()
        submission = (
            models.Submission.select(models.Submission, models.User)
            .join(models.User, peewee.JOIN.LEFT_OUTER)
            .where(models.Submission.id == ref.id)
            .first()
        )
        count = None
        if submission is None and ref.batch_id is not None:
            batch = models.Batch.get_or_none(models.Batch.id == ref.batch_id)
            count = None if batch is None else batch.count
        return submission, count

    submission, batch_count = await run_query(request, find)
    if submission is None:
        if batch_count is not None and ref.row is not None and ref.row > batch_count:
            raise NotFound(f"the batch has {batch_count} records; there is no row {ref.row}")
        return JSONResponse({"id": ref.id, "status": Status.QUEUED}, status_code=202)
    user = submission.user if submission.user_id is not None else None
    return JSONResponse(
        {
            "id": submission.id,
            "status": submission.status,
            "errors": submission.errors or [],
            "user": user_json(user),
        }
    )


async def get_batch(request: Request) -> Response:
    """``GET /api/batches/{id}``: state, counts per status and the invalid/failed items, by pages."""
    batch_id = request.path_params["id"]
    if not request.app.state.signer.verify(batch_id, BATCH):
        raise NotFound("no batch has this id")
    limit, cursor = _page(request, MAX_ROW_CURSOR)

    def find() -> tuple[int | None, dict[str, int], list[Any]]:
        models = _models()
        Submission = models.Submission
        batch = models.Batch.get_or_none(models.Batch.id == batch_id)
        totals = models.database.execute_sql(_BATCH_COUNTS, (batch_id,)).fetchone()
        counts: dict[str, int] = {status: int(n) for status, n in zip(OUTCOMES, totals, strict=True)}
        items = list(
            Submission.select(Submission.id, Submission.row, Submission.status, Submission.errors)
            .where(
                (Submission.batch_id == batch_id)
                & (Submission.status.in_(REJECTED))
                & (Submission.row > cursor)
            )
            .order_by(Submission.row)
            .limit(limit + 1)
        )
        return (None if batch is None else batch.count), counts, items

    count, counts, items = await run_query(request, find)
    done = sum(counts.values())
    queued = None if count is None else max(0, count - done)
    state = "completed" if count is not None and done >= count else "processing"
    page, more = items[:limit], len(items) > limit
    return JSONResponse(
        {
            "batch_id": batch_id,
            "state": state,
            "count": count,
            "counts": {Status.QUEUED: queued, **counts},
            "items": [
                {"id": item.id, "row": item.row, "status": item.status, "errors": item.errors or []}
                for item in page
            ],
            "next_cursor": str(page[-1].row) if more and page else None,
        }
    )


async def list_users(request: Request) -> Response:
    """``GET /api/users``: stored users by id, optionally those whose name contains ``name``."""
    limit, cursor = _page(request, MAX_ID_CURSOR)
    name = request.query_params.get("name", "")
    if len(name) > MAX_NAME_FILTER or "\x00" in name:
        raise InvalidParameter(f"name must be at most {MAX_NAME_FILTER} characters, without NUL")

    def find() -> list[Any]:
        User = _models().User
        query = User.select().where(User.id > cursor)
        if name.strip():
            # strpos, not LIKE: the filter is a plain substring, "%" and "_" in it mean themselves.
            query = query.where(peewee.fn.strpos(peewee.fn.lower(User.name), name.strip().lower()) > 0)
        return list(query.order_by(User.id).limit(limit + 1))

    users = await run_query(request, find)
    page, more = users[:limit], len(users) > limit
    return JSONResponse(
        {
            "items": [user_json(user) for user in page],
            "next_cursor": str(page[-1].id) if more and page else None,
        }
    )


async def age_distribution(request: Request) -> Response:
    """``GET /api/reports/age-distribution``: the pipeline's one-query report."""

    def report() -> Any:
        from pipeline.reports import age_distribution as compute

        return compute()

    return JSONResponse(await run_query(request, report))


def ping_database() -> None:
    """Raise unless PostgreSQL answers ``SELECT 1``."""
    _run_in_connection(lambda: _models().database.execute_sql("SELECT 1"))


async def _check(check: Callable[[], Any], problems: list[str] | None = None) -> str:
    try:
        with anyio.fail_after(READY_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return "timeout"
    except Unknown:  # a broker that cannot be inspected (StubBroker): neither ready nor failing
        return "unknown"
    except KafkaSetupError as exc:  # Kafka answers, but an operator must act: the answer says what to do
        logger.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        if problems is not None:
            problems.append(str(exc))
        return "unavailable"
    except Exception as exc:  # any failure of a probe means "not ready"; the reason goes to the log only
        logger.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return "unavailable"
    return "ok"


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when Kafka and PostgreSQL answer, else 503 naming the one(s) that do not."""
    broker = request.app.state.broker
    results: dict[str, str] = {}
    problems: list[str] = []

    async def kafka() -> None:
        results["kafka"] = await _check(operations_of(broker).ping, problems)

    async def database() -> None:
        results["database"] = await _check(request.app.state.database_check)

    async with anyio.create_task_group() as group:
        group.start_soon(kafka)
        group.start_soon(database)
    failing = sorted(name for name, result in results.items() if result not in {"ok", "unknown"})
    if not failing:
        return JSONResponse(results)
    # The error shape, plus the result of each check so that an operator sees which one failed.
    error = {"code": "not_ready", "message": "; ".join([f"cannot reach: {', '.join(failing)}", *problems])}
    headers = {"Retry-After": str(retry_after(request))}
    return JSONResponse({"error": error, **results}, status_code=503, headers=headers)
