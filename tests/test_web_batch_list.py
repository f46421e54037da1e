"""``GET /api/batches`` on the real PostgreSQL: the recent batches, their progress from the counters that
the triggers of migration 0006 keep, and pages by an opaque cursor."""

from __future__ import annotations

import threading

import pytest

from pipeline.worker import actors
from tests.test_persist import chunk
from tests.web_support import assert_error
from web.batch_list import decode_cursor, encode_cursor
from web.ids import IdSigner

pytestmark = pytest.mark.postgres

signer = IdSigner("test-secret")


def register(sql, count: int, *, source: str = "csv", created: str = "now()") -> str:
    batch_id = signer.new_batch_id()
    sql(
        f"INSERT INTO batches (id, count, source, created_at) VALUES (%s, %s, %s, {created})",
        batch_id,
        count,
        source,
    )
    return batch_id


def outcomes(sql, batch_id: str, statuses: list[str], *, start: int = 1) -> None:
    """Write one submission per status, rows from ``start``, as one statement (as a worker does)."""
    for row, status in enumerate(statuses, start):
        sql(
            "INSERT INTO submissions (id, batch_id, row, status, errors) VALUES (%s, %s, %s, %s, '[]')",
            f"{batch_id}.{row}",
            batch_id,
            row,
            status,
        )


def counted(sql, batch_id: str) -> dict[str, int]:
    rows = sql("SELECT status, count(*) FROM submissions WHERE batch_id = %s GROUP BY status", batch_id)
    return {status: int(n) for status, n in rows}


def test_batches_are_listed_newest_first_with_their_outcomes_state_and_source(sql, web_client):
    # Given an older completed batch and a newer one half done
    old = register(sql, 3, source="json", created="now() - interval '1 hour'")
    outcomes(sql, old, ["stored", "duplicate", "invalid"])
    new = register(sql, 4)
    outcomes(sql, new, ["stored", "failed"])
    # When
    response = web_client.get("/api/batches")
    # Then
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["batch_id"] for item in body["items"]] == [new, old]
    assert body["next_cursor"] is None
    first, second = body["items"]
    assert first["counts"] == {"queued": 2, "stored": 1, "duplicate": 0, "invalid": 0, "failed": 1}
    assert (first["state"], first["source"], first["count"], first["processed"]) == (
        "processing",
        "csv",
        4,
        2,
    )
    assert second["counts"] == {"queued": 0, "stored": 1, "duplicate": 1, "invalid": 1, "failed": 0}
    assert (second["state"], second["source"]) == ("completed", "json")
    assert 3590 <= second["age_seconds"] <= 3700 and first["age_seconds"] < 60
    assert first["rate"] is not None and first["rate"] > 0


def test_a_batch_without_outcomes_yet_is_all_queued_and_has_no_rate(sql, web_client):
    # Given
    batch_id = register(sql, 10)
    # When
    [item] = web_client.get("/api/batches").json()["items"]
    # Then
    assert item["batch_id"] == batch_id and item["state"] == "processing"
    assert item["counts"]["queued"] == 10 and item["processed"] == 0
    assert item["rate"] is None and item["last_outcome_at"] is None


def test_a_batch_not_registered_yet_is_listed_from_its_first_outcome_with_its_count_unknown(sql, web_client):
    # Given a registered batch, then the first outcomes of a batch whose register_batch is still queued
    older = register(sql, 2, created="now() - interval '1 minute'")
    running = signer.new_batch_id()
    outcomes(sql, running, ["stored", "invalid", "stored"])
    # When
    before = web_client.get("/api/batches").json()["items"]
    # Then it is listed first, its count and queued unknown, its outcomes counted
    assert [item["batch_id"] for item in before] == [running, older]
    assert before[0]["count"] is None and before[0]["counts"]["queued"] is None
    assert before[0]["state"] == "processing" and before[0]["processed"] == 3
    assert (before[0]["counts"]["stored"], before[0]["counts"]["invalid"]) == (2, 1)
    assert before[0]["source"] is None and before[0]["rate"] is not None

    # When a worker registers it, and more outcomes follow
    sql("INSERT INTO batches (id, count, source) VALUES (%s, 4, 'ndjson')", running)
    outcomes(sql, running, ["duplicate"], start=4)
    after = web_client.get("/api/batches").json()["items"]
    # Then it is listed once, registered and complete, and no longer noted as in flight
    assert [item["batch_id"] for item in after] == [running, older]
    assert (after[0]["count"], after[0]["source"], after[0]["state"]) == (4, "ndjson", "completed")
    assert sql("SELECT count(*) FROM batches_in_flight") == [(0,)]


def test_a_registered_batch_noted_in_flight_by_a_race_is_listed_once(sql, web_client):
    # Given a registered batch whose in-flight note was written as it registered (the two raced)
    batch_id = register(sql, 1)
    sql("INSERT INTO batches_in_flight (batch_id, first_at) VALUES (%s, now())", batch_id)
    # When
    items = web_client.get("/api/batches?limit=1").json()
    # Then
    assert [item["batch_id"] for item in items["items"]] == [batch_id]
    assert items["next_cursor"] is None


def test_pages_by_cursor_list_every_batch_once_even_when_they_were_registered_at_the_same_moment(
    sql, web_client
):
    # Given seven batches, four of them with the same creation time
    ids = [register(sql, 1, created="timestamptz '2026-01-01 00:00:00+00'") for _ in range(4)]
    ids += [register(sql, 1) for _ in range(3)]
    ids += [signer.new_batch_id() for _ in range(2)]  # and two not registered yet
    for batch_id in ids[-2:]:
        outcomes(sql, batch_id, ["stored"])
    # When
    seen, cursor, pages = [], None, 0
    while True:
        query = "/api/batches?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = web_client.get(query).json()
        seen += [item["batch_id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # Then
    assert pages == 5
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen[5:] == sorted(ids[:4], reverse=True)  # the tie is broken by id, newest-first order kept


def test_the_counts_follow_the_workers_a_replay_and_a_deletion(sql, web_client):
    # Given a batch of six records persisted by the workers' own code, one of them marked failed first
    batch_id = register(sql, 6)
    records = chunk(
        batch_id,
        [{"name": f"N{n}", "age": 30} for n in range(4)] + [{"name": "X"}, {"name": "N0", "age": 30}],
    )
    sql(
        "INSERT INTO submissions (id, batch_id, row, status, errors) VALUES (%s, %s, 1, 'failed', '[]')",
        records[0]["id"],
        batch_id,
    )
    before = web_client.get("/api/batches").json()["items"][0]["counts"]
    # When the chunk is persisted (row 1 replayed: failed becomes stored), then an outcome is deleted
    actors.persist_chunk(records)
    after = web_client.get("/api/batches").json()["items"][0]
    in_database = counted(sql, batch_id)
    sql("DELETE FROM submissions WHERE id = %s", records[4]["id"])
    deleted = web_client.get("/api/batches").json()["items"][0]["counts"]
    # Then the list says what a COUNT over the submissions says, at every step
    assert before["failed"] == 1 and before["queued"] == 5
    assert after["state"] == "completed"
    assert {s: n for s, n in after["counts"].items() if n and s != "queued"} == in_database
    assert in_database == {"stored": 4, "invalid": 1, "duplicate": 1}
    assert deleted["invalid"] == 0 and deleted["queued"] == 1 and deleted["stored"] == 4


def test_counts_stay_exact_when_workers_persist_chunks_of_one_batch_at_once(sql, web_client):
    # Given a batch of 8 chunks of 25 records, persisted by 8 threads at the same moment
    batch_id = register(sql, 200)
    records = chunk(batch_id, [{"name": f"P{n}", "age": 20 + n % 2} for n in range(200)])
    barrier = threading.Barrier(8)
    problems: list[Exception] = []

    def persist(part: list) -> None:
        try:
            barrier.wait()
            actors.persist_chunk(part)
        except Exception as error:  # reported below
            problems.append(error)

    threads = [threading.Thread(target=persist, args=(records[i : i + 25],)) for i in range(0, 200, 25)]
    # When
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then
    assert problems == []
    [item] = web_client.get("/api/batches").json()["items"]
    assert item["state"] == "completed"
    assert item["counts"]["stored"] == counted(sql, batch_id)["stored"] == 200
    assert len(sql("SELECT slot FROM batch_outcomes WHERE batch_id = %s", batch_id)) <= 8


def test_a_cursor_is_opaque_and_round_trips(sql):
    # Given
    import datetime

    moment = datetime.datetime(2026, 12, 6, 19, 0, 0, 123456, tzinfo=datetime.UTC)
    # When
    cursor = encode_cursor(moment, "abc.def-1")
    # Then
    assert decode_cursor(cursor) == (moment, "abc.def-1")
    assert "abc" not in cursor and "=" not in cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "zzz",
        "!!!!",
        "MTIz",
        "OjEyMw",
        "eDphYmM",
        "A" * 201,
        "é",
        "MTIzOmEgYg",
        "OTk5OTk5OTk5OTk5OTk5OTk5OmFi",
    ],
)
def test_a_cursor_the_api_did_not_give_is_400_invalid_cursor(sql, web_client, cursor):
    # When
    response = web_client.get("/api/batches", params={"cursor": cursor})
    # Then
    assert_error(response, 400, "invalid_cursor")


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1e3", "99999999999999999999999", "x"])
def test_a_limit_out_of_range_is_400_invalid_parameter(sql, web_client, limit):
    assert_error(web_client.get("/api/batches", params={"limit": limit}), 400, "invalid_parameter")


@pytest.mark.parametrize("path", ["/api/batches", "/api/reports/throughput"])
def test_both_reads_answer_503_when_the_database_is_unreachable(pipeline_database, path):
    # Given the database pointed at a port where nothing listens
    from pipeline import db as pipeline_db
    from tests.web_support import make_client
    from web.reads import ping_database

    saved = dict(pipeline_database.connect_params, database=pipeline_database.database)
    pipeline_db.configure("postgresql://bup@127.0.0.1:9/nowhere")
    try:
        with make_client() as client:
            # When
            response = client.get(path)
    finally:
        pipeline_database.close_all()
        pipeline_database.init(**saved)
    # Then
    assert_error(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "7"
    ping_database()  # the session's database is back for the tests that follow
