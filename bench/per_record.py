"""Per-record cost of the worker's two stages, in one process, without Kafka: ``python -m bench.per_record``.

It runs ``validate_users`` and then ``persist_chunk`` (what the ``persist_users`` actor does) on chunks of the
CSV records of ``bench/pipeline.py`` (every record valid and new), then persists a few of those chunks again
(a redelivery: every record already has an outcome).  It prints microseconds per record, wall clock and this
process's CPU (PostgreSQL's own CPU is not in the latter).  It uses a database of its own, created next to
``DATABASE_URL``'s and dropped at the end.  Profile it with py-spy::

    .venv/bin/py-spy record --gil --format raw --rate 250 -o bench/results/profiles/per-record.txt -- \\
        .venv/bin/python -m bench.per_record --records 10000 --rounds 2
    .venv/bin/python -m bench.pyspy_summary bench/results/profiles/per-record.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import psycopg2

from bench import pipeline_data as data
from pipeline import db, migrations

#: Chunks persisted again per round to measure a redelivery.
REDELIVERED_CHUNKS = 4


def _round(actors: Any, tag: str, count: int, chunk_size: int) -> dict[str, float]:
    records = data.csv_records(tag, count)
    chunks = [
        [
            {"id": f"{tag}.{n}", "row": n, "data": r, "errors": []}
            for n, r in enumerate(records[a : a + chunk_size], a)
        ]
        for a in range(0, count, chunk_size)
    ]
    marks = [(time.perf_counter(), time.process_time())]
    validated = [actors.validate_users.fn(chunk, tag, "csv") for chunk in chunks]
    marks.append((time.perf_counter(), time.process_time()))
    for results in validated:
        actors.persist_chunk(results)
    marks.append((time.perf_counter(), time.process_time()))
    again = validated[:REDELIVERED_CHUNKS]
    for results in again:
        actors.persist_chunk(results)
    marks.append((time.perf_counter(), time.process_time()))
    sizes = {"validate": count, "persist": count, "persist again": sum(len(r) for r in again)}
    figures = {}
    for (name, size), start, end in zip(sizes.items(), marks[:-1], marks[1:], strict=True):
        figures[f"{name} wall"] = (end[0] - start[0]) / size * 1e6
        figures[f"{name} cpu"] = (end[1] - start[1]) / size * 1e6
    return figures


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the figures (median and best of the rounds)."""
    parser = argparse.ArgumentParser(prog="python -m bench.per_record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round (default 20,000)")
    parser.add_argument("--chunk", type=int, default=500, help="records per message (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds after a warm-up one (default 3)")
    options = parser.parse_args(argv)
    base = os.environ.get("DATABASE_URL") or "postgresql://bup@127.0.0.1:55432/bup"
    name = f"bup_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        db.configure(f"{base.rsplit('/', 1)[0]}/{name}")
        migrations.migrate()
        from pipeline.worker import actors

        _round(actors, f"w{uuid.uuid4().hex[:6]}", min(options.records, 2_000), options.chunk)
        rounds = [
            _round(actors, f"r{uuid.uuid4().hex[:6]}", options.records, options.chunk)
            for _ in range(options.rounds)
        ]
        print(f"{options.records:,} CSV records a round, {options.chunk} a message; µs per record")
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            print(f"  {key:20s} median {statistics.median(values):7.1f}   best {min(values):7.1f}")
    finally:
        db.database.close_all()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
