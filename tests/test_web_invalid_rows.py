"""The invalid-rows file of a batch, on a real PostgreSQL: uploaded through the web (on a StubBroker), run
through the worker's actors, downloaded, corrected and uploaded again.

The actors are called as the worker calls them (their functions, with the arguments of the messages the
web enqueued, encoded and decoded as Kafka carries them), so the records kept are the ones a real upload
leaves.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

import pytest

from tests.web_support import assert_error, enqueued
from web import invalid_file, invalid_rows
from web.ids import IdSigner

pytestmark = pytest.mark.postgres

CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}
signer = IdSigner("test-secret")


@pytest.fixture
def db(clean_database):
    with clean_database.connection_context():
        clean_database.execute_sql("TRUNCATE invalid_records, invalid_record_headers")
        yield clean_database


@pytest.fixture
def actors():
    """``pipeline.actors``, imported the way the worker imports it."""
    from pipeline.worker import actors as module

    return module


def run_worker(broker: Any, actors: Any) -> list[dict[str, Any]]:
    """Run every message the web enqueued through the actors, as the worker would; returns the records the
    web sent (for checks of what travelled)."""
    sent = []
    for message in enqueued(broker):
        if message.actor_name == "validate_users":
            sent.extend(message.args[0])
            results = actors.validate_users(*message.args)
            # The pipeline hands the result on through Kafka: as JSON.
            actors.persist_chunk(json.loads(json.dumps(results)))
        elif message.actor_name == "register_batch":
            actors.register_batch(*message.args)
    return sent


def upload(client: Any, body: bytes, headers: dict[str, str]) -> str:
    response = client.post("/api/users", content=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["batch_id"]


def statuses(client: Any, batch_id: str) -> dict[str, int]:
    body = client.get(f"/api/batches/{batch_id}").json()
    assert body["state"] == "completed", body
    return body["counts"]


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def write_csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


UPLOADED = (
    "name.firstName,name.lastName,age,phoneNumber,note\r\n"
    "Ada,Lovelace,36,+44 20 7946 0000,fine\r\n"
    "Bob,Builder,abc,+1 415 555 0100,-5 apples\r\n"
    "Cy,Young,42\r\n"
    '"=HYPERLINK(""http://x"")",\'=quoted,x,,@SUM(A1)\r\n'
    'Dee,"Comma, Inc",,\t+33 1 23 45 67 89,"multi\nline"\r\n'
)


def test_a_csv_batchs_invalid_rows_come_in_its_own_columns_with_row_and_errors(
    db, web_client, web_broker, actors
):
    # Given a CSV batch with four bad rows (a bad age, a ragged row, formula-like cells, a missing age)
    batch_id = upload(web_client, UPLOADED.encode(), CSV)
    run_worker(web_broker, actors)
    assert statuses(web_client, batch_id)["invalid"] == 4
    # When
    response = web_client.get(f"/api/batches/{batch_id}/invalid.csv")
    # Then
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = read_csv(response.text)
    assert rows[0] == ["_row", "_errors", "name.firstName", "name.lastName", "age", "phoneNumber", "note"]
    assert [row[0] for row in rows[1:]] == ["2", "3", "4", "5"]
    assert rows[1][2:] == ["Bob", "Builder", "abc", "'+1 415 555 0100", "'-5 apples"]
    assert rows[1][1] == "age: must be an integer"
    assert rows[2][2:] == ["Cy", "Young", "42"]  # ragged: the cells as they came
    assert rows[2][1].startswith("_row: row 3 has 3 fields")
    assert rows[3][2:] == ['\'=HYPERLINK("http://x")', "''=quoted", "x", "", "'@SUM(A1)"]
    assert rows[4][2:] == ["Dee", "Comma, Inc", "", "'\t+33 1 23 45 67 89", "multi\nline"]
    assert "age" in rows[4][1]


def test_the_csv_file_corrected_and_posted_again_stores_the_records_as_first_uploaded(
    db, web_client, web_broker, actors
):
    # Given the invalid rows of a batch, downloaded
    batch_id = upload(web_client, UPLOADED.encode(), CSV)
    run_worker(web_broker, actors)
    rows = read_csv(web_client.get(f"/api/batches/{batch_id}/invalid.csv").text)
    # When the ages are fixed and the ragged row completed, leaving every other cell as downloaded
    age = rows[0].index("age")
    for row in rows[1:]:
        row.extend([""] * (len(rows[0]) - len(row)))
        row[age] = "50"
    again = upload(web_client, write_csv(rows), CSV)
    sent = run_worker(web_broker, actors)
    # Then every record is stored, with its cells as first uploaded (quotes taken off, markers dropped)
    assert statuses(web_client, again) == {
        "queued": 0,
        "stored": 4,
        "duplicate": 0,
        "invalid": 0,
        "failed": 0,
    }
    by_name = {str(record["data"]["name"].get("firstName")): record["data"] for record in sent}
    assert by_name["Bob"] == {
        "name": {"firstName": "Bob", "lastName": "Builder"},
        "age": "50",
        "phoneNumber": "+1 415 555 0100",
        "note": "-5 apples",
    }
    assert by_name['=HYPERLINK("http://x")'] == {
        "name": {"firstName": '=HYPERLINK("http://x")', "lastName": "'=quoted"},
        "age": "50",
        "note": "@SUM(A1)",
    }
    assert by_name["Dee"]["phoneNumber"] == "\t+33 1 23 45 67 89" and by_name["Dee"]["note"] == "multi\nline"
    assert by_name["Cy"] == {"name": {"firstName": "Cy", "lastName": "Young"}, "age": "50"}
    # and the new batch's file holds no row (nor the header: it is kept only with invalid records)
    assert read_csv(web_client.get(f"/api/batches/{again}/invalid.csv").text) == [["_row", "_errors"]]


@pytest.mark.parametrize(
    "value", ["=1+2", "+1 415", "-5", "@SUM(A1)", "\tx", "\rx", "'", "''", "'x", "'=x", "x'=", "plain", ""]
)
def test_escaping_a_cell_is_undone_exactly(value):
    # When
    escaped = invalid_file.escape_cell(value)
    # Then it no longer starts with a formula character, and reads back as it was
    assert not escaped.startswith(invalid_file.FORMULA_STARTS)
    assert invalid_file.unescape_cell(escaped) == value


def test_a_cell_quoted_by_its_uploader_in_a_file_of_our_own_keeps_its_quote():
    # A quote followed by a letter was never put there by the export: it stays.
    assert invalid_file.unescape_cell("'abc") == "'abc"
    assert invalid_file.unescape_cell("'") == "'"


def test_an_ordinary_csv_upload_keeps_leading_quotes_and_marker_like_columns(db, web_client, web_broker):
    # Given a CSV that was not exported by us (no _row and _errors columns both)
    body = b"name,age,_row\r\n'=Ann,3,7\r\n"
    # When
    upload(web_client, body, CSV)
    # Then nothing is unescaped nor dropped
    [record] = [r for m in enqueued(web_broker) if m.actor_name == "validate_users" for r in m.args[0]]
    assert record["data"] == {"name": "'=Ann", "age": "3", "_row": "7"}


def test_a_csv_header_travels_on_the_first_record_of_each_chunk(db, web_client, web_broker):
    # Given a batch of 7 rows in chunks of 3 (TEST_SETTINGS)
    body = "name,age\r\n" + "".join(f"N{n},{n}\r\n" for n in range(7))
    # When
    upload(web_client, body.encode(), CSV)
    # Then
    chunks = [m.args[0] for m in enqueued(web_broker) if m.actor_name == "validate_users"]
    assert [[("header" in r) for r in chunk] for chunk in chunks] == [
        [True, False, False],
        [True, False, False],
        [True],
    ]
    assert chunks[1][0]["header"] == ["name", "age"]


def test_an_ndjson_batchs_invalid_records_come_as_ndjson_and_post_again(db, web_client, web_broker, actors):
    # Given an NDJSON batch with a bad age, a line that is not JSON and one that is not an object
    body = b'{"name": "Ann", "age": 3}\n{"name": "Bob", "age": "x", "tags": [1, 2]}\n{oops\n42\n'
    batch_id = upload(web_client, body, NDJSON)
    run_worker(web_broker, actors)
    # When
    response = web_client.get(f"/api/batches/{batch_id}/invalid.ndjson")
    # Then
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["_row"] for line in lines] == [2, 3, 4]
    assert lines[0] == {
        "_row": 2,
        "_errors": [{"field": "age", "message": "must be an integer"}],
        "name": "Bob",
        "age": "x",
        "tags": [1, 2],
    }
    assert lines[1]["_raw"] == "{oops" and lines[1]["_errors"][0]["field"] == "_line"
    assert lines[2]["_raw"] == "42"
    # When the bad age is fixed and the file posted again as it is
    lines[0]["age"] = 30
    again = upload(web_client, "\n".join(json.dumps(line) for line in lines).encode(), NDJSON)
    sent = run_worker(web_broker, actors)
    # Then the fixed record is stored as first posted (no markers), the others are invalid again
    assert sent[0]["data"] == {"name": "Bob", "age": 30, "tags": [1, 2]}
    counts = statuses(web_client, again)
    assert (counts["stored"], counts["invalid"]) == (1, 2)


def test_a_json_array_batch_is_served_as_ndjson(db, web_client, web_broker, actors):
    # Given
    body = json.dumps([{"name": "Ann", "age": 3}, {"name": "", "age": 200}, "text"]).encode()
    batch_id = upload(web_client, body, {"content-type": "application/json"})
    run_worker(web_broker, actors)
    # When
    lines = [
        json.loads(line)
        for line in web_client.get(f"/api/batches/{batch_id}/invalid.ndjson").text.splitlines()
    ]
    # Then
    assert [(line["_row"], line.get("name"), line.get("_raw")) for line in lines] == [
        (2, "", None),
        (3, None, '"text"'),
    ]
    assert {e["field"] for e in lines[0]["_errors"]} == {"name", "age"}


def test_asking_a_batch_for_the_other_form_is_404_naming_the_right_file(db, web_client, web_broker, actors):
    # Given a CSV batch and an NDJSON batch
    csv_batch = upload(web_client, b"name,age\r\nA,x\r\n", CSV)
    ndjson_batch = upload(web_client, b'{"name": "A", "age": "x"}\n', NDJSON)
    run_worker(web_broker, actors)
    # Then
    body = assert_error(web_client.get(f"/api/batches/{csv_batch}/invalid.ndjson"), 404, "other_form")
    assert f"/api/batches/{csv_batch}/invalid.csv" in body["error"]["message"]
    assert_error(web_client.get(f"/api/batches/{ndjson_batch}/invalid.csv"), 404, "other_form")


def test_an_unknown_or_made_up_batch_is_404(db, web_client):
    assert_error(web_client.get(f"/api/batches/{signer.new_batch_id()}/invalid.csv"), 404, "not_found")
    assert_error(web_client.get("/api/batches/nope/invalid.ndjson"), 404, "not_found")
    assert_error(web_client.get(f"/api/batches/{signer.new_submission_id()}/invalid.csv"), 404, "not_found")


def test_a_large_batch_is_read_by_keyset_pages_one_after_the_other(db, web_client, monkeypatch, sql):
    # Given a registered CSV batch of 2,345 invalid rows with their kept records, and pages of 100 rows
    batch_id = signer.new_batch_id()
    sql("INSERT INTO batches (id, count, source) VALUES (%s, 2345, 'csv')", batch_id)
    sql(
        "INSERT INTO submissions (id, batch_id, row, status, errors) "
        'SELECT %s || \'.\' || n, %s, n, \'invalid\', \'[{"field": "age", "message": "bad"}]\' '
        "FROM generate_series(1, 2345) AS n",
        batch_id,
        batch_id,
    )
    sql(
        "INSERT INTO invalid_records (id, batch_id, row, data) SELECT %s || '.' || n, %s, n, "
        "jsonb_build_object('name', 'N' || n, 'age', 'x') FROM generate_series(1, 2345) AS n",
        batch_id,
        batch_id,
    )
    sql('INSERT INTO invalid_record_headers (batch_id, header) VALUES (%s, \'["name", "age"]\')', batch_id)
    monkeypatch.setattr(invalid_rows, "PAGE_ROWS", 100)
    calls: list[tuple[int, int]] = []
    fetch = invalid_rows.fetch_page

    def counted(batch: str, after_row: int, limit: int, retention_s: int):
        page = fetch(batch, after_row, limit, retention_s)
        calls.append((after_row, len(page)))
        return page

    monkeypatch.setattr(invalid_rows, "fetch_page", counted)
    # When
    rows = read_csv(web_client.get(f"/api/batches/{batch_id}/invalid.csv").text)
    # Then every row came, in order, from 24 queries of at most 100 rows, each after the last row of the one
    # before (a keyset page: no page depends on the size of the batch)
    assert [row[0] for row in rows[1:]] == [str(n) for n in range(1, 2346)]
    assert rows[2345][2:] == ["N2345", "x"]
    assert calls == [(n * 100, 100) for n in range(23)] + [(2300, 45)]


def test_records_past_the_retention_are_not_served_and_go_with_the_next_batch(
    db, web_client, web_broker, actors, sql, monkeypatch
):
    # Given a batch with an invalid row, its record kept a day ago, and a retention of an hour
    batch_id = upload(web_client, b"name,age,phone\r\nAnn,x,+1 415\r\n", CSV)
    run_worker(web_broker, actors)
    sql("UPDATE invalid_records SET created_at = now() - interval '1 day'")
    sql("UPDATE invalid_record_headers SET created_at = now() - interval '1 day'")
    state = web_client.app.state
    state.settings = dataclasses.replace(state.settings, invalid_record_retention_s=3600)
    # When
    rows = read_csv(web_client.get(f"/api/batches/{batch_id}/invalid.csv").text)
    # Then the row and its errors are listed, its cells no longer
    assert rows[1][:2] == ["1", "age: must be an integer"] and rows[1][2:] == []
    # When the next batch is registered by a worker with that retention
    from pipeline import settings

    monkeypatch.setattr(settings, "INVALID_RECORD_RETENTION_S", 3600)
    upload(web_client, b"name,age\r\nBo,y\r\n", CSV)
    run_worker(web_broker, actors)
    # Then the old record and header are deleted; the new batch's are kept
    assert sql("SELECT count(*) FROM invalid_records WHERE batch_id = %s", batch_id) == [(0,)]
    assert sql("SELECT count(*) FROM invalid_record_headers WHERE batch_id = %s", batch_id) == [(0,)]
    assert sql("SELECT count(*) FROM invalid_records") == [(1,)]
    assert sql("SELECT count(*) FROM invalid_record_headers") == [(1,)]


def test_a_retention_of_zero_keeps_no_record(db, web_client, web_broker, actors, sql, monkeypatch):
    # Given
    from pipeline import settings

    monkeypatch.setattr(settings, "INVALID_RECORD_RETENTION_S", 0)
    # When
    batch_id = upload(web_client, b"name,age\r\nAnn,x\r\n", CSV)
    run_worker(web_broker, actors)
    # Then the outcome is there, the record is not
    assert statuses(web_client, batch_id)["invalid"] == 1
    assert sql("SELECT count(*) FROM invalid_records") == [(0,)]


def test_a_redelivered_chunk_keeps_its_records_once(db, web_client, web_broker, actors, sql):
    # Given a chunk with an invalid record, validated
    upload(web_client, b"name,age\r\nAnn,x\r\n", CSV)
    [message] = [m for m in enqueued(web_broker) if m.actor_name == "validate_users"]
    results = json.loads(json.dumps(actors.validate_users(*message.args)))
    # When it is persisted twice (Kafka delivered it again)
    actors.persist_chunk(results)
    actors.persist_chunk(results)
    # Then
    assert sql("SELECT row, data, raw FROM invalid_records") == [(1, {"name": "Ann", "age": "x"}, None)]
    assert sql("SELECT header FROM invalid_record_headers") == [(["name", "age"],)]


def test_a_record_holding_nul_is_kept_with_it_spelled_as_an_escape(db, web_client, web_broker, actors):
    # Given a CSV row and an NDJSON line holding NUL, which PostgreSQL cannot store
    csv_batch = upload(web_client, b"name,age\r\nA\x00n,3\r\n", CSV)
    ndjson_batch = upload(web_client, b'{"name": "A\\u0000n", "age": 3}\n', NDJSON)
    run_worker(web_broker, actors)
    # When
    rows = read_csv(web_client.get(f"/api/batches/{csv_batch}/invalid.csv").text)
    [line] = web_client.get(f"/api/batches/{ndjson_batch}/invalid.ndjson").text.splitlines()
    # Then both are listed, the NUL written as the six characters \u0000
    assert rows[1][0] == "1" and rows[1][2:] == ["A\\u0000n", "3"]
    assert json.loads(line)["_raw"] == '{"name": "A\\u0000n", "age": 3}'
