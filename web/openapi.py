"""The OpenAPI 3.1 description of the API: ``web/openapi.yaml``, read once and served at ``/openapi.json``.

The document is data, next to the code it describes; ``tests/test_web_openapi.py`` holds it against the
application (its routes and methods, the error codes the code can answer, the query bounds), so the two
cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

#: The document, packaged with the code (``pyproject.toml``'s package-data).
DOCUMENT_PATH = Path(__file__).resolve().parent / "openapi.yaml"


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document of the API, as parsed from :data:`DOCUMENT_PATH`."""
    document: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return document


# Read at import, so that a broken document stops the web at start-up rather than at the first request.
_DOCUMENT = load_openapi()


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(_DOCUMENT)
