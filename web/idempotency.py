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
sees.  Only keyed posts touch the table (``web/idempotency_rows.py``), twice: a claim (``INSERT ... ON
CONFLICT DO NOTHING``) before the enqueue and a settlement (``UPDATE``) after it, each one statement for the
keyed posts that arrive together; keyed single posts are then sent together, as one Kafka message, as
unkeyed ones are.  The settlement is written after the ``202`` has gone out, without waiting for
PostgreSQL's disk; until it is, a retry that reaches the same process is answered from memory, one that
reaches another gets the ``409``.  The process that claims a key holds it until ``locked_until``, which it
renews while it works; if it dies, the lock runs out and the next retry takes the submission over.  When
PostgreSQL cannot be reached, a keyed post is answered ``503 database_unavailable`` so that the client
retries with the same key; posts without a key never touch the database.

The caller is the bearer token when ``API_TOKEN`` is set (its SHA-256 is stored, never the token); without
it every client shares one scope.  Rows past the retention window are deleted in the background, a few at
a time, once every :data:`PRUNE_EVERY` claims of a process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import IO, Any

import peewee
from starlette.requests import Request

from pipeline.settings import WebSettings
from web.auth import bearer_token
from web.bodies import READ_SIZE
from web.enqueue import Enqueuer
from web.errors import ApiError, IdempotencyKeyInFlight, InvalidIdempotencyKey, ServiceUnavailable
from web.group_commit import GroupCommit
from web.idempotency_rows import (
    BATCH,
    SINGLE,
    Accepting,
    Claim,
    Claiming,
    KeyRows,
    Replay,
)
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

__all__ = ["BATCH", "SINGLE", "Fingerprint", "IdempotencyKeys", "caller_scope", "requested_key"]


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


#: Longest wait of a key's write for others to share its statement, and most writes in one statement.
GROUP_LINGER_S = 0.005
GROUP_MAX_ROWS = 200
#: Wait of every settlement for others: nobody waits for it (it goes after the 202), so it waits longer,
#: for fewer and larger statements.
SETTLE_LINGER_S = 0.05
SETTLE_MAX_ROWS = 1000
#: Claims of a process between two deletions of expired rows.
PRUNE_EVERY = 1000


class IdempotencyKeys:
    """The keys of one application's keyed posts, in PostgreSQL (``app.state.idempotency_keys``).

    The claims, and the settlements as accepted, of the keyed posts that arrive together are written as
    one statement each (:class:`~web.group_commit.GroupCommit`), so that a keyed post costs the database
    a share of two round trips, not two of its own.  Keyed single posts go further: the posts of one
    group are claimed together and then sent together, as one Kafka message, as posts without a key are.

    Parameters:
      retention_s(int): Seconds a key is remembered after its first use.
      lock_s(float): Seconds a claim holds its key unless renewed: the enqueue deadline and a margin.
      retry_after(int): Most seconds a ``409`` asks to wait; ``Retry-After`` of a ``503``.
    """

    def __init__(self, *, retention_s: int, lock_s: float, retry_after: int) -> None:
        self.rows = KeyRows(retention_s=retention_s, lock_s=lock_s, retry_after=retry_after)
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

    @property
    def waiting_singles(self) -> int:
        """Keyed single posts waiting to be claimed and sent with others (0 before the first)."""
        writer = self._writers.get("singles")
        return writer.waiting if writer is not None else 0

    @property
    def lock_s(self) -> float:
        """Seconds a claim holds its key unless renewed (kept by :class:`KeyRows`)."""
        return self.rows.lock_s

    @lock_s.setter
    def lock_s(self, value: float) -> None:
        self.rows.lock_s = value

    # --- Writes, each one statement for the posts that arrive together --------------------------------------

    async def _database(self, work: Callable[[], object]) -> None:
        await run_database_work(work, where="idempotency keys", retry_after=self.retry_after)

    async def _write_claims(self, claims: list[Claiming]) -> None:
        await self._database(lambda: self.rows.claim_all(claims))

    async def _send_singles(self, group: list[Claiming], enqueuer: Enqueuer) -> None:
        """Claim the keys of single posts that came together, then send the records of the claims won as
        one message, holding their keys until it is durable; a failed send is left on each (``failure``)."""
        await self._write_claims(group)
        won = [c for c in group if isinstance(c.outcome, Claim)]
        if not won:
            return
        claims = [c.outcome for c in won if isinstance(c.outcome, Claim)]
        release = self._hold(claims)
        try:
            records = [c.record(claim.submission_id) for c, claim in zip(won, claims, strict=True)]
            await enqueuer.send_records(records)
        except Exception as exc:  # QueueUnavailable, or a bug: the posts answer it, their keys go unsure
            for claiming in won:
                claiming.failure = exc
            await self._best_effort("settle", lambda: self.rows.unsure(claims))
        finally:
            release()

    async def _write_accepts(self, accepted: list[Accepting]) -> None:
        """Settle claims as accepted, after their posts were answered; until then this process answers a
        retry itself.  Not written (the database went away, the process died): the lock runs out and a
        retry takes the submission over, with its id."""
        try:
            await self._database(lambda: self.rows.accept_all(accepted))
        except (ServiceUnavailable, peewee.DatabaseError) as exc:
            logger.warning("could not settle %d idempotency keys: %s", len(accepted), exc)
        finally:
            for accepting in accepted:
                place = (accepting.claim.scope, accepting.claim.key)
                if place in self._answered and self._answered[place][1] is accepting.answer:
                    del self._answered[place]  # (and not the answer of a later claim of the key)

    def _writer(
        self,
        name: str,
        send: Callable[[list[Any]], Awaitable[None]],
        *,
        linger: float = GROUP_LINGER_S,
        max_records: int = GROUP_MAX_ROWS,
        max_bytes: int = GROUP_MAX_ROWS,
        eager: bool = True,
    ) -> GroupCommit[Any]:
        loop = asyncio.get_running_loop()
        writer = self._writers.get(name)
        if writer is None or writer.loop is not loop:  # one per event loop (an app may see several)
            writer = self._writers[name] = GroupCommit(
                send, linger=linger, max_records=max_records, max_bytes=max_bytes, eager=eager
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
            self._start(self._best_effort("delete expired rows of", self.rows.prune))

    def _hold(self, claims: list[Claim]) -> Callable[[], None]:
        """Renew the claims' locks every third of a lock (a batch may take longer than one lock) until the
        function returned is called.  A timer, not a task, until the first renewal is due: most posts end
        long before."""

        async def renew() -> None:
            while True:
                await self._best_effort("renew", lambda: self.rows.renew(claims))
                await asyncio.sleep(self.lock_s / 3)

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        timer = loop.call_later(self.lock_s / 3, lambda: tasks.append(loop.create_task(renew())))

        def release() -> None:
            timer.cancel()
            for task in tasks:
                task.cancel()

        return release

    # --- The posts ------------------------------------------------------------------------------------------

    def _decided(self, claiming: Claiming) -> dict[str, Any] | Claim:
        """The answer to replay for a claimed post, or the claim it won; raise the error it is answered."""
        found = claiming.outcome
        answered = self._answered.get((claiming.scope, claiming.key))
        if isinstance(found, IdempotencyKeyInFlight) and answered and answered[0] == claiming.fingerprint:
            return answered[1]  # answered by this process, its settlement still being written
        if isinstance(found, ApiError):
            raise found
        assert found is not None
        if isinstance(found, Replay):
            return found.answer
        self._prune_now_and_then()
        if found.taken_over:
            logger.info("idempotency key taken over: enqueueing %s again", found.submission_id)
        return found

    def _settle_later(self, claiming: Claiming, claim: Claim, answer: dict[str, Any]) -> None:
        # Settled in the background: the 202 does not wait for it.
        self._answered[claiming.scope, claiming.key] = (claiming.fingerprint, answer)
        settlements = self._writer(
            "accepts",
            self._write_accepts,
            linger=SETTLE_LINGER_S,
            max_records=SETTLE_MAX_ROWS,
            max_bytes=SETTLE_MAX_ROWS,
            eager=False,
        )
        settlements.add(Accepting(claim, answer))

    async def submit_single(
        self,
        request: Request,
        key: str,
        fingerprint: Fingerprint,
        *,
        new_id: Callable[[], str],
        record: Callable[[str], Any],
        size: int,
        enqueuer: Enqueuer,
        accepted: Callable[[str], dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        """The ``202`` body of a keyed single post and whether it is a replay.  ``record(id)`` is the post's
        record under ``id``; it is sent with the keyed posts that come with it (``enqueuer``'s linger and
        bounds) unless the key was answered already; ``accepted(id)`` is the ``202`` body once it is."""
        scope = caller_scope(request)
        claiming = Claiming(scope, key, fingerprint.hexdigest(), SINGLE, new_id(), record=record)
        writer = self._writer(
            "singles",
            lambda group: self._send_singles(group, enqueuer),
            linger=enqueuer.linger_ms / 1000,
            max_records=enqueuer.max_records,
            max_bytes=enqueuer.max_group_bytes,
        )
        await writer.submit(claiming, size=size)
        found = self._decided(claiming)
        if not isinstance(found, Claim):
            return found, True
        if claiming.failure is not None:
            raise claiming.failure
        answer = accepted(found.submission_id)
        self._settle_later(claiming, found, answer)
        return answer, False

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
        found = self._decided(claiming)
        if not isinstance(found, Claim):
            return found, True
        release = self._hold([found])
        try:
            answer = await accept(found.submission_id)
        except ApiError as exc:
            if isinstance(exc, ServiceUnavailable):
                await self._best_effort("settle", lambda: self.rows.unsure([found]))
            else:  # refused as it was read (4xx): the key is free for a corrected post
                await self._best_effort("release", lambda: self.rows.release(found))
            raise
        except Exception:
            await self._best_effort("settle", lambda: self.rows.unsure([found]))
            raise
        finally:
            release()
        self._settle_later(claiming, found, answer)
        return answer, False
