"""Submission and batch ids: time-ordered, unguessable and signed.

An id is 22 bytes written in lower-case Crockford base32 (36 characters, URL-safe)::

    48-bit Unix time in ms | 64 random bits | 64-bit HMAC-SHA256 tag (truncated)

The timestamp comes first and the alphabet is in ASCII order, so ids of one kind sort as strings in the
order they were issued (to the millisecond).  The tag signs the first 14 bytes *and the kind* of the id
(``submission`` or ``batch``) with ``settings.ID_SECRET``: the API can then answer "queued" for an id it
issued whose outcome is not recorded yet, and "not found" for a made-up one, without storing anything when
it accepts a submission.

A record of a batch has the id ``<batch id>.<row>`` (row 1-based, no leading zeros); it is verified by
verifying its batch part.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass

#: Crockford's base32 alphabet in lower case; ASCII-ordered, so encoded ids sort like their bytes.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {char: index for index, char in enumerate(_ALPHABET)}
#: Bytes of each part of an id.
_TIME_BYTES, _RANDOM_BYTES, _TAG_BYTES = 6, 8, 8
_RAW_BYTES = _TIME_BYTES + _RANDOM_BYTES + _TAG_BYTES
#: Characters of an encoded id: 176 bits in 5-bit digits, rounded up.
ID_LENGTH = (_RAW_BYTES * 8 + 4) // 5
#: Rows above this are refused when a record id is parsed (no batch can be that long).
_MAX_ROW = 10**9

SUBMISSION = b"submission"
BATCH = b"batch"


def _encode(raw: bytes) -> str:
    number = int.from_bytes(raw, "big")
    digits = []
    for _ in range(ID_LENGTH):
        digits.append(_ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(digits))


def _decode(text: str) -> bytes | None:
    if len(text) != ID_LENGTH:
        return None
    number = 0
    for char in text:
        digit = _DECODE.get(char)
        if digit is None:
            return None
        number = (number << 5) | digit
    if number >> (_RAW_BYTES * 8):
        return None  # the padding bits are set: not an id we wrote
    return number.to_bytes(_RAW_BYTES, "big")


@dataclass(frozen=True)
class IdSigner:
    """Issues and verifies ids signed with one secret.

    Parameters:
      secret(str): The HMAC key (``settings.ID_SECRET``).

    >>> signer = IdSigner("s3cret")
    >>> signer.verify(signer.new_submission_id(), SUBMISSION)
    True
    """

    secret: str

    def _tag(self, kind: bytes, body: bytes) -> bytes:
        mac = hmac.new(self.secret.encode("utf-8"), kind + b":" + body, hashlib.sha256)
        return mac.digest()[:_TAG_BYTES]

    def new_id(self, kind: bytes, *, now_ms: int | None = None) -> str:
        """A fresh id of ``kind`` (``SUBMISSION`` or ``BATCH``) stamped with ``now_ms`` (default: now)."""
        millis = int(time.time() * 1000) if now_ms is None else now_ms
        body = millis.to_bytes(_TIME_BYTES, "big") + os.urandom(_RANDOM_BYTES)
        return _encode(body + self._tag(kind, body))

    def new_submission_id(self) -> str:
        """A fresh id for a single submission."""
        return self.new_id(SUBMISSION)

    def new_batch_id(self) -> str:
        """A fresh id for a batch."""
        return self.new_id(BATCH)

    def verify(self, value: str, kind: bytes) -> bool:
        """Whether ``value`` is an id of ``kind`` issued with this signer's secret."""
        raw = _decode(value)
        if raw is None:
            return False
        body, tag = raw[: _TIME_BYTES + _RANDOM_BYTES], raw[_TIME_BYTES + _RANDOM_BYTES :]
        return hmac.compare_digest(tag, self._tag(kind, body))


def record_id(batch_id: str, row: int) -> str:
    """The id of the record at ``row`` (1-based) of batch ``batch_id``."""
    return f"{batch_id}.{row}"


@dataclass(frozen=True)
class SubmissionRef:
    """What a verified submission id refers to: a single submission, or a row of a batch."""

    id: str
    batch_id: str | None = None
    row: int | None = None


def parse_submission_id(signer: IdSigner, value: str) -> SubmissionRef | None:
    """Verify a submission id (single, or ``<batch id>.<row>``); ``None`` unless this service issued it."""
    if "." not in value:
        return SubmissionRef(value) if signer.verify(value, SUBMISSION) else None
    batch_id, _, row_text = value.partition(".")
    # Only the canonical spelling of the row is an id: "007" or "+7" would alias "7".
    if not row_text.isascii() or not row_text.isdigit() or row_text.startswith("0") or len(row_text) > 10:
        return None
    row = int(row_text)
    if row > _MAX_ROW or not signer.verify(batch_id, BATCH):
        return None
    return SubmissionRef(value, batch_id, row)


def timestamp_ms(value: str) -> int | None:
    """The issue time (Unix ms) encoded in an id, or ``None`` if it is not shaped like one."""
    raw = _decode(value.partition(".")[0])
    return None if raw is None else int.from_bytes(raw[:_TIME_BYTES], "big")
