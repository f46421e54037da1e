"""/openapi.json describes every route of the app, and every error code the app can answer."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

import web


def test_every_route_and_method_is_described(web_client):
    # Given
    document = web_client.get("/openapi.json").json()
    # When
    served = {
        (route.path, method.lower())
        for route in web_client.app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    # Then
    assert document["openapi"].startswith("3.1")
    assert served == described


def test_every_error_code_in_the_code_is_in_the_documented_enum(web_client):
    # Given
    enum = set(
        web_client.get("/openapi.json").json()["components"]["schemas"]["Error"]["properties"]["error"][
            "properties"
        ]["code"]["enum"]
    )
    source = "\n".join(p.read_text() for p in Path(web.__file__).parent.glob("*.py"))
    # When
    used = set(re.findall(r'code(?: = |=)"([a-z_]+)"', source)) | set(
        re.findall(r'error_response\(\d+, "([a-z_]+)"', source)
    )
    # Then
    assert used and used <= enum, used - enum


def test_every_reference_resolves(web_client):
    # Given
    document = web_client.get("/openapi.json").json()
    text = str(document)
    # Then
    for kind, name in re.findall(r"#/components/(\w+)/(\w+)", text):
        assert name in document["components"][kind], name
