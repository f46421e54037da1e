"""Workload and database side of ``bench/pipeline.py``: fresh user records, CSV bodies, baseline (b)
(the raw psycopg2 bulk insert), the "validate + insert in one process" ceiling, and waiting for rows.

Every record is valid and has a unique key (name, age) of its own: names carry a tag that is new for each
measurement, so no run sees another's rows, and the figures are those of the happy path (every record
``stored``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extras

#: Rows per ``execute_values`` call, each committed (as in ``shared/PERFORMANCE.md``).
INSERT_CHUNK = 1000
#: The CSV header: dotted names build the nested objects (``name.firstName`` -> ``{"name": {...}}``).
CSV_HEADER = [
    "name.firstName",
    "name.lastName",
    "age",
    "email",
    "phoneNumber",
    "address.line1",
    "address.city",
    "address.state",
    "gender",
]
_FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "José", "Zoë"]
#: The raw insert: the columns the pipeline fills, the same table and unique index.
RAW_INSERT = (
    "INSERT INTO users (name, age, email, phone_number, address, additional_info) VALUES %s "
    "ON CONFLICT DO NOTHING"
)
RAW_TEMPLATE = "(%s, %s, %s, %s, %s::jsonb, %s::jsonb)"


def user(tag: str, index: int) -> dict[str, Any]:
    """One valid user with every field the schema knows and one it does not (``gender``)."""
    return {
        "name": {"firstName": _FIRST_NAMES[index % len(_FIRST_NAMES)], "lastName": f"Bench{tag}n{index}"},
        "age": 18 + index % 80,
        "email": f"user{index}.{tag}@example.com",
        "phoneNumber": f"+1 415 555 {index % 10_000:04d}",
        "address": {"line1": f"{index} Main Street", "city": "Springfield", "state": "IL"},
        "gender": "f" if index % 2 else "m",
    }


def json_bodies(tag: str, count: int) -> list[bytes]:
    """``count`` bodies for ``POST /api/user``."""
    return [json.dumps(user(tag, i)).encode() for i in range(count)]


def csv_rows(tag: str, count: int) -> Iterator[list[str]]:
    """The cells of ``count`` CSV rows under :data:`CSV_HEADER`."""
    for i in range(count):
        u = user(tag, i)
        yield [
            u["name"]["firstName"],
            u["name"]["lastName"],
            str(u["age"]),
            u["email"],
            u["phoneNumber"],
            u["address"]["line1"],
            u["address"]["city"],
            u["address"]["state"],
            u["gender"],
        ]


def csv_body(tag: str, count: int) -> bytes:
    """A whole CSV file of ``count`` users, as a client uploads it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(csv_rows(tag, count))
    return out.getvalue().encode("utf-8")


def csv_records(tag: str, count: int) -> list[dict[str, Any]]:
    """The records the web hands the workers for that CSV: nested, every cell a string."""
    records = []
    for cells in csv_rows(tag, count):
        record: dict[str, Any] = {}
        for path, cell in zip(CSV_HEADER, cells, strict=True):
            *parents, leaf = path.split(".")
            node = record
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = cell
        records.append(record)
    return records


def _values(user_row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        user_row["name"],
        user_row["age"],
        user_row["email"],
        user_row["phone_number"],
        json.dumps(user_row["address"]),
        json.dumps(user_row["additional_info"]),
    )


def _insert_chunks(
    connection: Any, count: int, chunk_rows: Callable[[int, int], list[dict[str, Any]]]
) -> tuple[float, int]:
    """Insert ``count`` rows, :data:`INSERT_CHUNK` at a time, a commit each; returns (seconds, inserted)."""
    inserted = 0
    with connection.cursor() as cursor:
        started = time.perf_counter()
        for start in range(0, count, INSERT_CHUNK):
            rows = chunk_rows(start, min(count, start + INSERT_CHUNK))
            psycopg2.extras.execute_values(
                cursor,
                RAW_INSERT,
                [_values(r) for r in rows],
                template=RAW_TEMPLATE,
                page_size=INSERT_CHUNK,
            )
            inserted += cursor.rowcount
            connection.commit()
        return time.perf_counter() - started, inserted


def raw_insert(connection: Any, users: list[dict[str, Any]]) -> tuple[float, int]:
    """Baseline (b): ``execute_values`` of ready user rows on ``connection`` (psycopg2, not autocommit);
    returns (seconds, rows inserted)."""
    return _insert_chunks(connection, len(users), lambda a, b: users[a:b])


def validate_and_insert(connection: Any, records: list[dict[str, Any]]) -> tuple[float, int]:
    """The ceiling without Kafka: Cerberus (``validate_record``) on each record, then the raw insert,
    in this one process; returns (seconds, rows inserted)."""
    from pipeline.validation import validate_record

    def chunk(a: int, b: int) -> list[dict[str, Any]]:
        rows = []
        for record in records[a:b]:
            row, errors = validate_record(record, source="csv")
            if row is None:
                raise AssertionError(f"the benchmark's record is invalid: {errors}")
            rows.append(row)
        return rows

    return _insert_chunks(connection, len(records), chunk)


def user_rows(tag: str, count: int) -> list[dict[str, Any]]:
    """The ``users`` rows the pipeline stores for ``csv_records(tag, count)`` (the raw insert's input),
    built directly: the validator would take seconds for a large batch.  The first rows are checked
    against ``validate_record``, so that the two never drift apart."""
    from pipeline.validation import validate_record

    rows = []
    for i in range(count):
        u = user(tag, i)
        rows.append(
            {
                "name": f"{u['name']['firstName']} {u['name']['lastName']}",
                "age": u["age"],
                "email": u["email"],
                "phone_number": u["phoneNumber"].replace(" ", ""),
                "address": u["address"],
                "additional_info": {"gender": u["gender"]},
            }
        )
    for record, row in zip(csv_records(tag, min(count, 20)), rows, strict=False):
        validated, errors = validate_record(record, source="csv")
        if validated != row:
            raise AssertionError(f"user_rows drifted from the validator: {row} != {validated} {errors}")
    return rows


class Rows:
    """Counts outcomes in the stack's database, on one autocommit connection."""

    def __init__(self, database_url: str) -> None:
        self.connection = psycopg2.connect(database_url)
        self.connection.autocommit = True

    def close(self) -> None:
        self.connection.close()

    def count(self, query: str, *params: Any) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(query, params)
            return int(cursor.fetchone()[0])

    def singles(self) -> int:
        """Outcomes of single posts so far (they have no batch)."""
        return self.count("SELECT count(*) FROM submissions WHERE batch_id IS NULL")

    def of_batch(self, batch_id: str) -> int:
        return self.count("SELECT count(*) FROM submissions WHERE batch_id = %s", batch_id)

    def statuses(self, where: str, *params: Any) -> dict[str, int]:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT status, count(*) FROM submissions WHERE {where} GROUP BY status", params)
            return {status: int(n) for status, n in cursor.fetchall()}

    def wait_until(
        self, counter: Callable[[], int], target: int, *, timeout: float, interval: float = 0.02
    ) -> float | None:
        """Poll ``counter`` until it reaches ``target``; the ``time.monotonic()`` of the first poll that saw
        it, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if counter() >= target:
                return time.monotonic()
            time.sleep(interval)
        return None
