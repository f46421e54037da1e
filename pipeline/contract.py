"""What the web and the worker agree on: the queue, the actor names, the payloads and the statuses.

Both sides import this module and it imports neither (only the standard library), so the web builds its
messages by actor *name* without loading the worker, and the worker declares its actors under these names.

Messages, all on :data:`QUEUE`:

* ``validate_users(list[BatchRecord], batch_id, source)`` whose ``options["pipe_target"]`` is the
  ``persist_users`` message: a Dramatiq pipeline of the two, its first stage sent by the web.  Either the
  records of ``POST /api/user``, one or several posts that arrived together (``batch_id`` None, ``source``
  :data:`SINGLE_SOURCE`, each :class:`BatchRecord`'s ``id`` the submission's and ``row`` None), or one
  chunk of a batch of ``POST /api/users`` (``source`` ``json``, ``ndjson`` or ``csv``);
* ``register_batch(batch_id, count, source)``: sent once every chunk of the batch is durable in Kafka;
* ``process_user(SubmissionPayload)`` and ``process_users(ChunkPayload)``: a single post and a chunk that
  build the pipeline above in the worker.  The web sends neither, but messages of this form may still sit
  in Kafka or on the failed-message topic (``dlq replay``), so the worker keeps taking them.

The result of ``validate_users``, a ``list[ValidatedRecord]``, is what ``persist_users`` receives (the
worker's ``Pipelines`` middleware sends it).  ``record_failure`` is Dramatiq's ``on_retry_exhausted``
callback (the failed message as ``Message.asdict()``).

Every submission ends with one :class:`Status` (``submissions.status``); the API answers ``queued`` for a
submission that has none yet.  Text that quotes a client (a field path, an error message) goes through
:func:`storable_text` on either side before it is stored or answered.
"""

from __future__ import annotations

import enum
from typing import Any, NotRequired, TypedDict

#: The queue every message of the user pipeline goes to.
QUEUE = "users"

PROCESS_USER = "process_user"
PROCESS_USERS = "process_users"
VALIDATE_USERS = "validate_users"
PERSIST_USERS = "persist_users"
REGISTER_BATCH = "register_batch"
RECORD_FAILURE = "record_failure"
#: The ``source`` that ``validate_users`` is told for the records of ``POST /api/user``.
SINGLE_SOURCE = "json"


class Status(enum.StrEnum):
    """What became of a submission; the values are the strings of the API's JSON and of the database."""

    #: Accepted, no outcome yet (never stored: the API answers it for a submission without a row).
    QUEUED = "queued"
    #: Valid, and its user was inserted.
    STORED = "stored"
    #: Valid, but a user with the same unique key was already stored (the submission points at it).
    DUPLICATE = "duplicate"
    #: Failed validation; the submission keeps every error.
    INVALID = "invalid"
    #: The pipeline gave up on it (retries exhausted); replaying the failed message may change it.
    FAILED = "failed"


#: The statuses a submission ends with (the values ``submissions.status`` admits), in report order.
OUTCOMES: tuple[Status, ...] = (Status.STORED, Status.DUPLICATE, Status.INVALID, Status.FAILED)
#: The outcomes whose records a batch report lists, with their errors.
REJECTED: tuple[Status, ...] = (Status.INVALID, Status.FAILED)


class FieldError(TypedDict):
    """One reason a record is invalid: the dotted path of the field (``_root``, ``_system``...) and why."""

    field: str
    message: str


class SubmissionPayload(TypedDict):
    """The argument of ``process_user``: the submission's id and the JSON object as it was posted."""

    id: str
    data: Any


class BatchRecord(TypedDict):
    """One record of a batch: its id (``<batch_id>.<row>``), row number, parsed data and parse errors.

    ``raw`` is what the web could not make an object of (``data`` None): a CSV row's cells, or the text of
    a JSON value or NDJSON line.  ``header``, on the first record of each chunk of a CSV batch, is the
    header's cells as uploaded.  Both serve the invalid-rows file, and older messages lack them.
    """

    id: str
    row: int | None
    data: Any
    errors: list[FieldError]
    raw: NotRequired[Any]
    header: NotRequired[list[str]]


class KeptRecord(TypedDict):
    """An invalid record of a batch as the client sent it, kept for the invalid-rows file: its parsed
    ``data``, or the ``raw`` form of :class:`BatchRecord` (one of the two is not None)."""

    data: Any
    raw: Any


class ChunkPayload(TypedDict):
    """The argument of ``process_users``: a chunk of a batch and the batch's form."""

    batch_id: str
    source: str
    records: list[BatchRecord]


class ValidatedRecord(TypedDict):
    """A record after ``validate_users``: the normalised user, or None and every error."""

    id: str
    row: int | None
    batch_id: str | None
    user: dict[str, Any] | None
    errors: list[FieldError]
    #: Only on an invalid record of a batch (while ``INVALID_RECORD_RETENTION_S`` is not 0).
    kept: NotRequired[KeptRecord]
    #: A CSV batch's header, on the first kept record of a message.
    header: NotRequired[list[str]]


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates spelled as JSON escapes (``\\u0000``, ``\\ud800``).

    PostgreSQL cannot store NUL in ``text``/``jsonb`` and UTF-8 cannot encode a lone surrogate, yet error
    messages and field paths quote clients' keys, which may hold either: escaped, the text can be stored
    in the ``errors`` column and sent in an answer.  Text holding neither comes back as it is.
    """
    if "\x00" not in text and text.isascii():
        return text
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped.replace("\x00", "\\u0000")
