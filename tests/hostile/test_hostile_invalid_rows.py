"""The invalid-rows files under hostile ids, a missing token, and cells made to break a spreadsheet or the
round trip: a 4xx with the error shape or the file, never a 5xx; every cell comes back as it went in."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import check_answer
from tests.web_support import enqueued, make_client
from web import invalid_file, invalid_rows
from web.ids import IdSigner

pytestmark = pytest.mark.postgres

TOKEN = "s3cret-token"
test_signer = IdSigner("test-secret")
other_signer = IdSigner("not-the-test-secret")
FORMS = ("csv", "ndjson")


@pytest.fixture
def db(clean_database):
    with clean_database.connection_context():
        clean_database.execute_sql("TRUNCATE invalid_records, invalid_record_headers")
        yield clean_database


# Each id is made when the test runs (ids carry the time): parallel workers collect the same test names.
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "batch_id",
    [
        pytest.param(lambda: "nope", id="nope"),
        pytest.param(lambda: "x" * 5000, id="long"),
        pytest.param(lambda: "%00", id="nul"),
        pytest.param(lambda: "%F0%9F%90%89", id="emoji"),
        pytest.param(lambda: "..%2F..%2Fusers", id="traversal"),
        pytest.param(lambda: quote("' OR 1=1 --"), id="sql"),
        pytest.param(lambda: other_signer.new_batch_id(), id="other-secret"),
        pytest.param(lambda: test_signer.new_submission_id(), id="a-submission"),
        pytest.param(lambda: f"{test_signer.new_batch_id()}.1", id="a-record"),
        pytest.param(lambda: test_signer.new_batch_id().upper(), id="upper-case"),
        pytest.param(lambda: test_signer.new_batch_id(), id="issued-unknown"),
    ],
)
def test_an_id_that_is_no_batch_here_is_404(db, web_client, batch_id, form):
    # When
    response = web_client.get(f"/api/batches/{batch_id()}/invalid.{form}")
    # Then
    body = check_answer(response, source="invalid rows", what=f"id for .{form}", allowed=frozenset({404}))
    assert body is not None and body["error"]["code"] == "not_found"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", f"bearer  {TOKEN}x"]
)
def test_without_the_token_the_file_is_401(db, authorization, form):
    # Given an app with API_TOKEN set, and a real batch
    batch_id = test_signer.new_batch_id()
    headers = {} if authorization is None else {"Authorization": authorization}
    with make_client(api_token=TOKEN) as client:
        # When
        response = client.get(f"/api/batches/{batch_id}/invalid.{form}", headers=headers)
        # Then
        body = check_answer(response, source="invalid rows", what="no token", allowed=frozenset({401}))
        assert body is not None and body["error"]["code"] == "unauthorized"
        # and with the token, the batch is merely unknown
        good = client.get(
            f"/api/batches/{batch_id}/invalid.{form}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert good.status_code == 404


def test_a_wrong_method_or_suffix_is_a_4xx(db, web_client):
    batch_id = test_signer.new_batch_id()
    for method, path in [
        ("POST", f"/api/batches/{batch_id}/invalid.csv"),
        ("DELETE", f"/api/batches/{batch_id}/invalid.ndjson"),
        ("GET", f"/api/batches/{batch_id}/invalid.xlsx"),
        ("GET", f"/api/batches/{batch_id}/invalid.csv/"),
        ("GET", f"/api/batches/{batch_id}/invalid"),
    ]:
        response = web_client.request(method, path)
        check_answer(response, source="invalid rows", what=f"{method} {path}", allowed=frozenset({404, 405}))


@pytest.fixture(scope="module")
def actors():
    from pipeline.worker import actors as module

    return module


def run_worker(broker: Any, actors: Any) -> None:
    for message in enqueued(broker):
        if message.actor_name == "validate_users":
            actors.persist_chunk(json.loads(json.dumps(actors.validate_users(*message.args))))
        elif message.actor_name == "register_batch":
            actors.register_batch(*message.args)


hostile_cells = st.text(
    st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=20
) | st.sampled_from(
    [
        "=1+2",
        "+1 415 555 0100",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=cmd|' /C calc'!A0",
        "\r=1",
        "'",
        "''=",
        "'+1",
        '=HYPERLINK("http://evil","x")',
        "a,b\r\nc",
        '"quoted"',
    ]
)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(st.tuples(hostile_cells, hostile_cells), min_size=1, max_size=5))
def test_hostile_cells_are_defused_in_the_file_and_read_back_as_they_were(db, actors, rows):
    # Given a CSV batch of invalid rows (age "x") whose other cells are hostile, through web and worker
    with make_client() as client:
        broker = client.app.state.broker
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(
            [["=name", "age", "note"], *[[a, "x", b] for a, b in rows]]
        )
        answer = client.post(
            "/api/users", content=buffer.getvalue().encode(), headers={"content-type": "text/csv"}
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["batch_id"]
        run_worker(broker, actors)
        # When
        response = client.get(f"/api/batches/{batch_id}/invalid.csv")
    # Then no cell of the file starts as a formula, and each reads back as it was uploaded
    check_answer(response, source="invalid rows", what="hostile cells", allowed=frozenset({200}))
    got = list(csv.reader(io.StringIO(response.text, newline="")))
    assert all(not cell.startswith(invalid_file.FORMULA_STARTS) for line in got for cell in line), got
    assert [invalid_file.unescape_cell(cell) for cell in got[0][2:]] == ["=name", "age", "note"]
    assert [[invalid_file.unescape_cell(cell) for cell in line[2:]] for line in got[1:]] == [
        [a, "x", b] for a, b in rows
    ]


def call_app(app: Any, path: str) -> tuple[int, list[bytes]]:
    """GET ``path`` on the ASGI app; the status and each piece of the body as the app sent it (TestClient
    would join them)."""
    status, pieces, asked = 0, [], []

    async def receive() -> dict[str, Any]:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep(3600)  # the client stays until the body ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            pieces.append(message["body"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return status, pieces


def test_a_huge_batchs_file_is_sent_in_pieces_of_one_page_each(db, sql):
    # Given a registered NDJSON batch of 30,000 invalid records, kept
    batch_id = test_signer.new_batch_id()
    rows = 30_000
    sql("INSERT INTO batches (id, count, source) VALUES (%s, %s, 'ndjson')", batch_id, rows)
    sql(
        "INSERT INTO submissions (id, batch_id, row, status, errors) "
        "SELECT %s || '.' || n, %s, n, 'invalid', '[]' FROM generate_series(1, %s) AS n",
        batch_id,
        batch_id,
        rows,
    )
    sql(
        "INSERT INTO invalid_records (id, batch_id, row, data) SELECT %s || '.' || n, %s, n, "
        "jsonb_build_object('name', repeat('x', 50), 'age', n) FROM generate_series(1, %s) AS n",
        batch_id,
        batch_id,
        rows,
    )
    # When
    with make_client() as client:
        status, pieces = call_app(client.app, f"/api/batches/{batch_id}/invalid.ndjson")
    # Then every record came, one piece per page of rows: never the whole file at once
    assert status == 200
    lines = b"".join(pieces).decode().splitlines()
    assert len(lines) == rows and json.loads(lines[-1])["_row"] == rows
    assert len(pieces) == rows // invalid_rows.PAGE_ROWS
    assert max(len(piece) for piece in pieces) < len(b"".join(pieces)) / 10
