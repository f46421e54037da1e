"""The operator page: a static page at ``/`` and the two small reads it needs that the API lacks.

``routes`` is added to the application by ``web.app``:

=======  ==========================  ==================================================================
GET      /                           the page (``web/static/index.html``; no build step)
GET      /static/...                 its script, style sheet and icons
GET      /api/overview               failed-message count and consumer lag of the ``users`` queue
GET      /api/users/newest           the most recently stored users, newest first (``limit`` 1..100)
=======  ==========================  ==================================================================

Both reads sit under ``/api/`` so the bearer token protects them like the rest of the API.  The overview
asks the broker's operations (:func:`~web.broker_features.operations_of`: Kafka's admin API, blocking calls
run in the thread pool with a time limit); a broker that has none (Dramatiq's ``StubBroker`` in tests) yields
``null`` values rather than an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.common import dq_name
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.contract import QUEUE
from web.broker_features import ask_kafka, operations_of
from web.reads import int_parameter, retry_after, run_query, user_json

logger = logging.getLogger(__name__)

STATIC_DIRECTORY = Path(__file__).resolve().parent / "static"
#: Seconds the overview may spend asking Kafka before it answers 503.
OVERVIEW_TIMEOUT_SECONDS = 5.0
#: Default and largest ``limit`` of ``GET /api/users/newest``.
NEWEST_DEFAULT_LIMIT = 10
NEWEST_MAX_LIMIT = 100


async def index(request: Request) -> Response:
    """``GET /``: the operator page."""
    # no-cache: the page is tiny, and an operator must never see an old script against a new API.
    return FileResponse(STATIC_DIRECTORY / "index.html", headers={"Cache-Control": "no-cache"})


def _inspect(broker: dramatiq.Broker) -> dict[str, Any]:
    """Ask the broker (blocking) for the failed-message count and the lag of the queue and its delay queue;
    None for what it cannot tell."""
    operations = operations_of(broker)
    return {
        "queue": QUEUE,
        "failed_messages": operations.failed_count(QUEUE),
        # Summed over the queue's topics: 0 means every replica is in sync (always, on one Kafka node).
        "under_replicated": _total(operations.under_replicated(QUEUE)),
        # lag() answers per partition; the page shows the sum (Kafka tools show the detail).
        "lag": {name: _total(operations.lag(name)) for name in (QUEUE, dq_name(QUEUE))},
    }


def _total(counts: dict[Any, int] | None) -> int | None:
    return None if counts is None else sum(counts.values())


async def overview(request: Request) -> Response:
    """``GET /api/overview``: ``{"queue", "failed_messages", "under_replicated", "lag": {"users": n,
    "users.DQ": n}}``.

    ``lag`` counts the messages of each topic that the workers' consumer group has not acknowledged yet:
    work waiting for a worker.  503 ``kafka_unavailable`` when Kafka does not answer in time.
    """
    broker = request.app.state.broker
    answer = await ask_kafka(
        lambda: _inspect(broker),
        what="overview",
        timeout=OVERVIEW_TIMEOUT_SECONDS,
        retry_after=retry_after(request),
    )
    return JSONResponse(answer)


def _newest_users(limit: int) -> list[dict[str, Any]]:
    # Imported on first use, as web.reads does: the page must load even when the models cannot.
    from pipeline import models

    rows = list(models.User.select().order_by(models.User.id.desc()).limit(limit))
    return [item for item in (user_json(row) for row in rows) if item is not None]


async def newest_users(request: Request) -> Response:
    """``GET /api/users/newest?limit=10``: ``{"items": [user, ...]}``, the last stored first."""
    limit = int_parameter(request, "limit", NEWEST_DEFAULT_LIMIT, 1, NEWEST_MAX_LIMIT)
    items = await run_query(request, lambda: _newest_users(limit))
    return JSONResponse({"items": items})


#: The routes to add to the application (before any catch-all).
routes: list[BaseRoute] = [
    Route("/", index, methods=["GET"], name="operator_page"),
    Route("/api/overview", overview, methods=["GET"], name="overview"),
    Route("/api/users/newest", newest_users, methods=["GET"], name="newest_users"),
    Mount("/static", app=StaticFiles(directory=STATIC_DIRECTORY), name="static"),
]
