"""The HTTP load generator of ``bench/pipeline.py``: httpx on asyncio, closed loop or open loop.

* :func:`closed_loop` keeps ``concurrency`` requests in flight until every body is sent: the most the
  server takes (its throughput).
* :func:`open_loop` starts requests at a fixed rate whatever the answers, and measures each latency from
  the moment its request was *due*, so a server that falls behind shows it in the figures instead of
  slowing the load down (no coordinated omission).

Both send pre-serialised JSON bodies to ``POST /api/user`` (each with its own headers when given: an
``Idempotency-Key`` per post) and count every answer but 202 as an error.

Two clients, chosen by ``client``: ``raw`` (the default) is a minimal HTTP/1.1 keep-alive client on asyncio
streams and uvloop, written for this; ``httpx`` is ``httpx.AsyncClient``.  On two cores the load generator
shares the CPU with everything it measures, and httpx costs about 2.8 ms of CPU a request (measured: it
held the bare endpoint to ~350 requests/s while the server was nearly idle); the raw client costs a
fraction of that, so that the figures describe the servers rather than the client.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

#: Connections the client may open: more than the requests ever in flight, so the pool never queues them.
MAX_CONNECTIONS = 512
#: Seconds an idle connection is kept: below uvicorn's ``--timeout-keep-alive`` (5 s).
KEEP_ALIVE_S = 3.0
#: Seconds a request may take before it counts as an error.
REQUEST_TIMEOUT_S = 30.0
JSON = {"content-type": "application/json"}


@dataclass
class LoadResult:
    """What one load run saw; times are ``time.monotonic()`` seconds."""

    sent: int = 0
    accepted: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = 0.0
    finished: float = 0.0  # when the last answer arrived
    latencies: list[float] = field(default_factory=list)  # seconds, of the 202 answers

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def rate(self) -> float:
        """202 answers per second over the whole run."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, share: float) -> float:
        """Latency at ``share`` (0..1) of the 202 answers, nearest rank; NaN when there are none."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
        return ordered[rank]


class _Answer:
    __slots__ = ("status_code",)

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class RawClient:
    """``POST`` over a pool of HTTP/1.1 keep-alive connections; just enough HTTP for our two servers
    (answers with ``Content-Length``; a ``Connection: close`` answer drops its connection).

    Like any pooling client it must not trust an idle connection: uvicorn closes those idle for
    :data:`KEEP_ALIVE_S` seconds, so older ones are dropped, and a request that fails on a reused connection
    before any answer arrived is sent once more on a new one.
    """

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._room = asyncio.Semaphore(MAX_CONNECTIONS)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < KEEP_ALIVE_S and not reader.at_eof():
                return reader, writer, True
            writer.close()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from None
        return reader, writer, False

    async def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> _Answer:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
            f"Content-Length: {len(content)}\r\n\r\n"
        ).encode() + content
        async with self._room:
            for attempt in (1, 2):
                reader, writer, reused = await self._connection()
                try:
                    writer.write(request)
                    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                    if reused and nothing and attempt == 1:
                        continue  # the server had closed that idle connection: send it again
                    raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
                except (asyncio.LimitOverrunError, TimeoutError) as exc:
                    writer.close()
                    raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
                lines = raw.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip().lower()
                try:
                    await reader.readexactly(int(fields.get("content-length", "0")))
                except (OSError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
                if fields.get("connection") == "close":
                    writer.close()
                else:
                    self._idle.append((reader, writer, time.monotonic()))
                return _Answer(status)
        raise AssertionError("unreachable")


def _client(base_url: str, kind: str) -> httpx.AsyncClient | RawClient:
    if kind == "raw":
        return RawClient(base_url)
    return _httpx_client(base_url)


def _httpx_client(base_url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits)


async def _post(
    client: Any, body: bytes, result: LoadResult, since: float, headers: dict[str, str] = JSON
) -> None:
    result.sent += 1
    try:
        response = await client.post("/api/user", content=body, headers=headers)
    except httpx.HTTPError as exc:
        result.errors[type(exc).__name__] += 1
        return
    now = time.monotonic()
    result.finished = max(result.finished, now)
    if response.status_code == 202:
        result.accepted += 1
        result.latencies.append(now - since)
    else:
        result.errors[str(response.status_code)] += 1


async def _closed_loop(
    base_url: str, bodies: list[bytes], concurrency: int, kind: str, headers: list[dict[str, str]] | None
) -> LoadResult:
    result = LoadResult()
    pending = iter(zip(bodies, headers or [JSON] * len(bodies), strict=True))
    async with _client(base_url, kind) as client:

        async def sender() -> None:
            for body, fields in pending:  # one shared iterator: each body is taken by exactly one sender
                await _post(client, body, result, time.monotonic(), fields)

        result.started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return result


async def _open_loop(base_url: str, bodies: list[bytes], rate: float, kind: str) -> LoadResult:
    result = LoadResult()
    tasks = []
    async with _client(base_url, kind) as client:
        result.started = time.monotonic()
        for index, body in enumerate(bodies):
            due = result.started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(client, body, result, due)))
        await asyncio.gather(*tasks)
    return result


def _run(coroutine: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def closed_loop(
    base_url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    client: str = "raw",
    headers: list[dict[str, str]] | None = None,
) -> LoadResult:
    """Send every body with ``concurrency`` requests in flight; latencies from each request's start.
    ``headers``, when given, are each body's (content type included)."""
    return _run(_closed_loop(base_url, bodies, concurrency, client, headers))


def open_loop(base_url: str, bodies: list[bytes], *, rate: float, client: str = "raw") -> LoadResult:
    """Start one request every ``1/rate`` seconds (``len(bodies)/rate`` seconds in all); latencies from
    each request's due time."""
    return _run(_open_loop(base_url, bodies, rate, client))
