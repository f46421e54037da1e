"""What persisting a chunk writes, decided without a database: ``persist_users`` runs the SQL around it.

Persisting a chunk of validated records (:class:`~pipeline.contract.ValidatedRecord`) goes in four steps;
the two in the middle are SQL (``pipeline/actors.py``), the others are here:

1. :func:`plan`: drop the records that already have an outcome (a redelivered message), and pick, per
   unique key, the first record of the chunk carrying it: its user is the one to insert;
2. insert those users (``ON CONFLICT DO NOTHING``), learning the ids of the rows inserted;
3. look up the ids of the keys that were already stored (:meth:`Plan.missing`);
4. :func:`outcomes`: one submission row per record: ``stored`` for the first of a key that was inserted,
   ``duplicate`` (pointing at the stored user) for every other valid one, ``invalid`` with its errors.

Every ``submissions`` row the pipeline writes, these outcomes and the ``failed`` ones of
``record_failure``, is built by :func:`submission_row`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pipeline.contract import FieldError, Status, ValidatedRecord

#: The values of a user's unique-key columns, in the order of the columns.
Key = tuple[Any, ...]


def user_key(user: dict[str, Any], columns: list[str]) -> Key:
    """The unique key of a normalised user (a missing column counts as NULL)."""
    return tuple(user.get(c) for c in columns)


class SubmissionRow(TypedDict):
    """A row of ``submissions`` as the pipeline writes it (the timestamps are the writer's)."""

    id: str
    batch_id: str | None
    row: int | None
    status: Status
    errors: list[FieldError]
    user_id: int | None


def submission_row(
    record: Mapping[str, Any],
    status: Status,
    *,
    errors: list[FieldError] | None = None,
    user_id: int | None = None,
) -> SubmissionRow:
    """The ``submissions`` row of ``record`` (anything with its ``id``, ``batch_id`` and ``row``)."""
    return {
        "id": record["id"],
        "batch_id": record.get("batch_id"),
        "row": record.get("row"),
        "status": status,
        "errors": errors or [],
        "user_id": user_id,
    }


def empty_counts() -> dict[str, int]:
    """Records per outcome of a chunk, and ``skipped`` (those that already had one)."""
    return {Status.STORED: 0, Status.DUPLICATE: 0, Status.INVALID: 0, "skipped": 0}


@dataclass
class Plan:
    """The records of a chunk still to persist, and the user to insert for each unique key.

    Parameters:
      columns(list[str]): The unique-key columns of ``users``.
      todo(list[ValidatedRecord]): The records without an outcome yet, in chunk order.
      skipped(int): Records of the chunk that already had an outcome.
      first(dict[Key, ValidatedRecord]): Per unique key, the first valid record of ``todo`` carrying it.
    """

    columns: list[str]
    todo: list[ValidatedRecord]
    skipped: int
    first: dict[Key, ValidatedRecord] = field(default_factory=dict)

    @property
    def users(self) -> list[dict[str, Any]]:
        """The users to insert: one per key, the first of the chunk."""
        return [r["user"] for r in self.first.values() if r["user"] is not None]

    def missing(self, stored_ids: Collection[Key]) -> list[Key]:
        """The keys whose user was not inserted (already stored): their ids must be looked up."""
        return [key for key in self.first if key not in stored_ids]


def plan(results: Iterable[ValidatedRecord], done: Collection[str], columns: list[str]) -> Plan:
    """Plan a chunk: ``done`` holds the ids of its submissions that already have an outcome."""
    results = list(results)
    todo = [r for r in results if r["id"] not in done]
    first: dict[Key, ValidatedRecord] = {}
    for r in todo:
        if r["user"] is not None:
            # The first occurrence of a key within the chunk is the one inserted; later ones duplicate it.
            first.setdefault(user_key(r["user"], columns), r)
    return Plan(columns=columns, todo=todo, skipped=len(results) - len(todo), first=first)


def outcomes(
    chunk: Plan, stored_ids: dict[Key, int], existing: dict[Key, int]
) -> tuple[list[SubmissionRow], dict[str, int]]:
    """The submission rows of the planned records, and the counts per outcome.

    ``stored_ids`` maps the keys of the users this chunk inserted to their ids, ``existing`` the keys of
    users stored by earlier chunks to theirs.
    """
    counts = empty_counts()
    counts["skipped"] = chunk.skipped
    rows = [_outcome(chunk, r, stored_ids, existing) for r in chunk.todo]
    for row in rows:
        counts[row["status"]] += 1
    return rows, counts


def _outcome(
    chunk: Plan, record: ValidatedRecord, stored_ids: dict[Key, int], existing: dict[Key, int]
) -> SubmissionRow:
    if record["user"] is None:
        return submission_row(record, Status.INVALID, errors=record["errors"])
    key = user_key(record["user"], chunk.columns)
    if chunk.first[key] is record and key in stored_ids:
        return submission_row(record, Status.STORED, user_id=stored_ids[key])
    return submission_row(record, Status.DUPLICATE, user_id=stored_ids.get(key) or existing.get(key))
