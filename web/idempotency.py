"""``Idempotency-Key``: a retried post is the same submission, with the same id and the same answer.

A client may send ``Idempotency-Key: <1 to 255 visible ASCII characters>`` on ``POST /api/user`` and
``POST /api/users``.  Within ``IDEMPOTENCY_KEY_RETENTION_S`` of the key's first use, a post with the same key
from the same caller and with the same body (the same :class:`Fingerprint`) is the same submission:

* once the first was answered ``202``: the same body and ``Location``, plus ``Idempotent-Replayed: true``;
  nothing is enqueued again;
* after a ``503`` (an enqueue given up on, which may have reached Kafka all the same): enqueued again *with
  the same id*.  The worker keeps the first outcome of an id, so a post that did reach Kafka ends as it
  would have, never ``duplicate`` of itself;
* while the first is still being accepted: ``409 idempotency_key_in_flight`` with ``Retry-After``;
* with another body, or on the other route: ``422 idempotency_key_reused``.

Where keys are remembered: the table ``idempotency_keys`` (``pipeline.models.IdempotencyKey``), a row per
caller and key.  Not an id derived from the key and the body: ids carry their issue time, so a derived id
would need the first use's time stored anyway, and the 409 and the 422 need a state that every web process
sees.  Only keyed posts touch the table, twice: a claim (``INSERT ... ON CONFLICT DO NOTHING``) before the
enqueue and a settlement (``UPDATE``) after it, each one statement for the keyed posts that arrive together.
The settlement is written after the ``202`` has gone out; until it is, a retry that reaches the same process
is answered from memory, one that reaches another gets the ``409``.  The process that claims a key holds it
until ``locked_until``, which it renews while it works; if it dies, the lock runs out and the next retry takes
the submission over.  When PostgreSQL cannot be reached, a keyed post is answered ``503 database_unavailable``
so that the client retries with the same key; posts without a key never touch the database.

The caller is the bearer token when ``API_TOKEN`` is set (its SHA-256 is stored, never the token); without
it every client shares one scope.  Rows past the retention window are deleted in the background, a few at
a time, once every :data:`PRUNE_EVERY` claims of a process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import IO, Any

import peewee
from peewee import SQL, fn
from starlette.requests import Request

from pipeline.settings import WebSettings
from web.auth import bearer_token
from web.bodies import READ_SIZE
from web.errors import (
    ApiError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    ServiceUnavailable,
)
from web.group_commit import GroupCommit
from web.reads import run_database_work

logger = logging.getLogger(__name__)

#: The request header, and the header of an answer given again.
KEY_HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
#: A key: visible ASCII only (no space, no control character), so that it is the same bytes everywhere.
_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
#: Seconds a claim outlasts the enqueue deadline (the settlement's round trip); a longer post renews it.
#: Every time is PostgreSQL's ``now()``, so the clocks of the web hosts do not matter.
LOCK_MARGIN_S = 5.0
#: Claims of a process between two deletions of expired rows, and the most rows one deletion takes.
PRUNE_EVERY = 1000
PRUNE_ROWS = 10_000
#: Times a claim is tried again when the row it read changed under it (deleted, replaced).
CLAIM_ATTEMPTS = 3

#: The kinds of submission (``IdempotencyKey.kind``) and the states of a key (``IdempotencyKey.state``).
SINGLE, BATCH = "single", "batch"
IN_FLIGHT, ACCEPTED, UNSURE = "in_flight", "accepted", "unsure"


def requested_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, or ``None`` without one; 400 ``invalid_idempotency_key`` for an
    empty, too long or non-ASCII one, or for several."""
    values = request.headers.getlist(KEY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey("send one Idempotency-Key header, not several")
    if _VALID_KEY.fullmatch(values[0]) is None:
        raise InvalidIdempotencyKey(
            f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} visible ASCII characters (no space or control "
            "character)"
        )
    return values[0]


def caller_scope(request: Request) -> str:
    """The scope of the caller's keys: a SHA-256 of its bearer token when ``API_TOKEN`` is set (the
    middleware has checked it), else the one scope that every client shares."""
    token = b""
    if request.app.state.settings.api_token:
        token = bearer_token(request.headers.get("authorization")) or b""
    return hashlib.sha256(token).hexdigest()


class Fingerprint:
    """A SHA-256 of what makes a post the post it is: its kind (``single``/``batch``), the form of its body
    as the web reads it (``json``, ``ndjson``, ``csv``) and the body's bytes (an upload's file)."""

    def __init__(self, kind: str, form: str) -> None:
        self.kind = kind
        self._hash = hashlib.sha256(f"{kind}:{form}\n".encode())

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def of_file(self, file: IO[bytes]) -> str:
        """Add the rest of ``file``, rewind it to where it was, and return the digest.  Blocking."""
        start = file.tell()
        while chunk := file.read(READ_SIZE):
            self._hash.update(chunk)
        file.seek(start)
        return self.hexdigest()


@dataclass(frozen=True)
class Claim:
    """A key this request holds: its submission's id, and whether an earlier attempt had it first."""

    scope: str
    key: str
    submission_id: str
    taken_over: bool


@dataclass(frozen=True)
class Replay:
    """The ``202`` body a key's first post was answered."""

    answer: dict[str, Any]


@dataclass
class Claiming:
    """A keyed post waiting for its claim to be written (with the posts that came with it), then what its
    key made of it: a :class:`Claim`, a :class:`Replay`, or the error to answer."""

    scope: str
    key: str
    fingerprint: str
    kind: str
    fresh_id: str
    outcome: Claim | Replay | ApiError | None = None


@dataclass(frozen=True)
class _Accepting:
    """A claim to settle as accepted with the ``202`` body its post got."""

    claim: Claim
    answer: dict[str, Any]


#: The claims of the keyed posts that arrive together, as one statement: the rows inserted are the
#: claims won; a key already there (or twice in the group) is decided one by one.
_CLAIM_ROWS = (
    "INSERT INTO idempotency_keys (scope, key, fingerprint, kind, submission_id, state, locked_until, "
    "created_at) "
    "SELECT scope, key, fingerprint, kind, submission_id, 'in_flight', now() + make_interval(secs => %s), "
    "now() FROM json_to_recordset(%s::json) "
    "AS t(scope text, key text, fingerprint text, kind text, submission_id text) "
    "ON CONFLICT DO NOTHING RETURNING scope, key, submission_id"
)
#: Their settlements once answered 202, as one statement (json, not jsonb: the answer keeps its order).
_ACCEPT_ROWS = (
    "UPDATE idempotency_keys AS k SET state = 'accepted', answer = t.answer, locked_until = now() "
    "FROM json_to_recordset(%s::json) AS t(scope text, key text, submission_id text, answer json) "
    "WHERE k.scope = t.scope AND k.key = t.key AND k.submission_id = t.submission_id "
    "AND k.state = 'in_flight'"
)
#: Longest wait of a key's write for others to share its statement, and most writes in one statement.
GROUP_LINGER_S = 0.005
GROUP_MAX_ROWS = 200


def _model() -> Any:
    # Imported on first use, as web.reads does: the web starts without the models or the database.
    from pipeline.models import IdempotencyKey

    return IdempotencyKey


def _seconds(value: float) -> SQL:
    return SQL("make_interval(secs => %s)", [value])


class IdempotencyKeys:
    """The keys of one application's keyed posts, in PostgreSQL (``app.state.idempotency_keys``).

    The claims, and the settlements as accepted, of the keyed posts that arrive together are written as
    one statement each (:class:`~web.group_commit.GroupCommit`), so that a keyed post costs the database
    a share of two round trips, not two of its own.

    Parameters:
      retention_s(int): Seconds a key is remembered after its first use.
      lock_s(float): Seconds a claim holds its key unless renewed: the enqueue deadline and a margin.
      retry_after(int): Most seconds a ``409`` asks to wait; ``Retry-After`` of a ``503``.
    """

    def __init__(self, *, retention_s: int, lock_s: float, retry_after: int) -> None:
        self.retention_s = retention_s
        self.lock_s = lock_s
        self.retry_after = retry_after
        self._claims = 0
        self._background: set[asyncio.Task[None]] = set()  # a reference to each task, until it is done
        #: The answers of this process's posts whose settlement is not written yet, by (scope, key), with
        #: their fingerprints: a retry that comes meanwhile is answered from here.
        self._answered: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._writers: dict[str, GroupCommit[Any]] = {}

    @classmethod
    def of_web(cls, config: WebSettings) -> IdempotencyKeys:
        """The keys of a web app of ``config``: its retention, its enqueue deadline, its ``Retry-After``."""
        return cls(
            retention_s=config.idempotency_key_retention_s,
            lock_s=config.enqueue_timeout_seconds + LOCK_MARGIN_S,
            retry_after=config.retry_after_seconds,
        )

    # --- In the thread pool, inside a connection (web.reads.run_database_work) -----------------------------

    def _claim_all(self, claims: list[Claiming]) -> None:
        """Claim each key for its fresh id, or find what its row makes of the post (``outcome``)."""
        rows = [
            {
                "scope": c.scope,
                "key": c.key,
                "fingerprint": c.fingerprint,
                "kind": c.kind,
                "submission_id": c.fresh_id,
            }
            for c in claims
        ]
        database = _model()._meta.database
        won = set(database.execute_sql(_CLAIM_ROWS, (self.lock_s, json.dumps(rows))).fetchall())
        for claiming in claims:
            if (claiming.scope, claiming.key, claiming.fresh_id) in won:
                claiming.outcome = Claim(claiming.scope, claiming.key, claiming.fresh_id, taken_over=False)
                continue
            try:
                claiming.outcome = self._claim_used(claiming)
            except ApiError as exc:
                claiming.outcome = exc

    def _claim_used(self, claiming: Claiming) -> Claim | Replay:
        """What a key that has a row makes of the post: its first answer, a take-over, or a new claim
        when the row is gone or past its retention; raise ``IdempotencyKeyReused`` or ``...InFlight``."""
        Key = _model()
        for _ in range(CLAIM_ATTEMPTS):
            with Key._meta.database.atomic():
                found = self._decide(Key, claiming)
            if found is not None:
                return found
            inserted = (
                Key.insert(self._new_row(claiming), scope=claiming.scope, key=claiming.key)
                .on_conflict_ignore()
                .returning(Key.submission_id)
                .tuples()
                .execute()
            )
            if list(inserted):  # (the row was deleted meanwhile: the key is free)
                return Claim(claiming.scope, claiming.key, claiming.fresh_id, taken_over=False)
        raise IdempotencyKeyInFlight(
            "another request with this Idempotency-Key is being accepted", retry_after=1
        )

    def _new_row(self, claiming: Claiming) -> dict[Any, Any]:
        Key = _model()
        return {
            Key.fingerprint: claiming.fingerprint,
            Key.kind: claiming.kind,
            Key.submission_id: claiming.fresh_id,
            Key.state: IN_FLIGHT,
            Key.answer: None,
            Key.locked_until: fn.now() + _seconds(self.lock_s),
            Key.created_at: fn.now(),
        }

    def _decide(self, Key: Any, claiming: Claiming) -> Claim | Replay | None:
        """Within a transaction: what the key's row (locked for update) makes of this post; ``None`` when
        the row is gone (deleted meanwhile)."""
        lock_left = SQL("greatest(extract(epoch from locked_until - now()), 0)").alias("lock_left")
        expired = (Key.created_at < fn.now() - _seconds(self.retention_s)).alias("expired")
        scope, key = claiming.scope, claiming.key
        this = (Key.scope == scope) & (Key.key == key)
        row = Key.select(Key, lock_left, expired).where(this).for_update().first()
        if row is None:
            return None
        locked = row.state == IN_FLIGHT and row.lock_left > 0
        if row.expired and not locked:  # a key past its retention is free: a new submission
            Key.update(self._new_row(claiming)).where(this).execute()
            return Claim(scope, key, claiming.fresh_id, taken_over=False)
        if row.fingerprint != claiming.fingerprint or row.kind != claiming.kind:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with another body (or on the other route); use a new key "
                "for a new submission"
            )
        if row.state == ACCEPTED:
            return Replay(row.answer)
        if locked:
            wait = max(1, min(self.retry_after, math.ceil(row.lock_left)))
            raise IdempotencyKeyInFlight(
                "a request with this Idempotency-Key is being accepted; retry later", retry_after=wait
            )
        # Unsure (its enqueue failed, and may have reached Kafka), or its process died: the same id again.
        Key.update(state=IN_FLIGHT, locked_until=fn.now() + _seconds(self.lock_s)).where(this).execute()
        return Claim(scope, key, row.submission_id, taken_over=True)

    def _accept_all(self, accepted: list[_Accepting]) -> None:
        rows = [
            {
                "scope": a.claim.scope,
                "key": a.claim.key,
                "submission_id": a.claim.submission_id,
                "answer": a.answer,
            }
            for a in accepted
        ]
        _model()._meta.database.execute_sql(_ACCEPT_ROWS, (json.dumps(rows),))

    def _settle(self, claim: Claim, **changes: Any) -> None:
        """Change the claim's row while it is still in flight under this claim's id."""
        Key = _model()
        Key.update(**changes).where(
            (Key.scope == claim.scope)
            & (Key.key == claim.key)
            & (Key.submission_id == claim.submission_id)
            & (Key.state == IN_FLIGHT)
        ).execute()

    def _release(self, claim: Claim) -> None:
        Key = _model()
        Key.delete().where(
            (Key.scope == claim.scope)
            & (Key.key == claim.key)
            & (Key.submission_id == claim.submission_id)
            & (Key.state == IN_FLIGHT)
        ).execute()

    def _prune(self) -> None:
        Key = _model()
        old = (
            Key.select(SQL("ctid"))
            .where((Key.created_at < fn.now() - _seconds(self.retention_s)) & (Key.locked_until < fn.now()))
            .limit(PRUNE_ROWS)
        )
        deleted = Key.delete().where(SQL("ctid").in_(old)).execute()
        logger.info("deleted %d idempotency keys past their retention", deleted)

    # --- On the event loop --------------------------------------------------------------------------------

    async def _database(self, work: Callable[[], object]) -> None:
        await run_database_work(work, where="idempotency keys", retry_after=self.retry_after)

    async def _write_claims(self, claims: list[Claiming]) -> None:
        await self._database(lambda: self._claim_all(claims))

    async def _write_accepts(self, accepted: list[_Accepting]) -> None:
        """Settle claims as accepted, after their posts were answered; until then this process answers a
        retry itself.  Not written (the database went away, the process died): the lock runs out and a
        retry takes the submission over, with its id."""
        try:
            await self._database(lambda: self._accept_all(accepted))
        except (ServiceUnavailable, peewee.DatabaseError) as exc:
            logger.warning("could not settle %d idempotency keys: %s", len(accepted), exc)
        finally:
            for accepting in accepted:
                place = (accepting.claim.scope, accepting.claim.key)
                if place in self._answered and self._answered[place][1] is accepting.answer:
                    del self._answered[place]  # (and not the answer of a later claim of the key)

    def _writer(self, name: str, send: Callable[[list[Any]], Awaitable[None]]) -> GroupCommit[Any]:
        loop = asyncio.get_running_loop()
        writer = self._writers.get(name)
        if writer is None or writer.loop is not loop:  # one per event loop (an app may see several)
            writer = self._writers[name] = GroupCommit(
                send, linger=GROUP_LINGER_S, max_records=GROUP_MAX_ROWS, max_bytes=GROUP_MAX_ROWS
            )
        return writer

    async def _best_effort(self, what: str, work: Callable[[], object]) -> None:
        """Run ``work`` (database calls); a failure is logged, not raised: the lock runs out anyway."""
        try:
            await self._database(work)
        except (ServiceUnavailable, peewee.DatabaseError) as exc:
            logger.warning("could not %s an idempotency key: %s", what, exc)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the writes in the background (settlements, deletions): at shutdown, so that none is
        lost to a graceful stop."""
        for writer in list(self._writers.values()):
            if writer.loop is asyncio.get_running_loop():
                await writer.drain()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _prune_now_and_then(self) -> None:
        self._claims += 1
        if self._claims % PRUNE_EVERY == 0:
            self._start(self._best_effort("delete expired rows of", self._prune))

    def _hold(self, claim: Claim) -> Callable[[], None]:
        """Renew the claim's lock every third of it (a batch may take longer than one lock) until the
        function returned is called.  A timer, not a task, until the first renewal is due: most posts end
        long before."""

        def extend() -> None:
            self._settle(claim, locked_until=fn.now() + _seconds(self.lock_s))

        async def renew() -> None:
            while True:
                await self._best_effort("renew", extend)
                await asyncio.sleep(self.lock_s / 3)

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        timer = loop.call_later(self.lock_s / 3, lambda: tasks.append(loop.create_task(renew())))

        def release() -> None:
            timer.cancel()
            for task in tasks:
                task.cancel()

        return release

    async def submit(
        self,
        request: Request,
        key: str,
        fingerprint: Fingerprint,
        *,
        new_id: Callable[[], str],
        accept: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> tuple[dict[str, Any], bool]:
        """The ``202`` body of a keyed post and whether it is a replay.  ``accept(id)`` enqueues the post
        under ``id`` and returns its ``202`` body; it runs unless the key was answered already."""
        claiming = Claiming(caller_scope(request), key, fingerprint.hexdigest(), fingerprint.kind, new_id())
        await self._writer("claims", self._write_claims).submit(claiming)
        found = claiming.outcome
        answered = self._answered.get((claiming.scope, key))
        if isinstance(found, IdempotencyKeyInFlight) and answered and answered[0] == claiming.fingerprint:
            return answered[1], True  # answered by this process, its settlement still being written
        if isinstance(found, ApiError):
            raise found
        assert found is not None
        if isinstance(found, Replay):
            return found.answer, True
        self._prune_now_and_then()
        if found.taken_over:
            logger.info("idempotency key taken over: enqueueing %s again", found.submission_id)
        release = self._hold(found)
        try:
            answer = await accept(found.submission_id)
        except ServiceUnavailable:
            await self._unsure(found)
            raise
        except ApiError:  # refused as it was read (4xx): the key is free for a corrected post
            await self._best_effort("release", lambda: self._release(found))
            raise
        except Exception:
            await self._unsure(found)
            raise
        finally:
            release()
        # Settled in the background: the 202 does not wait for it, so that the posts in flight reach the
        # enqueue together (and share Kafka messages) as often as without keys.
        self._answered[claiming.scope, key] = (claiming.fingerprint, answer)
        self._writer("accepts", self._write_accepts).add(_Accepting(found, answer))
        return answer, False

    async def _unsure(self, claim: Claim) -> None:
        """The enqueue failed but may have reached Kafka: the next retry takes it over at once."""
        await self._best_effort("settle", lambda: self._settle(claim, state=UNSURE, locked_until=fn.now()))
