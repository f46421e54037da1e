"""The ``idempotency_keys`` table's statements: what a key's row makes of a post (``web/idempotency.py``).

Every method here runs in the thread pool, inside a connection (:func:`web.reads.run_database_work`), and
every time is PostgreSQL's ``now()``, so that the clocks of the web hosts do not matter.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from peewee import SQL, fn

from web.errors import ApiError, IdempotencyKeyInFlight, IdempotencyKeyReused

logger = logging.getLogger(__name__)

#: The kinds of submission (``IdempotencyKey.kind``) and the states of a key (``IdempotencyKey.state``).
SINGLE, BATCH = "single", "batch"
IN_FLIGHT, ACCEPTED, UNSURE = "in_flight", "accepted", "unsure"
#: Most rows one deletion of expired keys takes.
PRUNE_ROWS = 10_000
#: Times a claim is tried again when the row it read changed under it (deleted, replaced).
CLAIM_ATTEMPTS = 3


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
    key made of it: a :class:`Claim`, a :class:`Replay`, or the error to answer.  A single post also
    carries its record under an id (``record``), sent with the others of its group once claimed, and the
    error of that send (``failure``)."""

    scope: str
    key: str
    fingerprint: str
    kind: str
    fresh_id: str
    outcome: Claim | Replay | ApiError | None = None
    record: Any = None
    failure: BaseException | None = None


@dataclass(frozen=True)
class Accepting:
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
#: Not waited for on disk: a settlement lost to a crash of PostgreSQL leaves its key in flight, and the
#: next retry takes it over with its id once the lock runs out, as when the web process dies.
_ACCEPT_ROWS = (
    "SET LOCAL synchronous_commit TO OFF; "
    "UPDATE idempotency_keys AS k SET state = 'accepted', answer = t.answer, locked_until = now() "
    "FROM json_to_recordset(%s::json) AS t(scope text, key text, submission_id text, answer json) "
    "WHERE k.scope = t.scope AND k.key = t.key AND k.submission_id = t.submission_id "
    "AND k.state = 'in_flight'"
)
#: A change of the claims still in flight under their ids (renewed, left unsure), as one statement.
_CHANGE_CLAIMS = (
    "UPDATE idempotency_keys AS k SET state = %s, locked_until = now() + make_interval(secs => %s) "
    "FROM json_to_recordset(%s::json) AS t(scope text, key text, submission_id text) "
    "WHERE k.scope = t.scope AND k.key = t.key AND k.submission_id = t.submission_id "
    "AND k.state = 'in_flight'"
)


def _model() -> Any:
    # Imported on first use, as web.reads does: the web starts without the models or the database.
    from pipeline.models import IdempotencyKey

    return IdempotencyKey


def _seconds(value: float) -> SQL:
    return SQL("make_interval(secs => %s)", [value])


def _ids(claims: list[Claim]) -> str:
    return json.dumps([{"scope": c.scope, "key": c.key, "submission_id": c.submission_id} for c in claims])


class KeyRows:
    """The rows of the keys: claims, settlements, locks, and the deletion of expired rows.

    Parameters:
      retention_s(int): Seconds a key is remembered after its first use.
      lock_s(float): Seconds a claim holds its key unless renewed.
      retry_after(int): Most seconds a ``409`` asks to wait.
    """

    def __init__(self, *, retention_s: int, lock_s: float, retry_after: int) -> None:
        self.retention_s = retention_s
        self.lock_s = lock_s
        self.retry_after = retry_after

    def claim_all(self, claims: list[Claiming]) -> None:
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

    def accept_all(self, accepted: list[Accepting]) -> None:
        """Settle claims as accepted, each with the ``202`` body its post got."""
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

    def renew(self, claims: list[Claim]) -> None:
        """Hold the claims (still in flight under their ids) for another lock's time."""
        _model()._meta.database.execute_sql(_CHANGE_CLAIMS, (IN_FLIGHT, self.lock_s, _ids(claims)))

    def unsure(self, claims: list[Claim]) -> None:
        """Their enqueue failed but may have reached Kafka: free them for the next retry at once."""
        _model()._meta.database.execute_sql(_CHANGE_CLAIMS, (UNSURE, 0, _ids(claims)))

    def release(self, claim: Claim) -> None:
        """Forget a claim still in flight (its post was refused for what it holds)."""
        Key = _model()
        Key.delete().where(
            (Key.scope == claim.scope)
            & (Key.key == claim.key)
            & (Key.submission_id == claim.submission_id)
            & (Key.state == IN_FLIGHT)
        ).execute()

    def prune(self) -> None:
        """Delete up to :data:`PRUNE_ROWS` rows past their retention and their lock."""
        Key = _model()
        old = (
            Key.select(SQL("ctid"))
            .where((Key.created_at < fn.now() - _seconds(self.retention_s)) & (Key.locked_until < fn.now()))
            .limit(PRUNE_ROWS)
        )
        deleted = Key.delete().where(SQL("ctid").in_(old)).execute()
        logger.info("deleted %d idempotency keys past their retention", deleted)
