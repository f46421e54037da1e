"""The errors of the HTTP API and the handlers that render them.

Every error leaves the API as ``{"error": {"code": "<machine-readable>", "message": "<for a person>"}}``::

    ApiError                      (any status; code + message)
     +-- Malformed               400  malformed_json | malformed_csv | malformed_multipart
     +-- InvalidParameter        400  invalid_parameter   (query string)
     +-- InvalidIdempotencyKey   400  invalid_idempotency_key
     +-- InvalidCursor           400  invalid_cursor      (GET /api/batches)
     +-- InvalidSnapshot         400  invalid_snapshot    (failed messages)
     +-- Unauthorized            401  unauthorized        (+ WWW-Authenticate: Bearer)
     +-- NotFound                404  not_found
     |    +-- NoFailedTopic           no_failed_topic      (not a Kafka broker)
     +-- IdempotencyKeyInFlight  409  idempotency_key_in_flight (+ Retry-After)
     +-- FailedMessagesMoved     409  failed_messages_changed
     +-- PayloadTooLarge         413  payload_too_large
     +-- UnsupportedMediaType    415  unsupported_media_type
     +-- InvalidBody             422  invalid_body
     +-- IdempotencyKeyReused    422  idempotency_key_reused
     +-- ServiceUnavailable      503
          +-- QueueUnavailable        queue_unavailable    (+ Retry-After)
          +-- DatabaseUnavailable     database_unavailable (+ Retry-After)
          +-- KafkaUnavailable        kafka_unavailable    (+ Retry-After; Kafka's admin API)

Starlette's own ``HTTPException`` (unknown route, wrong method) is rendered in the same shape; a client
that hangs up mid-body gets a 400 nobody reads; anything else is a bug: logged with its traceback and
answered ``500 internal_error`` without details.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pipeline.contract import storable_text

logger = logging.getLogger(__name__)

#: Codes for Starlette's own HTTP errors (routing), by status.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"code", "message"}}`` with ``status``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class Malformed(ApiError):
    """The body cannot be parsed as what its content type says (400)."""

    status = 400
    code = "malformed_json"


class InvalidParameter(ApiError):
    """A query parameter has a value the route cannot use (400)."""

    status = 400
    code = "invalid_parameter"


class InvalidIdempotencyKey(ApiError):
    """The ``Idempotency-Key`` header is not 1 to 255 visible ASCII characters, or is sent twice (400)."""

    status = 400
    code = "invalid_idempotency_key"


class Unauthorized(ApiError):
    """The bearer token is missing or wrong (401)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="api"'})


class NotFound(ApiError):
    """No such resource, or an id this service did not issue (404)."""

    status = 404
    code = "not_found"


class NoFailedTopic(NotFound):
    """The broker keeps no failed-message topic (Dramatiq's ``StubBroker``: not Kafka) (404)."""

    code = "no_failed_topic"


class InvalidCursor(ApiError):
    """A ``cursor`` that is not one the API gave (400)."""

    code = "invalid_cursor"


class InvalidSnapshot(ApiError):
    """The snapshot cannot be read, or names failed messages the topic does not hold (400)."""

    status = 400
    code = "invalid_snapshot"


class FailedMessagesMoved(ApiError):
    """Messages of the snapshot were replayed, purged or expired since it was listed (409)."""

    status = 409
    code = "failed_messages_changed"


class IdempotencyKeyInFlight(ApiError):
    """Another request with this ``Idempotency-Key`` is being accepted; retry after ``retry_after`` (409)."""

    status = 409
    code = "idempotency_key_in_flight"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class PayloadTooLarge(ApiError):
    """The body (or the number of records of a batch) is over the configured limit (413)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    """The route does not take bodies of this content type (415)."""

    status = 415
    code = "unsupported_media_type"


class InvalidBody(ApiError):
    """The body parses, but is not the shape the route takes (422)."""

    status = 422
    code = "invalid_body"


class IdempotencyKeyReused(ApiError):
    """The ``Idempotency-Key`` was used before with another body, or on the other route (422)."""

    status = 422
    code = "idempotency_key_reused"


class ServiceUnavailable(ApiError):
    """A backing service cannot be reached; the client may retry after ``retry_after`` seconds (503)."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class QueueUnavailable(ServiceUnavailable):
    """Kafka did not acknowledge a message in time (503)."""

    code = "queue_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached (503)."""

    code = "database_unavailable"


class KafkaUnavailable(ServiceUnavailable):
    """Kafka's admin API did not answer in time, or cannot be reached (503)."""

    code = "kafka_unavailable"


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one shape of every error answer."""
    # The message may quote a client's key, which may hold what UTF-8 cannot encode.
    body = {"error": {"code": code, "message": storable_text(message)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "client_error" if exc.status_code < 500 else "server_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # Not a bug and not worth a traceback: the client went away while sending its body.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(
        400, "client_disconnected", "the client closed the connection before the body ended"
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")


#: Handlers to give ``Starlette(exception_handlers=...)``.
EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    ClientDisconnect: _client_disconnect,
    Exception: _internal_error,
}
