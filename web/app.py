"""The HTTP API: accept user records at once, hand them to Kafka, report what became of them.

``app`` is the uvicorn target (``uvicorn web.app:app``); tests build their own with :func:`create_app`,
giving it a broker (Dramatiq's ``StubBroker``) and settings of their choosing.

Routes (see ``web/openapi.yaml`` for the full description):

=======  ==============================  ===============================================================
POST     /api/user                        one JSON object -> 202 ``{"id", "status": "queued"}``
POST     /api/users                       JSON array, NDJSON, CSV or a multipart CSV/JSON file -> 202
GET      /api/submissions/{id}            outcome of a submission (200), or 202 while queued
GET      /api/batches                     recent batches, newest first, with progress and rate
GET      /api/batches/{id}                state, counts and invalid/failed items of a batch
GET      /api/batches/{id}/invalid.csv    its invalid records as a file (``.ndjson`` too; web/invalid_rows.py)
GET      /api/reports/throughput          outcomes per interval over the last hour, and lag
GET      /api/reports/age-distribution    share of stored users per age group
GET      /api/users                       stored users, filtered by name, by pages
GET      /healthz, /readyz, /metrics, /openapi.json
GET      /, /static/..., /api/overview, /api/users/newest   the operator page (``web/ui.py``)
GET      /api/failed; POST /api/failed/replay, /purge   failed messages, seen and acted on (``web/failed.py``)
=======  ==============================  ===============================================================

Both posts take an optional ``Idempotency-Key``: a retry with the same key and body is the same submission
(``web/idempotency.py``).  Posts without one touch no database.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import IO, Any

import dramatiq
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline import logs, settings
from pipeline.broker import build_broker
from pipeline.contract import QUEUE, Status
from pipeline.settings import WebSettings
from web import batch_list, failed, invalid_rows, reads, throughput, ui
from web.auth import BearerTokenMiddleware
from web.batches import accept_records
from web.bodies import BodyChunks, ByteLimit, body_stream, file_chunks, read_body, spool
from web.enqueue import Enqueuer, single_record
from web.errors import EXCEPTION_HANDLERS, InvalidBody, Malformed, PayloadTooLarge, UnsupportedMediaType
from web.idempotency import (
    BATCH,
    REPLAYED_HEADER,
    SINGLE,
    Fingerprint,
    IdempotencyKeys,
    requested_key,
)
from web.ids import IdSigner
from web.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from web.openapi import openapi_endpoint
from web.parsing import parse_object

logger = logging.getLogger(__name__)

#: Media types of ``POST /api/users`` bodies, and the batch form each one is.
BATCH_MEDIA_TYPES = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/csv": "csv",
    "application/csv": "csv",
}
MULTIPART = "multipart/form-data"
#: The multipart part that holds the uploaded file.
UPLOAD_FIELD = "file"
#: Bodies of ``POST /api/user`` larger than this are parsed in the thread pool, off the event loop.
_INLINE_PARSE_BYTES = 64 * 1024


def _media_type(request: Request) -> str:
    """The media type of the body, lower case, without parameters; 415 for a charset other than UTF-8."""
    raw = request.headers.get("content-type", "")
    media, *parameters = raw.split(";")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {"utf-8", "utf8"}:
            raise UnsupportedMediaType("only UTF-8 bodies are accepted")
    return media.strip().lower()


def _accepted(answer: dict[str, Any], location: str, *, replayed: bool) -> Response:
    """The ``202`` of a post; ``replayed`` when it is the answer of an earlier post with the same key."""
    headers = {"Location": location}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(answer, status_code=202, headers=headers)


async def post_user(request: Request) -> Response:
    """``POST /api/user``: one JSON object; 202 once it is durable in Kafka."""
    state = request.app.state
    config: WebSettings = state.settings
    media = _media_type(request)
    if media != "application/json":
        raise UnsupportedMediaType(f"send the user as application/json, not {media or 'no content type'}")
    key = requested_key(request)
    ByteLimit(config.max_body_bytes).check_declared(request)
    body = await read_body(request, config.max_body_bytes)
    data = (
        parse_object(body)
        if len(body) <= _INLINE_PARSE_BYTES
        else await run_in_threadpool(parse_object, body)
    )

    def accepted(submission_id: str) -> dict[str, Any]:
        state.metrics.accepted.labels("single").inc()
        logger.info("accepted submission %s", submission_id)
        return {"id": submission_id, "status": Status.QUEUED}

    if key is None:
        # With the posts that arrive at the same time, as one message, unless SINGLE_LINGER_MS is 0.
        submission_id = state.signer.new_submission_id()
        await state.enqueuer.send_single(single_record(submission_id, data), size=len(body))
        answer, replayed = accepted(submission_id), False
    else:
        fingerprint = Fingerprint(SINGLE, "json")
        fingerprint.update(body)
        answer, replayed = await state.idempotency_keys.submit_single(
            request,
            key,
            fingerprint,
            new_id=state.signer.new_submission_id,
            record=lambda submission_id: single_record(submission_id, data),
            size=len(body),
            enqueuer=state.enqueuer,
            accepted=accepted,
        )
    return _accepted(answer, f"/api/submissions/{answer['id']}", replayed=replayed)


def _upload_source(upload: UploadFile) -> str:
    """The batch form of an uploaded file: its part's content type, else its file name, else CSV."""
    media = (upload.content_type or "").split(";")[0].strip().lower()
    if media in BATCH_MEDIA_TYPES:
        return BATCH_MEDIA_TYPES[media]
    name = (upload.filename or "").lower()
    if name.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    if name.endswith(".json"):
        return "json"
    return "csv"


async def _receive_upload(request: Request, limit: int, max_field: int) -> tuple[Any, str, Any]:
    """Parse a multipart body; return the form (to close), the batch form and a binary file of the upload.

    A file part is spooled to a temporary file by Starlette (not kept in memory); a plain field named
    ``file`` (no file name) is taken as CSV text, up to ``max_field`` bytes.
    """
    stream = body_stream(request, limit)
    try:
        parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16, max_part_size=max_field)
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Part exceeded"):  # Starlette's words for a field over max_part_size
            raise PayloadTooLarge(f"a multipart field is larger than {max_field} bytes") from None
        raise Malformed(
            f"the multipart body cannot be parsed: {exc.message}", code="malformed_multipart"
        ) from None
    except (ValueError, LookupError) as exc:  # python-multipart's own errors on a broken header or boundary
        raise Malformed(f"the multipart body cannot be parsed: {exc}", code="malformed_multipart") from None
    finally:
        await stream.aclose()
    upload = form.get(UPLOAD_FIELD)
    if isinstance(upload, UploadFile):
        return form, _upload_source(upload), upload.file
    if isinstance(upload, str):
        return form, "csv", io.BytesIO(upload.encode("utf-8"))
    await form.close()
    raise InvalidBody(f"a multipart body needs a file part named {UPLOAD_FIELD!r}")


async def _accept_batch(
    request: Request, batch_id: str, source: str, file: IO[bytes] | None
) -> dict[str, Any]:
    """Send a batch of form ``source`` under ``batch_id``, from ``file`` or, without one, from the body as
    it streams in; return its ``202`` body."""
    state = request.app.state
    config: WebSettings = state.settings
    options = {
        "source": source,
        "batch_id": batch_id,
        "enqueuer": state.enqueuer,
        "chunk_size": config.batch_chunk_size,
        "max_records": config.max_batch_records,
        "max_record_bytes": config.max_body_bytes,
    }
    if file is not None:
        chunks: Iterable[bytes] = file_chunks(file, limit=config.max_batch_bytes)
        count = await run_in_threadpool(accept_records, chunks, **options)
    else:
        stream = body_stream(request, config.max_batch_bytes)
        try:
            count = await run_in_threadpool(accept_records, BodyChunks(stream), **options)
        finally:
            await stream.aclose()
    state.metrics.accepted.labels("batch").inc(count)
    return {"batch_id": batch_id, "count": count}


async def _spool_body(request: Request, fingerprint: Fingerprint) -> IO[bytes]:
    """The whole body in a temporary file, its bytes added to ``fingerprint`` (a keyed batch is known
    whole before it is claimed)."""
    stream = body_stream(request, request.app.state.settings.max_batch_bytes)
    try:
        return await run_in_threadpool(lambda: spool(BodyChunks(stream), each=fingerprint.update))
    finally:
        await stream.aclose()


async def post_users(request: Request) -> Response:
    """``POST /api/users``: a batch; 202 ``{"batch_id", "count"}`` once every record is durable in Kafka."""
    state = request.app.state
    config: WebSettings = state.settings
    media = _media_type(request)
    if media != MULTIPART and media not in BATCH_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "send a batch as application/json (array), application/x-ndjson, text/csv or "
            f"multipart/form-data, not {media or 'no content type'}"
        )
    key = requested_key(request)
    ByteLimit(config.max_batch_bytes).check_declared(request)
    async with contextlib.AsyncExitStack() as closing:
        file: IO[bytes] | None = None
        if media == MULTIPART:
            form, source, file = await _receive_upload(request, config.max_batch_bytes, config.max_body_bytes)
            closing.push_async_callback(form.close)
        else:
            source = BATCH_MEDIA_TYPES[media]
        if key is None:
            answer, replayed = await _accept_batch(request, state.signer.new_batch_id(), source, file), False
        else:
            fingerprint = Fingerprint(BATCH, source)
            if file is None:
                file = closing.enter_context(await _spool_body(request, fingerprint))
            else:
                await run_in_threadpool(fingerprint.of_file, file)
            keyed_file = file
            answer, replayed = await state.idempotency_keys.submit(
                request,
                key,
                fingerprint,
                new_id=state.signer.new_batch_id,
                accept=lambda batch_id: _accept_batch(request, batch_id, source, keyed_file),
            )
    return _accepted(answer, f"/api/batches/{answer['batch_id']}", replayed=replayed)


async def users_endpoint(request: Request) -> Response:
    """``/api/users``: ``POST`` a batch, ``GET`` the stored users."""
    if request.method == "POST":
        return await post_users(request)
    return await reads.list_users(request)


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is up (checks nothing else)."""
    return JSONResponse({"status": "ok"})


def create_app(
    broker: dramatiq.Broker | None = None,
    *,
    config: WebSettings | None = None,
    database_check: Callable[[], None] | None = None,
) -> Starlette:
    """Build the application.

    Parameters:
      broker(dramatiq.Broker): Where submissions go.  When None, the lifespan builds the service's Kafka
        broker (:func:`pipeline.broker.build_broker`, as the worker does) and closes it at shutdown;
        nothing connects until the first request.
      config(WebSettings): Limits, token and secret; ``pipeline.settings.WEB`` when None.
      database_check(callable): Raises when PostgreSQL cannot be reached (``/readyz``); the default runs
        ``SELECT 1`` on the pipeline's database.
    """
    config = config or settings.WEB
    metrics = Metrics()
    routes = [
        Route("/api/user", post_user, methods=["POST"]),
        # One route for both methods, so that a 405 on it names both in Allow.
        Route("/api/users", users_endpoint, methods=["GET", "POST"]),
        Route("/api/submissions/{id}", reads.get_submission, methods=["GET"]),
        Route("/api/batches", batch_list.list_batches, methods=["GET"]),
        Route("/api/batches/{id}", reads.get_batch, methods=["GET"]),
        *invalid_rows.routes,  # GET /api/batches/{id}/invalid.csv, .ndjson
        Route("/api/reports/throughput", throughput.throughput, methods=["GET"]),
        Route("/api/reports/age-distribution", reads.age_distribution, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", reads.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *ui.routes,  # the operator page at "/" and its two reads
        *failed.routes,  # the failed-message topic, listed, replayed and purged
    ]
    own_broker = broker is None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_broker:  # built here, not at import: importing web.app builds no broker
            _send_with(app, build_broker())
        yield
        await app.state.idempotency_keys.drain()
        app.state.enqueuer.close()
        if own_broker:
            app.state.broker.close()

    app = Starlette(
        lifespan=lifespan,
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(BearerTokenMiddleware, token=config.api_token),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.settings = config
    app.state.metrics = metrics
    app.state.signer = IdSigner(config.id_secret)
    app.state.idempotency_keys = IdempotencyKeys.of_web(config)
    if broker is not None:
        _send_with(app, broker)
    app.state.database_check = database_check or reads.ping_database
    if config.id_secret == "change-me-in-production":  # noqa: S105  (the default of settings, to warn about)
        logger.warning("ID_SECRET is the default value; set it so that ids cannot be forged")
    return app


def _send_with(app: Starlette, broker: dramatiq.Broker) -> None:
    """Make ``broker`` the application's: the one its Enqueuer sends with, the one its reads inspect."""
    config: WebSettings = app.state.settings
    # Declaring is local bookkeeping (no connection); the web sends by actor name, the actors live elsewhere.
    broker.declare_queue(QUEUE)
    app.state.broker = broker
    app.state.enqueuer = Enqueuer(
        broker,
        retry_after=config.retry_after_seconds,
        timeout=config.enqueue_timeout_seconds,
        metrics=app.state.metrics,
        linger_ms=config.single_linger_ms,
        max_records=config.single_max_records,
    )


def configure_logging() -> None:
    """Log the web's lines and uvicorn's to stdout at ``settings.LOG_LEVEL``, one line per event
    (:mod:`pipeline.logs`); nothing changes when the root logger already has handlers (a test runner)."""
    logs.configure(settings.LOG_LEVEL)
    if settings.LOG_LEVEL != "DEBUG":
        # kafka-python narrates every connection at INFO; its warnings and errors are what an operator needs.
        logging.getLogger("kafka").setLevel(logging.WARNING)


configure_logging()
app = create_app()
