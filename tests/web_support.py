"""Helpers of the web's unit tests: an app on Dramatiq's StubBroker, and readers of what it enqueued."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import anyio
import dramatiq
import httpx
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from pipeline.settings import WebSettings
from web.app import create_app

#: Small limits, so that the tests can cross them cheaply.
TEST_SETTINGS = WebSettings(
    api_token="",
    id_secret="test-secret",
    max_body_bytes=16 * 1024,
    max_batch_bytes=64 * 1024,
    max_batch_records=50,
    batch_chunk_size=3,
    retry_after_seconds=7,
)


def make_client(broker: dramatiq.Broker | None = None, **overrides: Any) -> TestClient:
    """A TestClient of an app on ``broker`` (a fresh StubBroker by default) with ``TEST_SETTINGS``."""
    broker = broker or StubBroker()
    app = create_app(broker, config=replace(TEST_SETTINGS, **overrides), database_check=lambda: None)
    return TestClient(app, raise_server_exceptions=False)


def enqueued(broker: StubBroker, queue_name: str = "users") -> list[dramatiq.Message[Any]]:
    """Every message waiting on a StubBroker queue, in order (drains the queue)."""
    queue = broker.queues[queue_name]
    messages = []
    while not queue.empty():
        messages.append(dramatiq.Message.decode(queue.get_nowait()))
    return messages


def batch_records(messages: list[dramatiq.Message[Any]]) -> list[dict[str, Any]]:
    """The records of every chunk of a batch (``validate_users`` with a batch id), in order."""
    return [
        r for m in messages if m.actor_name == "validate_users" and m.args[1] is not None for r in m.args[0]
    ]


def single_records(messages: list[dramatiq.Message[Any]]) -> list[dict[str, Any]]:
    """The records of every message of single posts (``validate_users`` without a batch id), in order."""
    return [r for m in messages if m.actor_name == "validate_users" and m.args[1] is None for r in m.args[0]]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check that ``response`` is an error of the one documented shape, and return its body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def call_streaming(
    app: Any, method: str, path: str, content_type: str, chunks: Iterator[bytes]
) -> tuple[int, int]:
    """Call the ASGI app directly with a chunked body (TestClient reads bodies whole before sending).

    Returns the response status and how many chunks the app pulled, to show it stopped reading early.
    """
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return status, pulled


class FailingBroker(StubBroker):
    """A StubBroker whose ``enqueue`` fails as a broker does when Kafka is down, after ``succeed`` sends."""

    def __init__(self, *, succeed: int = 0, error: Exception | None = None) -> None:
        super().__init__()
        self.remaining = succeed
        self.error = error or dramatiq.errors.ConnectionClosed("Kafka is down")

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        if self.remaining <= 0:
            raise self.error
        self.remaining -= 1
        return super().enqueue(message, delay=delay)


class HangingBroker(StubBroker):
    """A StubBroker whose ``enqueue`` blocks until ``release`` is set (a Kafka client stuck bootstrapping)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        self.release.wait(30)
        return super().enqueue(message, delay=delay)


class BatchingBroker(StubBroker):
    """A StubBroker with ``enqueue_many``, recording the size of every group it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[int] = []

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> list[dramatiq.Message[Any]]:
        self.groups.append(len(messages))
        return [self.enqueue(m) for m in messages]


#: Long enough that no test ends by waiting for it.
LONG_WAIT_S = 30


class HeldBroker(StubBroker):
    """A StubBroker that holds its first send until ``release`` is set; the sends after it succeed, or fail
    as when Kafka is down if ``fail_later`` is set.  ``sizes`` lists the records of each message sent."""

    def __init__(self, *, fail_later: bool = False) -> None:
        super().__init__()
        self.fail_later = fail_later
        self.release = threading.Event()
        self.holding = threading.Event()
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        with self._lock:
            first = not self.holding.is_set()
            self.holding.set()
        if first:
            self.release.wait(LONG_WAIT_S)
        elif self.fail_later:
            raise dramatiq.errors.ConnectionClosed("Kafka is down")
        with self._lock:
            self.sizes.append(len(message.args[0]))
        return super().enqueue(message, delay=delay)


Scenario = Callable[[httpx.AsyncClient, Any], Awaitable[Any]]


def run(app: Any, scenario: Scenario) -> Any:
    """Run ``scenario(client, app)`` on an event loop with an HTTP client of ``app``."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await scenario(client, app)

    return asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (checked every millisecond, for at most ``LONG_WAIT_S``)."""
    async with asyncio.timeout(LONG_WAIT_S):
        while not condition():
            await asyncio.sleep(0.001)
