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


def test_every_documented_error_code_is_one_the_code_can_answer(web_client):
    # Given: the documented codes, and the string literals of the web's modules
    enum = web_client.get("/openapi.json").json()["components"]["schemas"]["Error"]["properties"]["error"][
        "properties"
    ]["code"]["enum"]
    source = "\n".join(p.read_text() for p in Path(web.__file__).parent.glob("*.py"))
    literals = set(re.findall(r'"([a-z_]+)"', source))
    # Then: no documented code is one that nothing answers any more
    assert set(enum) <= literals, set(enum) - literals


def test_the_documented_query_bounds_are_the_codes(web_client):
    # Given
    from web import reads, ui

    paths = web_client.get("/openapi.json").json()["paths"]

    def schema(path: str, name: str) -> dict:
        return next(p["schema"] for p in paths[path]["get"]["parameters"] if p["name"] == name)

    # Then
    for path in ("/api/users", "/api/batches/{id}"):
        assert schema(path, "limit")["maximum"] == reads.MAX_LIMIT
        assert schema(path, "limit")["default"] == reads.DEFAULT_LIMIT
    assert schema("/api/users", "cursor")["maximum"] == reads.MAX_ID_CURSOR
    assert schema("/api/batches/{id}", "cursor")["maximum"] == reads.MAX_ROW_CURSOR
    assert schema("/api/users", "name")["maxLength"] == reads.MAX_NAME_FILTER
    assert schema("/api/users/newest", "limit")["maximum"] == ui.NEWEST_MAX_LIMIT
    assert schema("/api/users/newest", "limit")["default"] == ui.NEWEST_DEFAULT_LIMIT


def test_the_served_document_is_the_packaged_one(web_client):
    # Given
    from web.openapi import DOCUMENT_PATH, load_openapi

    # Then: what clients get is web/openapi.yaml, as it is on disk
    assert DOCUMENT_PATH.name == "openapi.yaml" and DOCUMENT_PATH.parent == Path(web.__file__).parent
    assert web_client.get("/openapi.json").json() == load_openapi()
