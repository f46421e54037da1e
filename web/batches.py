"""Accepting a batch: parse the body as it streams in and send it on in chunks.

The request body is read on the event loop, but parsing and sending (``broker.enqueue`` blocks until Kafka
acknowledges) are synchronous, so the whole of :func:`accept_records` runs in a worker thread that pulls
the body's chunks from the event loop one at a time (:class:`web.bodies.BodyChunks`).  Memory stays bounded
by one group of chunks whatever the size of the body.

Records are sent :data:`GROUP_CHUNKS` chunks at a time, and only once a group is full: a small batch with
a syntax error halfway is refused (400) before anything is sent.  A larger one may have had groups sent
already when the error is found; those records are processed (their ids are derived from a batch id the
client never got), and a resend of the fixed batch is deduplicated by the users' unique key.  The same
holds when Kafka fails midway (503).  ``register_batch`` is sent last, after every chunk is durable, and
only then is the batch answered ``202``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.contract import BatchRecord
from web import parsing
from web.enqueue import Enqueuer, chunk_message, register_batch_message
from web.errors import ApiError, InvalidBody, PayloadTooLarge
from web.ids import record_id

logger = logging.getLogger(__name__)

#: Chunks handed to the broker in one ``enqueue_many`` call (one wait for Kafka's acknowledgements).
GROUP_CHUNKS = 16

Parser = Callable[..., Iterator[parsing.ParsedRecord]]

#: The batch forms: source name (as told to the validator) and parser.
PARSERS: dict[str, Parser] = {
    "json": parsing.iter_json_array,
    "ndjson": parsing.iter_ndjson,
    "csv": parsing.iter_csv,
}


def _batch_record(batch_id: str, record: parsing.ParsedRecord, *, first_of_chunk: bool) -> BatchRecord:
    """The record as ``validate_users`` takes it.  What could not be parsed travels as ``raw``, and a CSV
    header on each chunk's first record, so that the worker can keep an invalid record for the
    invalid-rows file (``web/invalid_rows.py``)."""
    sent: BatchRecord = {
        "id": record_id(batch_id, record.row),
        "row": record.row,
        "data": record.data,
        "errors": record.errors,  # type: ignore[typeddict-item]
    }
    if record.raw is not None:
        sent["raw"] = record.raw
    if first_of_chunk and record.header is not None:
        sent["header"] = record.header
    return sent


def accept_records(
    chunks: Iterable[bytes],
    *,
    source: str,
    batch_id: str,
    enqueuer: Enqueuer,
    chunk_size: int,
    max_records: int,
    max_record_bytes: int,
) -> int:
    """Parse a batch body of form ``source`` and send it as chunks, then ``register_batch``; return its count.

    Blocking: call it in a worker thread.  Raises the parsers' errors (400/413/422), ``PayloadTooLarge``
    past ``max_records`` records, ``InvalidBody`` for an empty batch and ``QueueUnavailable`` (503).
    """
    records = PARSERS[source](chunks, max_record_bytes=max_record_bytes)
    count = 0
    chunk: list[dict[str, Any]] = []
    group: list[Any] = []
    sent_chunks = 0
    try:
        for record in records:
            count += 1
            if count > max_records:
                raise PayloadTooLarge(f"a batch may hold at most {max_records} records")
            chunk.append(_batch_record(batch_id, record, first_of_chunk=not chunk))
            if len(chunk) >= chunk_size:
                group.append(chunk_message(batch_id, source, chunk))
                chunk = []
                if len(group) >= GROUP_CHUNKS:
                    enqueuer.send_many(group)
                    sent_chunks += len(group)
                    group = []
        if count == 0:
            raise InvalidBody("the batch holds no records")
        if chunk:
            group.append(chunk_message(batch_id, source, chunk))
        enqueuer.send_many(group)
        sent_chunks += len(group)
        enqueuer.send_many([register_batch_message(batch_id, count, source)])
    except ApiError as exc:
        if sent_chunks:
            # Those records will be processed; say so, so that the outcome is traceable.
            logger.warning(
                "batch %s refused (%s) after %d chunks were sent: %s",
                batch_id,
                exc.code,
                sent_chunks,
                exc.message,
            )
        raise
    logger.info("accepted batch %s: %d records (%s) in %d chunks", batch_id, count, source, sent_chunks)
    return count
