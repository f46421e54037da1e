"""Group commit: the requests that arrive together are written as one (one Kafka message, one statement).

Used for single posts (one message to Kafka for the posts that arrive together, ``web/enqueue.py``) and for
the writes of ``Idempotency-Key`` rows (one statement for the keyed posts that arrive together,
``web/idempotency.py``): the cost of a round trip is shared by every request that waited for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, NamedTuple, TypeVar

Item = TypeVar("Item")


class _Waiting(NamedTuple, Generic[Item]):
    item: Item
    done: asyncio.Future[None] | None  # None: nobody waits for it (:meth:`GroupCommit.add`)


class GroupCommit(Generic[Item]):
    """Gathers the items that arrive together into one write, on one event loop.

    An item is written at once when no write is in flight, so that under no load it waits for nothing.
    While one is, the items that come wait for a write to end, at most ``linger`` seconds, and then go
    together.  Each item's :meth:`submit` returns once the write carrying it is done; when that write
    fails, every item in it raises the same error.  Not thread-safe: call it from its loop only.

    Parameters:
      send(callable): ``await send(items)`` writes those items as one and returns once they are durable
        (:meth:`web.enqueue.Enqueuer.send_records`); it may leave a result on each item.
      linger(float): Longest wait of an item for others, in seconds.
      max_records(int): Most items in one write.
      max_bytes(int): Most bytes (as the items' ``size`` says) in one write; a larger item goes alone.
      eager(bool): Write an item at once when no write is in flight (the default).  ``False``: every item
        waits ``linger`` for others, for writes nobody waits for, where fewer and larger writes are worth it.

    >>> coalescer = GroupCommit(enqueuer.send_records, linger=0.005, max_records=100, max_bytes=2**18)
    >>> await coalescer.submit(single_record(submission_id, data), size=len(body))
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[None]],
        *,
        linger: float,
        max_records: int,
        max_bytes: int,
        eager: bool = True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._send = send
        self.linger = linger
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.eager = eager
        self._waiting: list[_Waiting[Item]] = []
        self._waiting_bytes = 0
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()  # a reference to each task, until it is done

    @property
    def waiting(self) -> int:
        """Items waiting to be written."""
        return len(self._waiting)

    async def submit(self, item: Item, *, size: int = 1) -> None:
        """Write ``item`` (of ``size`` bytes) with the items around it; return once it is durable."""
        done = self.loop.create_future()
        self._add(item, size, done)
        await done

    def add(self, item: Item, *, size: int = 1) -> None:
        """Write ``item`` with the items around it, without waiting for it (``send`` deals with failures)."""
        self._add(item, size, None)

    async def drain(self) -> None:
        """Write what waits now, and return once every write has ended."""
        self._flush()
        while self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    def _add(self, item: Item, size: int, done: asyncio.Future[None] | None) -> None:
        if self._waiting and self._waiting_bytes + size > self.max_bytes:
            self._flush()
        self._waiting.append(_Waiting(item, done))
        self._waiting_bytes += size
        if (
            (self.eager and self._in_flight == 0)
            or len(self._waiting) >= self.max_records
            or self._waiting_bytes >= self.max_bytes
        ):
            self._flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.linger, self._flush)

    def _flush(self) -> None:
        """Write what waits, as one (counted in flight at once, so that the next item waits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting:
            return
        group, self._waiting, self._waiting_bytes = self._waiting, [], 0
        self._in_flight += 1
        task = self.loop.create_task(self._deliver(group))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _deliver(self, group: list[_Waiting[Item]]) -> None:
        try:
            await self._send([waiting.item for waiting in group])
        except asyncio.CancelledError:
            for waiting in group:
                if waiting.done is not None:
                    waiting.done.cancel()
            raise
        except Exception as exc:  # QueueUnavailable, or a bug: every item of the write is answered so
            for waiting in group:
                if waiting.done is not None and not waiting.done.done():
                    waiting.done.set_exception(exc)
        else:
            for waiting in group:
                # (an item whose request was cancelled meanwhile is done already)
                if waiting.done is not None and not waiting.done.done():
                    waiting.done.set_result(None)
        finally:
            self._in_flight -= 1
        # The items that came during this write have waited already: they go now, not at their timer.
        self._flush()
