"""The HTTP load generator of ``bench/pipeline.py``: httpx on asyncio, closed loop or open loop.

* :func:`closed_loop` keeps ``concurrency`` requests in flight until every body is sent: the most the
  server takes (its throughput).
* :func:`open_loop` starts requests at a fixed rate whatever the answers, and measures each latency from
  the moment its request was *due*, so a server that falls behind shows it in the figures instead of
  slowing the load down (no coordinated omission).

Both send pre-serialised JSON bodies to ``POST /api/user`` and count every answer but 202 as an error.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field

import httpx

#: Connections the client may open: more than the requests ever in flight, so the pool never queues them.
MAX_CONNECTIONS = 512
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


def _client(base_url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits)


async def _post(client: httpx.AsyncClient, body: bytes, result: LoadResult, since: float) -> None:
    result.sent += 1
    try:
        response = await client.post("/api/user", content=body, headers=JSON)
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


async def _closed_loop(base_url: str, bodies: list[bytes], concurrency: int) -> LoadResult:
    result = LoadResult()
    pending = iter(bodies)
    async with _client(base_url) as client:

        async def sender() -> None:
            for body in pending:  # one shared iterator: each body is taken by exactly one sender
                await _post(client, body, result, time.monotonic())

        result.started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return result


async def _open_loop(base_url: str, bodies: list[bytes], rate: float) -> LoadResult:
    result = LoadResult()
    tasks = []
    async with _client(base_url) as client:
        result.started = time.monotonic()
        for index, body in enumerate(bodies):
            due = result.started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(client, body, result, due)))
        await asyncio.gather(*tasks)
    return result


def closed_loop(base_url: str, bodies: list[bytes], *, concurrency: int) -> LoadResult:
    """Send every body with ``concurrency`` requests in flight; latencies from each request's start."""
    return asyncio.run(_closed_loop(base_url, bodies, concurrency))


def open_loop(base_url: str, bodies: list[bytes], *, rate: float) -> LoadResult:
    """Start one request every ``1/rate`` seconds (``len(bodies)/rate`` seconds in all); latencies from
    each request's due time."""
    return asyncio.run(_open_loop(base_url, bodies, rate))
