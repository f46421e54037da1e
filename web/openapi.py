"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Written as data, next to the code it describes; ``tests/test_web_openapi.py`` checks that every route of
the application is described and that the answers match.  Request schemas describe what the API itself
refuses (shape, size, media type), not the user rules: those are checked by the workers, and a user that
breaks them is *accepted* (202) and reported ``invalid`` later.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_ERROR_CODES = [
    "bad_request",
    "malformed_json",
    "malformed_csv",
    "malformed_multipart",
    "invalid_parameter",
    "client_disconnected",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "invalid_body",
    "queue_unavailable",
    "kafka_unavailable",
    "database_unavailable",
    "service_unavailable",
    "not_ready",
    "client_error",
    "internal_error",
    "server_error",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *, retry_after: bool = False, auth: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    if auth:
        response["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/WWWAuthenticate"}}
    return response


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


_UNAUTHORIZED = _error("`API_TOKEN` is set and the bearer token is missing or wrong.", auth=True)
_DB_DOWN = _error("PostgreSQL cannot be reached (`database_unavailable`).", retry_after=True)
_LOCATION = {"Location": {"description": "Where to follow the outcome.", "schema": {"type": "string"}}}

_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "Items per page.",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}


def _cursor(what: str, maximum: int) -> dict[str, Any]:
    return {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": f"`next_cursor` of the previous page: the last {what} it held.",
        "schema": {"type": "integer", "minimum": 0, "maximum": maximum},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": _ERROR_CODES, "description": "For machines."},
                    "message": {"type": "string", "description": "For people."},
                },
            }
        },
    },
    "StorableString": {
        "type": "string",
        "pattern": "^[^\\u0000]*$",
        "description": "Any Unicode text but NUL (PostgreSQL cannot store it); lone surrogates are refused.",
    },
    "StorableValue": {
        "anyOf": [
            _ref("StorableString"),
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": _ref("StorableValue")},
            {
                "type": "object",
                "propertyNames": _ref("StorableString"),
                "additionalProperties": _ref("StorableValue"),
            },
        ]
    },
    "UserInput": {
        "type": "object",
        "propertyNames": _ref("StorableString"),
        "additionalProperties": _ref("StorableValue"),
        "description": (
            "A user as posted. The workers check it, after the API has answered: `name` (required) is a "
            "string or `{firstName, lastName}`, 1 to 100 characters; `age` (required) an integer 0 to 150 "
            "(not a boolean or a string; in CSV the digits); optional `address` `{line1, line2, city, "
            "state}`, `email`, `phoneNumber` (E.164-like); every other field is kept as additional "
            "information. A user breaking these rules is still accepted (202) and ends `invalid`. "
            "The API itself refuses (422) strings holding NUL or lone surrogates and nesting deeper than 32 "
            "levels; with duplicate keys the last wins."
        ),
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "field": {
                "type": "string",
                "description": "Dotted path of the field, or `_row`/`_line` (record-level parse errors), "
                "`_system` (processing failed).",
            },
            "message": {"type": "string"},
        },
    },
    "User": {
        "type": "object",
        "required": ["id", "name", "age"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "email": {"type": ["string", "null"]},
            "phoneNumber": {"type": ["string", "null"]},
            "address": {"type": ["object", "null"]},
            "additional_info": {"type": "object"},
            "created_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Queued": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"const": "queued"}},
    },
    "Submission": {
        "type": "object",
        "required": ["id", "status", "errors", "user"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["stored", "duplicate", "invalid", "failed"]},
            "errors": {"type": "array", "items": _ref("FieldError")},
            "user": {
                "description": "The stored row (`stored`), or the row it collided with (`duplicate`).",
                "oneOf": [_ref("User"), {"type": "null"}],
            },
        },
    },
    "BatchAccepted": {
        "type": "object",
        "required": ["batch_id", "count"],
        "properties": {"batch_id": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
    },
    "Batch": {
        "type": "object",
        "required": ["batch_id", "state", "count", "counts", "items", "next_cursor"],
        "properties": {
            "batch_id": {"type": "string"},
            "state": {
                "enum": ["processing", "completed"],
                "description": "`completed` once every record has an outcome.",
            },
            "count": {
                "type": ["integer", "null"],
                "description": "Records in the batch; `null` while the workers have not registered it yet.",
            },
            "counts": {
                "type": "object",
                "required": ["queued", "stored", "duplicate", "invalid", "failed"],
                "properties": {
                    "queued": {"type": ["integer", "null"]},
                    "stored": {"type": "integer"},
                    "duplicate": {"type": "integer"},
                    "invalid": {"type": "integer"},
                    "failed": {"type": "integer"},
                },
            },
            "items": {
                "type": "array",
                "description": "The `invalid` and `failed` records, by row.",
                "items": {
                    "type": "object",
                    "required": ["id", "row", "status", "errors"],
                    "properties": {
                        "id": {"type": "string", "description": "`<batch_id>.<row>`"},
                        "row": {"type": "integer"},
                        "status": {"enum": ["invalid", "failed"]},
                        "errors": {"type": "array", "items": _ref("FieldError")},
                    },
                },
            },
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "UserPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("User")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "AgeDistribution": {
        "type": "object",
        "description": (
            "Share of stored users per age group: `under 20` (age < 20), `20 to 40` (20..40 inclusive), "
            "`41 to 60` (41..60), `over 60` (> 60). Computed by one SQL query."
        ),
        "required": ["total", "groups"],
        "properties": {
            "total": {"type": "integer", "description": "Stored users."},
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["group", "min_age", "max_age", "count", "share"],
                    "properties": {
                        "group": {"enum": ["under 20", "20 to 40", "41 to 60", "over 60"]},
                        "min_age": {"type": ["integer", "null"], "description": "Inclusive; null: no bound."},
                        "max_age": {"type": ["integer", "null"], "description": "Inclusive; null: no bound."},
                        "count": {"type": "integer"},
                        "share": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": "count / total",
                        },
                    },
                },
            },
        },
    },
    "Overview": {
        "type": "object",
        "required": ["queue", "failed_messages", "under_replicated", "lag"],
        "properties": {
            "queue": {"type": "string"},
            "failed_messages": {"type": ["integer", "null"], "description": "On the failed-message topic."},
            "under_replicated": {
                "type": ["integer", "null"],
                "description": "Partitions of the queue's topics with fewer in-sync replicas than replicas "
                "(a Kafka node is away or behind); null when the broker cannot tell.",
            },
            "lag": {
                "type": "object",
                "description": "Messages of each topic the workers have not acknowledged yet.",
                "additionalProperties": {"type": ["integer", "null"]},
            },
        },
    },
    "Readiness": {
        "type": "object",
        "properties": {
            "kafka": {"enum": ["ok", "unknown", "unavailable", "timeout"]},
            "database": {"enum": ["ok", "unavailable", "timeout"]},
        },
    },
}

_BATCH_REQUEST = {
    "required": True,
    "description": (
        "A batch of users, in one of four forms. JSON: an array of objects (row = index + 1). NDJSON: one "
        "object a line (row = count of non-blank lines). CSV (UTF-8, optional BOM, CRLF or LF, RFC 4180 "
        "quoting): a header row whose dotted names build nested objects (`name.firstName` -> "
        '`{"name": {"firstName": ...}}`), one user per row, empty cells left out, blank rows skipped. '
        "A multipart upload: the file in the part `file` (CSV, or JSON/NDJSON by its content type or "
        "`.json`/`.ndjson` name). An element or line that is not an object, or a CSV row with more or fewer "
        "cells than the header, does not stop the batch: that record ends `invalid` with an error on "
        "`_row`/`_line`. The body is parsed as it arrives and may not exceed `MAX_BATCH_BYTES` (default "
        "256 MiB), `MAX_BATCH_RECORDS` records (default 2,000,000), nor `MAX_BODY_BYTES` per record."
    ),
    "content": {
        "application/json": {"schema": {"type": "array", "minItems": 1, "items": _ref("UserInput")}},
        "application/x-ndjson": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "contentMediaType": "text/csv",
                        "description": "A file upload, or a plain field of at most `MAX_BODY_BYTES` (CSV).",
                    }
                },
            }
        },
    },
}

_API_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]


def build_openapi() -> dict[str, Any]:
    """The OpenAPI document of the API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batch-user-processing",
            "version": "0.1.0",
            "description": (
                "Accepts user records at once (202) and hands them to workers over Apache Kafka; they are "
                "validated, deduplicated and stored in PostgreSQL. A 202 means the submission is durable in "
                'Kafka. Every error is `{"error": {"code", "message"}}`. Bodies must be UTF-8.'
            ),
        },
        "paths": {
            "/api/user": {
                "post": {
                    "operationId": "submitUser",
                    "summary": "Submit one user.",
                    "security": _API_SECURITY,
                    "requestBody": {
                        "required": True,
                        "description": "One JSON object, at most `MAX_BODY_BYTES` (default 1 MiB).",
                        "content": {"application/json": {"schema": _ref("UserInput")}},
                    },
                    "responses": {
                        "202": _json(_ref("Queued"), "Durable in Kafka; follow `Location`.", _LOCATION),
                        "400": _error(
                            "Not JSON (`malformed_json`): empty, invalid UTF-8, NaN/Infinity, a number "
                            "out of range (1e309)."
                        ),
                        "401": _UNAUTHORIZED,
                        "413": _error(
                            "Over `MAX_BODY_BYTES` (`payload_too_large`), told by Content-Length "
                            "or found while reading."
                        ),
                        "415": _error("Not `application/json`, or a charset other than UTF-8."),
                        "422": _error(
                            "JSON but not an object, or holding NUL/lone surrogates, or too deep "
                            "(`invalid_body`)."
                        ),
                        "503": _error(
                            "Kafka did not acknowledge the message (`queue_unavailable`).", retry_after=True
                        ),
                    },
                }
            },
            "/api/users": {
                "post": {
                    "operationId": "submitUsers",
                    "summary": "Submit a batch of users (JSON array, NDJSON, CSV, or a multipart file).",
                    "security": _API_SECURITY,
                    "requestBody": _BATCH_REQUEST,
                    "responses": {
                        "202": _json(
                            _ref("BatchAccepted"),
                            "Every record is durable in Kafka; follow `Location`. Record ids are "
                            "`<batch_id>.<row>`.",
                            _LOCATION,
                        ),
                        "400": _error(
                            "The body cannot be parsed (`malformed_json`, `malformed_csv`, "
                            "`malformed_multipart`). Records of a large batch found before the error may "
                            "already have been accepted: resend the fixed batch, users are deduplicated."
                        ),
                        "401": _UNAUTHORIZED,
                        "413": _error(
                            "Over `MAX_BATCH_BYTES`, `MAX_BATCH_RECORDS`, or a record over "
                            "`MAX_BODY_BYTES` (`payload_too_large`)."
                        ),
                        "415": _error("Not one of the four forms, or a charset other than UTF-8."),
                        "422": _error(
                            "Parses but is not a batch: not an array, no records, a CSV header that "
                            "cannot build objects, no `file` part (`invalid_body`)."
                        ),
                        "503": _error(
                            "Kafka stopped acknowledging midway (`queue_unavailable`): retry the whole "
                            "batch; records already accepted are processed and users are deduplicated.",
                            retry_after=True,
                        ),
                    },
                },
                "get": {
                    "operationId": "listUsers",
                    "summary": "Stored users, by id, optionally filtered by name.",
                    "security": _API_SECURITY,
                    "parameters": [
                        {
                            "name": "name",
                            "in": "query",
                            "required": False,
                            "description": "Case-insensitive substring of the name.",
                            "schema": {"type": "string", "maxLength": 200},
                        },
                        _LIMIT,
                        _cursor("user id", 2**63 - 1),
                    ],
                    "responses": {
                        "200": _json(_ref("UserPage"), "A page of users."),
                        "400": _error("A bad `limit`, `cursor` or `name` (`invalid_parameter`)."),
                        "401": _UNAUTHORIZED,
                        "503": _DB_DOWN,
                    },
                },
            },
            "/api/submissions/{id}": {
                "get": {
                    "operationId": "getSubmission",
                    "summary": "The outcome of a submission (single, or `<batch_id>.<row>`).",
                    "security": _API_SECURITY,
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json(_ref("Submission"), "The outcome is known."),
                        "202": _json(_ref("Queued"), "Issued by this service; no outcome yet."),
                        "401": _UNAUTHORIZED,
                        "404": _error("Not an id this service issued (`not_found`)."),
                        "503": _DB_DOWN,
                    },
                }
            },
            "/api/batches/{id}": {
                "get": {
                    "operationId": "getBatch",
                    "summary": "State, counts per status and the invalid/failed records of a batch.",
                    "security": _API_SECURITY,
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        _LIMIT,
                        _cursor("row", 2**31 - 1),
                    ],
                    "responses": {
                        "200": _json(_ref("Batch"), "The batch (`processing` or `completed`)."),
                        "400": _error("A bad `limit` or `cursor` (`invalid_parameter`)."),
                        "401": _UNAUTHORIZED,
                        "404": _error("Not a batch id this service issued (`not_found`)."),
                        "503": _DB_DOWN,
                    },
                }
            },
            "/api/reports/age-distribution": {
                "get": {
                    "operationId": "ageDistribution",
                    "summary": "Share of stored users per age group.",
                    "security": _API_SECURITY,
                    "responses": {
                        "200": _json(_ref("AgeDistribution"), "The report."),
                        "401": _UNAUTHORIZED,
                        "503": _DB_DOWN,
                    },
                }
            },
            "/api/overview": {
                "get": {
                    "operationId": "overview",
                    "summary": "For the operator page: failed messages and consumer lag of the queue.",
                    "security": _API_SECURITY,
                    "responses": {
                        "200": _json(
                            _ref("Overview"), "The queue's state; `null` where the broker cannot tell."
                        ),
                        "401": _UNAUTHORIZED,
                        "503": _error(
                            "Kafka did not answer in time (`kafka_unavailable`).", retry_after=True
                        ),
                    },
                }
            },
            "/api/users/newest": {
                "get": {
                    "operationId": "newestUsers",
                    "summary": "For the operator page: the most recently stored users, newest first.",
                    "security": _API_SECURITY,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("User")}},
                            },
                            "The newest users.",
                        ),
                        "400": _error("A bad `limit` (`invalid_parameter`)."),
                        "401": _UNAUTHORIZED,
                        "503": _DB_DOWN,
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "operatorPage",
                    "summary": "The operator page (HTML; its script and style sheet are under `/static/`).",
                    "responses": {
                        "200": {
                            "description": "The page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "The process is up.",
                    "responses": {
                        "200": _json({"type": "object", "properties": {"status": {"const": "ok"}}}, "Up.")
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Kafka and PostgreSQL answer (each check has 2 s).",
                    "responses": {
                        "200": _json(_ref("Readiness"), "Both answer."),
                        "503": _json(
                            {"allOf": [_ref("Error"), _ref("Readiness")]},
                            "At least one does not; `error.message` names it.",
                            {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: requests, latency by route and status, enqueue failures.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
                }
            },
        },
        "components": {
            "schemas": _SCHEMAS,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                },
                "WWWAuthenticate": {"description": "`Bearer`.", "schema": {"type": "string"}},
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required on `/api` routes when the service has `API_TOKEN` set.",
                }
            },
        },
    }


_DOCUMENT = build_openapi()


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(_DOCUMENT)
