"""With ``API_TOKEN`` set, every ``/api`` route refuses a missing or wrong token, in constant time, quietly.

The routes are read from the application itself, so a route added later cannot slip through untested.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.routing import Route

import web.auth
from tests.hostile.conftest import asgi_post, check_answer
from tests.web_support import TEST_SETTINGS, enqueued, make_client
from web.app import create_app

TOKEN = "hostile-T0ken-9f8e7d6c5b4a"
#: Wrong tokens: near misses (prefix, suffix, case, padding), the right token under the wrong scheme,
#: and a very long one (bytes that are not ASCII: see the raw-header test below).
WRONG = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN.upper()}",
    f"Bearer {TOKEN} {TOKEN}",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    TOKEN,
    f"Bearer\t{TOKEN}",
    "Bearer %00",
    "Bearer " + "a" * 10_000,
]


def api_requests() -> list[tuple[str, str]]:
    """(method, path) for every method of every route under ``/api`` of a fresh app, ids filled in."""
    app = create_app(StubBroker(), config=TEST_SETTINGS, database_check=lambda: None)
    found = []
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api"):
            path = re.sub(r"\{[^}]+\}", "some-id", route.path)
            found.extend((method, path) for method in sorted(route.methods or ()))
    return found


API_REQUESTS = api_requests()
#: Paths under /api that no route serves: refused before routing, so that they reveal nothing either.
UNROUTED = [
    ("GET", "/api"),
    ("GET", "/api/"),
    ("POST", "/api/nowhere"),
    ("DELETE", "/api/users"),
    ("GET", "/api/user/"),
]


def test_the_app_has_the_api_routes_this_suite_expects():
    # Then: if this fails, a route was added or removed: the tests below cover it by themselves
    assert {path for _, path in API_REQUESTS} >= {
        "/api/user",
        "/api/users",
        "/api/submissions/some-id",
        "/api/batches/some-id",
        "/api/reports/age-distribution",
    }


@pytest.fixture
def guarded() -> Any:
    """An app with ``API_TOKEN`` set, on a StubBroker."""
    broker = StubBroker()
    with make_client(broker, api_token=TOKEN) as client:
        yield client, broker


@pytest.mark.parametrize("method, path", API_REQUESTS + UNROUTED)
def test_every_api_route_refuses_every_missing_or_wrong_token_with_401(guarded, method, path, caplog):
    # Given
    client, broker = guarded
    for authorization in WRONG:
        headers = {"content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization
        # When
        with caplog.at_level(logging.DEBUG):
            response = client.request(method, path, content=b'{"name": "Ada", "age": 36}', headers=headers)
        # Then
        assert response.status_code == 401, (method, path, authorization, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        if method == "HEAD":  # no body to check
            continue
        check_answer(
            response, source="auth", what=f"{method} {path} {authorization!r:.40}", allowed=frozenset({401})
        )
        assert response.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in response.text and TOKEN.upper() not in response.text
    assert enqueued(broker) == []


@pytest.mark.parametrize("method, path", API_REQUESTS)
def test_the_right_token_passes_every_api_route(guarded, method, path):
    # Given
    client, _ = guarded
    # When
    response = client.request(
        method,
        path,
        content=b'{"name": "Ada", "age": 36}',
        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
    )
    # Then: whatever the route answers (404 for a made-up id, 503 without a database), it is not a 401
    assert response.status_code != 401, response.text


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "],
)
def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    guarded, authorization
):
    # When
    response = guarded[0].post(
        "/api/user", json={"name": "Ada", "age": 36}, headers={"authorization": authorization}
    )
    # Then
    assert response.status_code == 202


@pytest.mark.parametrize(
    "raw",
    ["Bearer \xff\xfe\x00", "\xff\xff", f"Bearer {TOKEN}\x80", f"Bearer {TOKEN}\x00", "Bearer ÿÿÿ"],
)
def test_an_authorization_header_of_arbitrary_bytes_is_a_401_not_a_crash(guarded, raw):
    # Given header bytes that are not ASCII nor UTF-8 (sent as they are, latin-1 is byte for byte)
    client, broker = guarded
    headers = {"content-type": "application/json", "authorization": raw}
    # When
    answer, _ = asgi_post(client.app, "/api/user", headers, iter([b'{"name": "Ada"}']))
    # Then
    check_answer(answer, source="auth", what=f"raw {raw!r}", allowed=frozenset({401}))
    assert enqueued(broker) == []


# --- Constant time ------------------------------------------------------------------------------------------


def test_tokens_are_compared_with_hmac_compare_digest_and_never_with_equality():
    # Given the source of the token check
    source = inspect.getsource(web.auth)
    # Then: the comparison is hmac.compare_digest, and no ==/!=/startswith touches the token
    assert "hmac.compare_digest(" in source
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    assert not re.search(
        r"(credentials|expected|token)\w*\s*(==|!=)|(==|!=)\s*(self\.)?(credentials|expected|token)\b", code
    )
    assert not re.search(r"(credentials|expected|token)\w*\.(startswith|endswith|find|index)\(", code)


def test_every_wrong_token_whatever_its_length_goes_through_compare_digest(guarded, monkeypatch):
    # Given a spy on hmac.compare_digest (as web.auth calls it)
    calls: list[tuple[bytes, bytes]] = []
    real = web.auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(web.auth.hmac, "compare_digest", spy)
    client, _ = guarded
    tokens = [TOKEN[:1], TOKEN[:-1], TOKEN + "x", "x" * len(TOKEN), "y" * 1000]
    # When
    for token in tokens:
        response = client.get("/api/reports/age-distribution", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 401
    # Then: one constant-time comparison per request: no early exit on length or prefix before it
    assert len(calls) == len(tokens)
    assert all(expected == TOKEN.encode() for _, expected in calls)


# --- Secrets never in logs or error bodies ------------------------------------------------------------------


def test_neither_the_token_nor_the_id_secret_appears_in_logs_or_answers(caplog):
    # Given an app with a token and an id secret, logging everything
    secret = "id-S3cret-0f1e2d3c"
    broker = StubBroker()
    with caplog.at_level(logging.DEBUG), make_client(broker, api_token=TOKEN, id_secret=secret) as client:
        # When: wrong tokens, near misses, the right token, and requests that fail in every way
        answers = []
        for authorization in [*(w for w in WRONG if w), f"Bearer {TOKEN}"]:
            headers = {"authorization": authorization, "content-type": "application/json"}
            answers.append(client.post("/api/user", content=b'{"name": "Ada", "age": 36}', headers=headers))
            answers.append(client.post("/api/user", content=b"{broken", headers=headers))
            answers.append(client.post("/api/users", content=b"[]", headers=headers))
            answers.append(client.get("/api/submissions/" + "0" * 36, headers=headers))
        answers.append(client.get("/metrics"))
        answers.append(client.get("/openapi.json"))
        answers.append(client.get("/readyz"))
    # Then
    texts = [caplog.text, *(a.text for a in answers), *(str(a.headers) for a in answers)]
    for text in texts:
        assert TOKEN not in text and secret not in text
        assert TOKEN[:-1] not in text  # a near miss that was sent is not echoed either
