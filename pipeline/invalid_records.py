"""The invalid records of batches, kept as their clients sent them for the invalid-rows file.

A batch's invalid records can be downloaded, corrected and posted again (``GET /api/batches/<id>/
invalid.csv`` or ``.ndjson``, ``web/invalid_rows.py``).  Only the errors of a record are in
``submissions``; the record itself is personal data, so it is kept apart, in ``invalid_records`` (and a CSV
batch's header in ``invalid_record_headers``), for ``INVALID_RECORD_RETENTION_S`` seconds, then deleted:

* :func:`attach` (in ``validate_users``) puts on each invalid result of a batch the record as the web
  sent it (:class:`~pipeline.contract.KeptRecord`), and the CSV header on the first of them;
* :func:`keep` (in ``persist_users``' transaction) writes them, next to their outcomes;
* :func:`prune` (after each ``register_batch``, so once per batch uploaded) deletes what is past the
  retention, a bounded number of rows at a time.  Nothing else deletes batches, so this is how a batch's
  kept records go.  The web never serves a record past the retention, pruned or not yet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, TypedDict

from pipeline import settings
from pipeline.contract import BatchRecord, KeptRecord, Status, ValidatedRecord

logger = logging.getLogger(__name__)

#: Rows deleted by one statement of :func:`prune` (short transactions, no long lock on the table).
PRUNE_ROWS = 10_000
#: Statements of :func:`prune` per call at most: a backlog larger than this goes at the next call.
PRUNE_ROUNDS = 50

_INSERT_RECORDS = (
    "INSERT INTO invalid_records (id, batch_id, row, data, raw) "
    "SELECT id, batch_id, row, data, raw FROM jsonb_to_recordset(%s::jsonb) "
    "AS t(id text, batch_id text, row integer, data jsonb, raw jsonb) "
    "ON CONFLICT (id) DO NOTHING"
)
_INSERT_HEADER = (
    "INSERT INTO invalid_record_headers (batch_id, header) VALUES (%s, %s::jsonb) "
    "ON CONFLICT (batch_id) DO NOTHING"
)
_DELETE_RECORDS = (
    "DELETE FROM invalid_records WHERE ctid IN (SELECT ctid FROM invalid_records "
    "WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)"
)
# A header goes once no kept record of its batch is left (a long batch's last records outlive its first).
_DELETE_HEADERS = (
    "DELETE FROM invalid_record_headers h WHERE created_at < now() - make_interval(secs => %s) "
    "AND NOT EXISTS (SELECT 1 FROM invalid_records r WHERE r.batch_id = h.batch_id)"
)


class KeptRow(TypedDict):
    """A row of ``invalid_records`` as :func:`keep` writes it."""

    id: str
    batch_id: str
    row: int
    data: Any
    raw: Any


def attach(records: Sequence[BatchRecord], results: list[ValidatedRecord], batch_id: str | None) -> None:
    """Put on each invalid result of a batch its record as sent, and on the first one the CSV header.

    Nothing is attached to single posts (no file lists them), nor when ``INVALID_RECORD_RETENTION_S`` is 0.
    """
    if batch_id is None or settings.INVALID_RECORD_RETENTION_S <= 0:
        return
    header = next((r["header"] for r in records if r.get("header")), None)
    for record, result in zip(records, results, strict=True):
        if result["user"] is not None or (record.get("data") is None and record.get("raw") is None):
            continue
        kept: KeptRecord = {"data": record.get("data"), "raw": record.get("raw")}
        result["kept"] = kept
        if header is not None:
            result["header"], header = header, None


def kept_rows(todo: Sequence[ValidatedRecord], rows: Sequence[dict[str, Any]]) -> list[KeptRow]:
    """The records to keep among ``todo`` given their outcome ``rows`` (same order): the invalid ones of
    a batch that carry their record."""
    kept: list[KeptRow] = []
    for result, row in zip(todo, rows, strict=True):
        record = result.get("kept")
        if row["status"] != Status.INVALID or record is None or not result["batch_id"] or not result["row"]:
            continue
        kept.append(
            {
                "id": result["id"],
                "batch_id": result["batch_id"],
                "row": result["row"],
                "data": record["data"],
                "raw": record["raw"],
            }
        )
    return kept


def header_of(results: Sequence[ValidatedRecord]) -> list[str] | None:
    """The CSV header carried by a message's results, if any."""
    return next((r["header"] for r in results if r.get("header")), None)


def keep(cursor: Any, rows: list[KeptRow], header: list[str] | None) -> None:
    """Write the kept records (a redelivery writes nothing twice) and their batch's header, if any."""
    if not rows:
        return
    cursor.execute(_INSERT_RECORDS, (json.dumps(rows),))
    if header is not None:
        cursor.execute(_INSERT_HEADER, (rows[0]["batch_id"], json.dumps(header)))


def prune(database: Any, retention_s: int) -> int:
    """Delete the kept records (and headers) older than ``retention_s`` seconds; returns the records
    deleted.  Each statement is a transaction of its own, of at most :data:`PRUNE_ROWS` rows."""
    deleted = 0
    for _ in range(PRUNE_ROUNDS):
        with database.atomic():
            count = database.execute_sql(_DELETE_RECORDS, (retention_s, PRUNE_ROWS)).rowcount
        deleted += count
        if count < PRUNE_ROWS:
            break
    with database.atomic():
        database.execute_sql(_DELETE_HEADERS, (retention_s,))
    if deleted:
        logger.info("deleted %d invalid records past their retention", deleted)
    return deleted
