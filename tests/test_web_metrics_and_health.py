"""/metrics counts requests by route template; /healthz and /readyz answer as documented."""

from __future__ import annotations

from types import SimpleNamespace

from dramatiq.brokers.stub import StubBroker

from tests.web_support import assert_error, make_client
from web.ids import IdSigner


def test_requests_are_counted_by_route_template_and_status(web_client):
    # Given
    submission_path = f"/api/submissions/{IdSigner('x').new_submission_id()}"
    web_client.post("/api/user", json={"name": "Ada", "age": 1})
    web_client.post("/api/user", content=b"{", headers={"content-type": "application/json"})
    web_client.get(submission_path)
    web_client.get("/no/such/route")
    # When
    text = web_client.get("/metrics").text
    # Then
    assert 'http_requests_total{method="POST",route="/api/user",status="202"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/api/user",status="400"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/api/submissions/{id}",status="404"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert submission_path not in text
    assert 'http_request_duration_seconds_count{method="POST",route="/api/user"} 2.0' in text
    assert 'submissions_accepted_total{path="single"} 1.0' in text


def test_healthz_answers_ok(web_client):
    response = web_client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def make_ready_client(ping_error: Exception | None, database_error: Exception | None):
    """An app whose broker has the ``admin.ping`` a KafkaBroker has, and a database check; either may fail."""
    broker = StubBroker()

    def ping() -> None:
        if ping_error is not None:
            raise ping_error

    def database_check() -> None:
        if database_error is not None:
            raise database_error

    broker.admin = SimpleNamespace(ping=ping)  # type: ignore[attr-defined]
    web_client = make_client(broker)
    web_client.app.state.database_check = database_check
    return web_client


def test_readyz_is_200_when_kafka_and_the_database_answer():
    with make_ready_client(None, None) as web_client:
        response = web_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"kafka": "ok", "database": "ok"}


def test_readyz_is_503_naming_kafka_when_kafka_does_not_answer():
    with make_ready_client(ConnectionError("down"), None) as web_client:
        response = web_client.get("/readyz")
    body = assert_error(response, 503, "not_ready")
    assert body["kafka"] == "unavailable" and body["database"] == "ok"
    assert "kafka" in body["error"]["message"] and "database" not in body["error"]["message"]
    assert response.headers["retry-after"] == "7"


def test_readyz_is_503_naming_the_database_when_it_does_not_answer():
    with make_ready_client(None, OSError("refused")) as web_client:
        response = web_client.get("/readyz")
    body = assert_error(response, 503, "not_ready")
    assert body["database"] == "unavailable" and body["kafka"] == "ok"


def test_readyz_says_unknown_for_a_broker_without_ping(web_client):
    web_client.app.state.database_check = lambda: None
    assert web_client.get("/readyz").json() == {"kafka": "unknown", "database": "ok"}


def test_readyz_reports_a_check_that_hangs_as_a_timeout(monkeypatch):
    # Given: a database check that does not return until the test ends
    import threading

    import web.reads

    monkeypatch.setattr(web.reads, "READY_TIMEOUT_SECONDS", 0.05)
    release = threading.Event()
    with make_ready_client(None, None) as web_client:
        web_client.app.state.database_check = lambda: release.wait(30)
        try:
            # When
            response = web_client.get("/readyz")
        finally:
            release.set()
    # Then
    body = assert_error(response, 503, "not_ready")
    assert body["database"] == "timeout" and body["kafka"] == "ok"
