"""Bearer-token auth: every /api route refuses a missing or wrong token when API_TOKEN is set."""

from __future__ import annotations

import logging

import pytest
from dramatiq.brokers.stub import StubBroker

from tests.web_support import assert_error, enqueued, make_client
from web.auth import token_matches

TOKEN = "s3cret-token"
API_ROUTES = [
    ("POST", "/api/user"),
    ("POST", "/api/users"),
    ("GET", "/api/users"),
    ("GET", "/api/submissions/abc"),
    ("GET", "/api/batches/abc"),
    ("GET", "/api/reports/age-distribution"),
    ("GET", "/api/nowhere"),
    ("GET", "/api"),
]


@pytest.mark.parametrize("method, path", API_ROUTES)
@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
def test_every_api_route_refuses_a_missing_or_wrong_token(method, path, authorization, caplog):
    # Given
    broker = StubBroker()
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    with make_client(broker, api_token=TOKEN) as web_client, caplog.at_level(logging.DEBUG):
        # When
        response = web_client.request(method, path, content=b'{"name": "Ada", "age": 3}', headers=headers)
    # Then
    body = assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text and TOKEN not in caplog.text
    assert "wrong" not in str(body)
    assert enqueued(broker) == []


def test_the_right_token_opens_the_api():
    # Given
    broker = StubBroker()
    with make_client(broker, api_token=TOKEN) as web_client:
        # When
        response = web_client.post(
            "/api/user", json={"name": "Ada"}, headers={"authorization": f"bearer  {TOKEN} "}
        )
    # Then
    assert response.status_code == 202
    assert len(enqueued(broker)) == 1


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/openapi.json"])
def test_probes_and_docs_stay_open_with_a_token_set(path):
    with make_client(api_token=TOKEN) as web_client:
        assert web_client.get(path).status_code == 200


def test_without_a_token_configured_the_api_is_open():
    with make_client(api_token="") as web_client:
        assert web_client.post("/api/user", json={"a": 1}).status_code == 202


def test_token_comparison_handles_any_header_text():
    assert token_matches("abc", "Bearer abc")
    assert not token_matches("abc", "Bearer ab")
    assert not token_matches("abc", "Bearer ÿÿÿ")
    assert not token_matches("abc", None)
