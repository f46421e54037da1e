"""Baseline (a) of ``bench/pipeline.py``: a bare Starlette endpoint that answers ``POST /api/user`` with 202.

It does what the real endpoint does minus Kafka: read the body, parse it as JSON, make an id and answer
``202 {"id", "status": "queued"}`` with a ``Location`` header.  It runs under the same uvicorn command line
as the Procfile's ``web`` process (``uvicorn bench.pipeline_bare:app ...``), so the ratio of the two
throughputs is the price of the service's own work: the broker's durable enqueue, signed ids, metrics,
logging and the error handling around them.
"""

from __future__ import annotations

import json
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def post_user(request: Request) -> Response:
    """Parse the body and answer 202, as the real endpoint does once Kafka has acknowledged."""
    data = json.loads(await request.body())
    if not isinstance(data, dict):
        return JSONResponse({"error": {"code": "invalid_body", "message": "not an object"}}, status_code=422)
    submission_id = uuid.uuid4().hex
    return JSONResponse(
        {"id": submission_id, "status": "queued"},
        status_code=202,
        headers={"Location": f"/api/submissions/{submission_id}"},
    )


async def healthz(request: Request) -> Response:
    """Up (the benchmark waits for it before it starts)."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/api/user", post_user, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
)
