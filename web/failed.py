"""Failed messages of the ``users`` queue, listed and acted on: the operator page's list, replay and purge.

``routes`` is added to the application by ``web.app``.  The operations are the broker's own
(:class:`~dramatiq_kafka_broker.KafkaAdmin` through :func:`~web.broker_features.operations_of`), the same
that ``python -m pipeline dlq`` runs; blocking Kafka calls run in the thread pool.

=======  ====================  ======================================================================
GET      /api/failed           a page of failed messages, and a snapshot of every page listed so far
POST     /api/failed/replay    put exactly the messages of a snapshot back on the queue
POST     /api/failed/purge     delete exactly the messages of a snapshot
=======  ====================  ======================================================================

``GET /api/failed?limit=50&after=<snapshot>`` answers ``200``::

    {"queue": "users",
     "held": 12,                   # failed messages the topic holds now
     "items": [{"id": "0-12", "partition": 0, "offset": 12, "failed_at": "2026-12-06T19:00:00Z",
                "actor": "persist_users", "message_id": "...", "reason": "OperationalError: ...",
                "records": 3}],    # actor, message_id, records: null for a record that is not a message
     "listed": 3,                  # messages the snapshot covers: this page and every page before it
     "snapshot": "f1.W1swLDEyLDE1XV0",
     "more": false}                # whether the topic holds messages past the snapshot

``limit`` is 1..500 (default 50).  The next page is ``?after=<snapshot>``; its snapshot covers both pages.

``POST /api/failed/replay`` and ``POST /api/failed/purge`` take ``application/json``
``{"snapshot": "<snapshot>"}`` and answer ``200 {"replayed": n, "left": m}`` (``left``: records that are
not Dramatiq messages, and those after them in their partition: purge them) and ``200 {"purged": n}``.

A snapshot is, per partition of the failed-message topic, the offsets listed: ``[first, end)``.  Replay
and purge act on those messages only, whatever arrived since; Kafka removes records only from a partition's
start, so a snapshot always starts at the first message of each partition.  A client may build one by hand
(base64url of ``[[partition, first, end], ...]`` after ``f1.``): it is checked against the topic, not signed.

Errors (``{"error": {"code", "message"}}``): ``400 invalid_parameter`` (``limit``), ``400
invalid_snapshot`` (unreadable, or naming messages the topic does not hold), ``409 failed_messages_changed``
(messages of the snapshot were replayed, purged or expired since: list again), ``401`` without the bearer
token when ``API_TOKEN`` is set, ``413``/``415``/``400 malformed_json``/``422 invalid_body`` for a body that
is too big, not JSON or has no snapshot, ``404 no_failed_topic`` on a broker without one (not Kafka), ``503
kafka_unavailable`` when Kafka does not answer (or refuses for want of a right: the message says which).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dramatiq import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dramatiq_kafka_broker import (
    FailedMessage,
    FailedMessagesChanged,
    FailedRanges,
    UnknownFailedMessages,
    check_ranges,
)
from pipeline.contract import PERSIST_USERS, PROCESS_USER, PROCESS_USERS, QUEUE, VALIDATE_USERS
from web.bodies import ByteLimit, read_body
from web.broker_features import BrokerOperations, Unknown, ask_kafka, operations_of
from web.errors import (
    FailedMessagesMoved,
    InvalidBody,
    InvalidSnapshot,
    NoFailedTopic,
    UnsupportedMediaType,
)
from web.parsing import parse_object
from web.reads import int_parameter, retry_after

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Default and largest ``limit`` of ``GET /api/failed``, in messages.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Longest snapshot accepted, in characters (about 200 partitions).
MAX_SNAPSHOT_CHARS = 8192
#: Largest body of a replay or purge, in bytes: a snapshot and some room.
MAX_ACTION_BODY_BYTES = 16 * 1024
#: Seconds a listing may spend reading Kafka before it answers 503.
LIST_TIMEOUT_SECONDS = 15.0
#: Prefix of a snapshot: its format's version.
SNAPSHOT_PREFIX = "f1."
#: Largest offset or partition in a snapshot (Kafka's are signed 64-bit and 32-bit integers).
_MAX_OFFSET = 2**63 - 1
_MAX_PARTITION = 2**31 - 1

# One replay or purge at a time in this process: a second with the same snapshot then finds it stale (409)
# instead of replaying the same messages again.
_ACTING = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The failed messages an operator was shown: per partition, the offsets ``(first, end)``."""

    ranges: FailedRanges

    def encode(self) -> str:
        """The snapshot as clients carry it: ``f1.`` and base64url of ``[[partition, first, end], ...]``."""
        triples = [[p, first, end] for p, (first, end) in sorted(self.ranges.items())]
        packed = json.dumps(triples, separators=(",", ":")).encode()
        return SNAPSHOT_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Snapshot:
        """Read a snapshot; 400 ``invalid_snapshot`` for anything that is not one."""
        if len(text) > MAX_SNAPSHOT_CHARS or not text.startswith(SNAPSHOT_PREFIX) or not text.isascii():
            raise InvalidSnapshot("not a snapshot of failed messages: list them again (GET /api/failed)")
        body = text[len(SNAPSHOT_PREFIX) :]
        try:
            triples = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, binascii.Error, RecursionError):  # RecursionError: nested too deep
            raise InvalidSnapshot("the snapshot cannot be read: list the failed messages again") from None
        ranges: FailedRanges = {}
        for triple in triples if isinstance(triples, list) else [None]:
            if not _is_triple(triple) or triple[0] in ranges:
                raise InvalidSnapshot("the snapshot cannot be read: list the failed messages again")
            ranges[triple[0]] = (triple[1], triple[2])
        return cls(ranges)

    @property
    def listed(self) -> int:
        """How many messages it covers."""
        return sum(end - first for first, end in self.ranges.values())


def _is_triple(value: Any) -> bool:
    """Whether ``value`` is ``[partition, first, end]`` with ``0 <= first <= end``."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(type(n) is int for n in value)
        and 0 <= value[0] <= _MAX_PARTITION
        and 0 <= value[1] <= value[2] <= _MAX_OFFSET
    )


def record_count(message: Message[Any] | None) -> int | None:
    """How many submissions a failed message carries, by the payload of its actor (``pipeline.contract``);
    None when not known."""
    if message is None:
        return None
    args = message.args
    try:
        if message.actor_name == PROCESS_USER:
            return 1
        if message.actor_name == PROCESS_USERS:
            return len(args[0]["records"])
        if message.actor_name in {VALIDATE_USERS, PERSIST_USERS}:
            return len(args[0])
    except (IndexError, KeyError, TypeError):  # a message of another shape: nothing to count
        return None
    return None


def item_json(failed: FailedMessage) -> dict[str, Any]:
    """One failed message as ``GET /api/failed`` lists it."""
    message = failed.message
    return {
        "id": f"{failed.partition}-{failed.offset}",
        "partition": failed.partition,
        "offset": failed.offset,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(failed.timestamp, 0) / 1000)),
        "actor": message.actor_name if message is not None else None,
        "message_id": message.message_id if message is not None else None,
        "reason": failed.reason,
        "records": record_count(message),
    }


def list_page(operations: BrokerOperations, after: Snapshot | None, limit: int) -> dict[str, Any]:
    """A page of failed messages after ``after`` (from the start without it), and the snapshot of
    everything listed so far (blocking).

    Raises:
      FailedMessagesChanged: If messages of ``after`` were removed since.
      UnknownFailedMessages: If ``after`` names messages the topic does not hold.
    """
    held = operations.failed_ranges(QUEUE)
    seen = {} if after is None else dict(after.ranges)
    if after is not None:
        check_ranges(held, seen)
    for partition, (first, _) in held.items():
        if partition not in seen or seen[partition][0] == seen[partition][1]:
            seen[partition] = (first, first)  # nothing listed there yet: from what it holds now
    upto = {p: end for p, (_, end) in seen.items()}
    items = []
    for failed in operations.failed_messages(
        QUEUE, limit=limit, within={p: (upto[p], end) for p, (_, end) in held.items()}
    ):
        items.append(item_json(failed))
        upto[failed.partition] = failed.offset + 1
    snapshot = Snapshot({p: (seen[p][0], upto[p]) for p in held})
    return {
        "queue": QUEUE,
        "held": sum(end - first for first, end in held.values()),
        "items": items,
        "listed": snapshot.listed,
        "snapshot": snapshot.encode(),
        "more": any(upto[p] < end for p, (_, end) in held.items()),
    }


async def _ask(request: Request, call: Callable[[], T], *, timeout: float | None) -> T:
    """Run a blocking call of the broker's operations in the thread pool; Kafka's and the snapshot's
    failures become their API errors.  ``timeout`` (seconds) only for calls that change nothing."""
    try:
        return await ask_kafka(
            call,
            what="failed messages",
            timeout=timeout,
            retry_after=retry_after(request),
            passing=(Unknown, FailedMessagesChanged, UnknownFailedMessages),
        )
    except Unknown as exc:
        raise NoFailedTopic(f"{exc}: failed messages are kept only by the Kafka broker") from None
    except FailedMessagesChanged as exc:
        raise FailedMessagesMoved(f"{exc}; list them again") from None
    except UnknownFailedMessages as exc:
        raise InvalidSnapshot(f"the snapshot names failed messages the topic does not hold: {exc}") from None


async def list_failed(request: Request) -> Response:
    """``GET /api/failed``: a page of the failed-message topic and the snapshot of what was listed."""
    limit = int_parameter(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    raw = request.query_params.get("after")
    after = Snapshot.decode(raw) if raw else None
    operations = operations_of(request.app.state.broker)
    page = await _ask(request, lambda: list_page(operations, after, limit), timeout=LIST_TIMEOUT_SECONDS)
    return JSONResponse(page)


async def _requested_snapshot(request: Request) -> Snapshot:
    """The snapshot of a replay or purge body: ``application/json`` ``{"snapshot": "f1...."}``."""
    media, *parameters = request.headers.get("content-type", "").lower().split(";")
    charset = next(
        (v for k, _, v in (p.partition("=") for p in parameters) if k.strip() == "charset"), "utf-8"
    )
    # JSON only: a cross-site form cannot send it without the browser asking first (CORS).
    if media.strip() != "application/json" or charset.strip().strip('"') not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType(
            f"send {{'snapshot': ...}} as UTF-8 application/json, not {media or 'nothing'}"
        )
    ByteLimit(MAX_ACTION_BODY_BYTES).check_declared(request)
    body = parse_object(await read_body(request, MAX_ACTION_BODY_BYTES))
    snapshot = body.get("snapshot")
    if not isinstance(snapshot, str) or not snapshot:
        raise InvalidBody('the body needs "snapshot": the snapshot of GET /api/failed')
    return Snapshot.decode(snapshot)


def _acting(action: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        with _ACTING:
            return action()

    return run


async def replay_failed(request: Request) -> Response:
    """``POST /api/failed/replay``: put the messages of a snapshot back on the queue, retries reset."""
    snapshot = await _requested_snapshot(request)
    operations = operations_of(request.app.state.broker)
    replayed, left = await _ask(
        request, _acting(lambda: operations.replay_failed(QUEUE, within=snapshot.ranges)), timeout=None
    )
    logger.info("replayed %d failed message(s), %d left", replayed, left)
    return JSONResponse({"replayed": replayed, "left": left})


async def purge_failed(request: Request) -> Response:
    """``POST /api/failed/purge``: delete the messages of a snapshot."""
    snapshot = await _requested_snapshot(request)
    operations = operations_of(request.app.state.broker)
    purged = await _ask(
        request, _acting(lambda: operations.purge_failed(QUEUE, within=snapshot.ranges)), timeout=None
    )
    logger.info("purged %d failed message(s)", purged)
    return JSONResponse({"purged": purged})


#: The routes to add to the application.
routes: list[BaseRoute] = [
    Route("/api/failed", list_failed, methods=["GET"], name="failed_messages"),
    Route("/api/failed/replay", replay_failed, methods=["POST"], name="replay_failed"),
    Route("/api/failed/purge", purge_failed, methods=["POST"], name="purge_failed"),
]
