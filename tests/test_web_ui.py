"""The operator page's routes (``web/ui.py``) on an app with Dramatiq's StubBroker.

The page itself is exercised in Chromium by ``test_ui_browser.py``; here: what is served, the token, and
how the overview answers when the broker can or cannot be inspected.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from tests.web_support import assert_error, make_client
from web import ui


def _client(broker: StubBroker | None = None, **overrides: Any) -> TestClient:
    client = make_client(broker, **overrides)
    if not any(getattr(route, "path", None) == "/api/overview" for route in client.app.routes):  # type: ignore[attr-defined]
        client.app.router.routes.extend(ui.routes)  # type: ignore[attr-defined]  (until web.app adds them)
    return client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with _client() as client:
        yield client


class _FixedAdmin:
    """The KafkaBroker's ``admin`` operations, answering fixed numbers."""

    def failed_count(self, queue_name: str) -> int:
        return 3

    def lag(self, queue_name: str) -> dict[int, int]:
        return {0: 5, 1: 2} if queue_name == "users" else {0: 1}

    def under_replicated(self, queue_name: str) -> dict[str, int]:
        return {"users": 2, "users.DQ": 0, "users.XQ": 1}


class InspectableBroker(StubBroker):
    """A StubBroker with the KafkaBroker's inspection operations (``admin``), answering fixed numbers."""

    admin = _FixedAdmin()


class _UnreachableAdmin:
    """The KafkaBroker's ``admin`` operations, failing as they do when Kafka is down."""

    def failed_count(self, queue_name: str) -> int:
        from dramatiq_kafka_broker import KafkaConnectionError

        raise KafkaConnectionError("list_partition_offsets: NoBrokersAvailable")

    def lag(self, queue_name: str) -> dict[int, int]:
        raise AssertionError("not reached")


class UnreachableBroker(StubBroker):
    """A StubBroker whose inspection fails as the KafkaBroker's does when Kafka is down."""

    admin = _UnreachableAdmin()


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    # When
    page = client.get("/")
    script = client.get("/static/app.js")
    style = client.get("/static/style.css")

    # Then
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


def test_the_page_opens_without_the_token_but_its_api_reads_need_it() -> None:
    # Given
    with _client(api_token="s3cret") as client:
        # When
        page = client.get("/")
        refused = client.get("/api/overview")
        allowed = client.get("/api/overview", headers={"Authorization": "Bearer s3cret"})

    # Then
    assert page.status_code == 200
    assert_error(refused, 401, "unauthorized")
    assert allowed.status_code == 200


def test_the_overview_sums_the_lag_of_every_partition() -> None:
    # Given
    with _client(InspectableBroker()) as client:
        # When
        response = client.get("/api/overview")

    # Then
    assert response.status_code == 200
    assert response.json() == {
        "queue": "users",
        "failed_messages": 3,
        "under_replicated": 3,
        "lag": {"users": 7, "users.DQ": 1},
    }


def test_the_overview_answers_null_for_a_broker_that_cannot_be_inspected(client: TestClient) -> None:
    # When
    response = client.get("/api/overview")

    # Then
    assert response.status_code == 200
    assert response.json() == {
        "queue": "users",
        "failed_messages": None,
        "under_replicated": None,
        "lag": {"users": None, "users.DQ": None},
    }


def test_the_overview_answers_503_when_kafka_cannot_be_inspected() -> None:
    # Given
    with _client(UnreachableBroker()) as client:
        # When
        response = client.get("/api/overview")

    # Then
    body = assert_error(response, 503, "kafka_unavailable")
    assert "KafkaConnectionError" in body["error"]["message"]
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1", "1" * 30])
def test_newest_users_refuses_a_limit_out_of_range(client: TestClient, limit: str) -> None:
    # When
    response = client.get("/api/users/newest", params={"limit": limit})

    # Then
    assert_error(response, 400, "invalid_parameter")


def test_newest_users_answers_503_when_the_database_cannot_be_reached(unreachable_database: None) -> None:
    # Given: the pipeline's database points where nothing listens
    with _client() as client:
        # When
        response = client.get("/api/users/newest")

    # Then
    body = assert_error(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "7"
    assert "retry" in body["error"]["message"]


@pytest.fixture
def unreachable_database() -> Iterator[None]:
    """Point ``pipeline.db.database`` at a closed port for the test, then back where it was."""
    from pipeline import db, settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db.configure(f"postgresql://nobody@127.0.0.1:{port}/nothing")
    try:
        yield
    finally:
        db.configure(settings.DATABASE_URL)


def test_the_script_never_writes_html_and_calls_only_routes_the_app_has(client: TestClient) -> None:
    # Given
    import re

    from starlette.routing import Match

    script = client.get("/static/app.js").text
    # When: every API path the script names (template parts become a sample id)
    paths = {
        re.sub(r"\$\{[^}]*\}", "x", path).split("?")[0]
        for path in re.findall(r"[`\"'](/api/[^`\"'\s]*)", script)
    }
    # Then
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert {"/api/batches", "/api/reports/throughput", "/api/failed"} <= paths
    variants = {"invalid.x": ("invalid.csv", "invalid.ndjson"), "failed/x": ("failed/replay", "failed/purge")}
    expanded = {p for p in paths if not any(part in p for part in variants)} | {
        p.replace(part, one) for p in paths for part, both in variants.items() if part in p for one in both
    }
    routes = client.app.routes  # type: ignore[attr-defined]
    for path in expanded:
        method = "POST" if path.startswith("/api/failed/") else "GET"
        scope = {"type": "http", "path": path, "method": method}
        assert any(route.matches(scope)[0] == Match.FULL for route in routes), (method, path)


@pytest.mark.postgres
def test_the_throughput_report_gives_the_lag_summed_over_partitions(sql: Any) -> None:
    # Given
    with _client(InspectableBroker()) as client:
        # When
        body = client.get("/api/reports/throughput").json()
    # Then
    assert body["lag"] == {"users": 7, "users.DQ": 1}


@pytest.mark.postgres
def test_the_throughput_report_stands_without_the_lag_when_kafka_cannot_be_inspected(sql: Any) -> None:
    # Given
    with _client(UnreachableBroker()) as client:
        # When
        response = client.get("/api/reports/throughput")
    # Then
    assert response.status_code == 200 and response.json()["lag"] is None
    assert len(response.json()["series"]) >= 60
