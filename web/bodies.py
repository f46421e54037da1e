"""Reading request bodies within a byte limit: the one place that counts a body's bytes and answers 413.

Every route that takes a body reads it through here: whole (:func:`read_body`), as it streams in
(:func:`body_stream`, and :class:`BodyChunks` for code in a worker thread), or from a spooled upload
(:func:`file_chunks`; :func:`spool` makes one of a body that must be read whole before it is used).  Each
refuses as soon as the limit is crossed, before the rest is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any

import anyio.from_thread
from starlette.requests import Request

from web.errors import PayloadTooLarge

#: Bytes read at a time from a spooled upload.
READ_SIZE = 64 * 1024
#: Bytes of a spooled body kept in memory; beyond them it moves to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024


class ByteLimit:
    """Counts the bytes of a body as they arrive; ``PayloadTooLarge`` once more than ``limit`` have.

    Parameters:
      limit(int): The most bytes allowed, in all.
      what(str): What is counted, for the message (``"the body"``).

    >>> counter = ByteLimit(4)
    >>> counter.count(b"abc")
    b'abc'
    """

    def __init__(self, limit: int, *, what: str = "the body") -> None:
        self.limit = limit
        self.what = what
        self.received = 0

    def count(self, chunk: bytes) -> bytes:
        """Add ``chunk`` to the total and return it; raise ``PayloadTooLarge`` past the limit."""
        self.received += len(chunk)
        if self.received > self.limit:
            raise self.too_large()
        return chunk

    def too_large(self) -> PayloadTooLarge:
        """The 413 of this limit."""
        return PayloadTooLarge(f"{self.what} is larger than {self.limit} bytes")

    def check_declared(self, request: Request) -> None:
        """413 at once when ``Content-Length`` announces more than the limit (the body is not read)."""
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            raise self.too_large()


async def body_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, refusing (413) as soon as more than ``limit`` bytes have come."""
    counter = ByteLimit(limit)
    stream = request.stream()
    try:
        async for chunk in stream:
            yield counter.count(chunk)
    finally:
        await stream.aclose()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as more than ``limit`` bytes have arrived."""
    return b"".join([chunk async for chunk in body_stream(request, limit)])


class BodyChunks:
    """An async stream of byte chunks as a *synchronous* iterable, for code running in a worker thread.

    Each chunk is fetched from the event loop with ``anyio.from_thread.run``; give it a
    :func:`body_stream`, which enforces the limit.
    """

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream

    async def _next(self) -> bytes:
        return await self._stream.__anext__()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(self._next)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk


def file_chunks(file: Any, *, limit: int) -> Iterator[bytes]:
    """A (spooled) binary file read in pieces, refusing (413) past ``limit`` bytes."""
    counter = ByteLimit(limit, what="the uploaded file")
    while chunk := file.read(READ_SIZE):
        yield counter.count(chunk)


def spool(chunks: Iterable[bytes], *, each: Callable[[bytes], object]) -> IO[bytes]:
    """Copy a body's chunks into a temporary file (in memory up to :data:`SPOOL_MEMORY_BYTES`), giving
    each chunk to ``each`` too; return the file, rewound.  Blocking: call it in a worker thread."""
    file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115  (the caller closes it)
    try:
        for chunk in chunks:
            each(chunk)
            file.write(chunk)
    except BaseException:
        file.close()
        raise
    file.seek(0)
    return file
