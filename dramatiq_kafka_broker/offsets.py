"""What a consumer knows of each partition it owns, and how acks above the commit point travel in Kafka.

Workers ack out of order, so a partition's commit point is its lowest offset not yet acked.  The offsets acked
*above* it are written into the commit's metadata string (``acked:<start>+<length>,...``, base 36, relative
to the committed offset), so that the partition's next owner skips them instead of running them again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

#: Kafka's default limit for the metadata string of an offset commit (``offset.metadata.max.bytes``).
MAX_COMMIT_METADATA = 4000
_PREFIX = "acked:"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class PartitionState:
    """What one consumer knows of one assigned partition; its :class:`.Assignment` keeps it.

    Attributes:
      epoch(int): Which ownership of the partition this is; an ack of an earlier epoch is stale (the
        partition went to another owner in between, which runs the message again).
      pending(deque[int]): Offsets handed out (or buffered), in order.
      acked(set[int]): Offsets of ``pending`` that were acked.
      skip(set[int]): Offsets acked by an earlier owner above its commit point.
      position(int | None): The offset after the last record fetched.
      outstanding(int): Messages handed out and not acked.
      committed(int | None): The last offset this consumer committed.
    """

    __slots__ = ("acked", "committed", "epoch", "outstanding", "pending", "position", "skip")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.pending: deque[int] = deque()
        self.acked: set[int] = set()
        self.skip: set[int] = set()
        self.position: int | None = None
        self.outstanding = 0
        self.committed: int | None = None

    def commit_point(self) -> int | None:
        """The lowest offset not acked yet (or the position, when everything fetched was acked)."""
        while self.pending and self.pending[0] in self.acked:
            self.acked.discard(self.pending.popleft())
        if self.pending:
            return self.pending[0]
        return self.position

    def forget_from(self, offset: int) -> None:
        """Forget what was fetched from ``offset`` on: fetching starts there again."""
        self.position = offset
        self.pending = deque(o for o in self.pending if o < offset)
        self.acked = {o for o in self.acked if o < offset}


def encode_acked(base: int, acked: Iterable[int]) -> str:
    """Offsets acked above the commit point ``base``, as commit metadata.

    What does not fit in :data:`MAX_COMMIT_METADATA` is left out: those messages are delivered again, and
    at-least-once still holds.
    """
    ranges: list[list[int]] = []
    for offset in sorted(acked):
        if ranges and offset == ranges[-1][0] + ranges[-1][1]:
            ranges[-1][1] += 1
        else:
            ranges.append([offset, 1])
    parts, size = [], 0
    for start, length in ranges:
        part = f"{_b36(start - base)}+{_b36(length)}"
        size += len(part) + 1
        if size > MAX_COMMIT_METADATA:
            break
        parts.append(part)
    return _PREFIX + ",".join(parts) if parts else ""


def decode_acked(base: int, metadata: str | None) -> set[int]:
    """The offsets that :func:`encode_acked` wrote; none for metadata that is not ours or is corrupt."""
    if not metadata or not metadata.startswith(_PREFIX):
        return set()
    offsets: set[int] = set()
    for part in metadata[len(_PREFIX) :].split(","):
        start, _, length = part.partition("+")
        try:
            first = base + int(start, 36)
            count = int(length, 36)
        except ValueError:
            return set()
        if first < base or count < 0:
            return set()
        offsets.update(range(first, first + count))
    return offsets


def _b36(number: int) -> str:
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = _DIGITS[rest] + out
        if not number:
            return out
