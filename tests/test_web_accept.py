"""Accepting submissions: 202 only once the messages are on the broker, and every client error in shape."""

from __future__ import annotations

import json
import threading

import pytest
from dramatiq.brokers.stub import StubBroker

from tests.web_support import (
    BatchingBroker,
    FailingBroker,
    HangingBroker,
    assert_error,
    batch_records,
    call_streaming,
    enqueued,
    json_bytes,
    make_client,
    single_records,
)
from web.ids import BATCH, SUBMISSION, IdSigner, parse_submission_id

signer = IdSigner("test-secret")
JSON = {"content-type": "application/json"}
CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}
MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


def multipart_field(text: str) -> bytes:
    """A multipart body with a plain field (no file name) named ``file``."""
    return (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        + text.encode()
        + b"\r\n--b0undary--\r\n"
    )


# --- POST /api/user -----------------------------------------------------------------------------------
def test_a_posted_user_is_enqueued_as_is_and_answered_202_with_its_id(web_client, web_broker):
    # Given
    user = {"name": "Ada", "age": 36, "hobby": ["chess"], "address": {"city": "London"}}
    # When
    response = web_client.post("/api/user", json=user)
    # Then
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and signer.verify(body["id"], SUBMISSION)
    assert response.headers["location"] == f"/api/submissions/{body['id']}"
    [message] = enqueued(web_broker)
    # (the first stage of the worker's pipeline, piped into persist_users: two trips, not three)
    assert (message.queue_name, message.actor_name) == ("users", "validate_users")
    assert message.args == ([{"id": body["id"], "row": None, "data": user, "errors": []}], None, "json")
    assert message.options["pipe_target"]["actor_name"] == "persist_users"


def test_sql_looking_and_unicode_values_travel_literally(web_client, web_broker):
    # Given
    user = {"name": "Robert'); DROP TABLE users;--", "age": 20, "note": "李小龙 🐉 Ünïcødé"}
    # When
    response = web_client.post(
        "/api/user", content=json.dumps(user, ensure_ascii=False).encode(), headers=JSON
    )
    # Then
    assert response.status_code == 202
    assert single_records(enqueued(web_broker))[0]["data"] == user


def test_a_json_content_type_with_utf8_charset_is_accepted(web_client):
    response = web_client.post(
        "/api/user", content=b'{"a": 1}', headers={"content-type": "Application/JSON; charset=UTF-8"}
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/csv",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
def test_a_user_in_another_media_type_is_415(web_client, web_broker, content_type):
    # When
    headers = {} if content_type is None else {"content-type": content_type}
    response = web_client.post("/api/user", content=b'{"name": "Ada", "age": 3}', headers=headers)
    # Then
    assert_error(response, 415, "unsupported_media_type")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"name": "Ada"',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": 1e309}',
        b"\xff\xfe\x00{",
        b'{"a": "\xc3("}',
        b'{"a": ' + b"1" * 5000 + b"}",
    ],
)
def test_a_body_that_is_not_json_is_400_malformed_json(web_client, web_broker, body):
    assert_error(web_client.post("/api/user", content=body, headers=JSON), 400, "malformed_json")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'[{"name": "Ada"}]',
        b'"Ada"',
        b"42",
        b"null",
        b'{"name": "A\\u0000da"}',
        b'{"name": "\\udc00"}',
        b"[" * 3000 + b"]" * 3000,
        b'{"a": ' + b'{"b": ' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
def test_json_that_is_not_a_storable_object_is_422_invalid_body(web_client, web_broker, body):
    assert_error(web_client.post("/api/user", content=body, headers=JSON), 422, "invalid_body")
    assert enqueued(web_broker) == []


def test_a_user_over_the_size_limit_is_413_by_its_content_length(web_client, web_broker):
    # Given: the limit of the test settings is 16 KiB
    body = json_bytes({"name": "x" * 17_000, "age": 1})
    # When
    response = web_client.post("/api/user", content=body, headers=JSON)
    # Then
    assert_error(response, 413, "payload_too_large")
    assert enqueued(web_broker) == []


def test_a_chunked_user_over_the_size_limit_is_413_before_it_is_read_whole(web_client, web_broker):
    # Given: no Content-Length, and a body that would go on for ever
    endless = iter(lambda: b" " * 1024, None)
    # When
    status, pulled = call_streaming(web_client.app, "POST", "/api/user", "application/json", endless)
    # Then
    assert status == 413
    assert pulled <= 17
    assert enqueued(web_broker) == []


def test_a_user_is_503_with_retry_after_when_the_broker_cannot_take_it():
    # Given
    with make_client(FailingBroker()) as web_client:
        # When
        response = web_client.post("/api/user", json={"name": "Ada", "age": 36})
        # Then
        assert_error(response, 503, "queue_unavailable")
        assert response.headers["retry-after"] == "7"
        assert 'enqueue_failures_total{kind="validate_users"} 1.0' in web_client.get("/metrics").text


def test_a_bug_in_the_broker_is_a_logged_500_in_the_error_shape():
    # Given: not a broker error, so not the client's fault nor Kafka's
    with make_client(FailingBroker(error=ZeroDivisionError("bug"))) as web_client:
        # Then
        assert_error(web_client.post("/api/user", json={"a": 1}), 500, "internal_error")


# --- POST /api/users ------------------------------------------------------------------------------------
def test_a_json_batch_travels_in_chunks_then_registers_its_count(web_client, web_broker):
    # Given: chunks of 3 records in the test settings
    users = [{"name": f"user {i}", "age": i} for i in range(7)]
    # When
    response = web_client.post("/api/users", json=users)
    # Then
    assert response.status_code == 202
    body = response.json()
    assert body["count"] == 7 and signer.verify(body["batch_id"], BATCH)
    assert response.headers["location"] == f"/api/batches/{body['batch_id']}"
    messages = enqueued(web_broker)
    # (each chunk is the first stage of the worker's pipeline: validate_users piped into persist_users)
    assert [m.actor_name for m in messages] == ["validate_users"] * 3 + ["register_batch"]
    assert {m.options["pipe_target"]["actor_name"] for m in messages[:3]} == {"persist_users"}
    assert [len(m.args[0]) for m in messages[:3]] == [3, 3, 1]
    assert {m.args[2] for m in messages[:3]} == {"json"}
    assert {m.args[1] for m in messages[:3]} == {body["batch_id"]}
    assert messages[-1].args == (body["batch_id"], 7, "json")
    records = batch_records(messages)
    assert [r["row"] for r in records] == list(range(1, 8))
    assert [r["data"] for r in records] == users
    assert all(r["errors"] == [] for r in records)
    assert [r["id"] for r in records] == [f"{body['batch_id']}.{n}" for n in range(1, 8)]
    assert all(parse_submission_id(signer, r["id"]) for r in records)


def test_a_csv_batch_sends_nested_string_records_and_ragged_rows_as_invalid(web_client, web_broker):
    # Given
    body = b'name.firstName,name.lastName,age\r\nAda,"Love, lace",36\r\nBob,7\r\n\r\nCy,D,x\r\n'
    # When
    response = web_client.post("/api/users", content=body, headers=CSV)
    # Then
    assert response.status_code == 202 and response.json()["count"] == 3
    messages = enqueued(web_broker)
    assert messages[0].args[2] == "csv"
    records = batch_records(messages)
    assert records[0]["data"] == {"name": {"firstName": "Ada", "lastName": "Love, lace"}, "age": "36"}
    assert records[1]["data"] is None
    assert records[1]["errors"] == [{"field": "_row", "message": "row 2 has 2 fields, the header has 3"}]
    assert records[2]["data"] == {"name": {"firstName": "Cy", "lastName": "D"}, "age": "x"}


def test_an_ndjson_batch_keeps_bad_lines_as_invalid_records(web_client, web_broker):
    # When
    response = web_client.post(
        "/api/users", content=b'{"name": "A", "age": 1}\n{oops\n\n42\n', headers=NDJSON
    )
    # Then
    assert response.status_code == 202 and response.json()["count"] == 3
    records = batch_records(enqueued(web_broker))
    assert [r["row"] for r in records] == [1, 2, 3]
    assert records[0]["data"] == {"name": "A", "age": 1}
    assert [r["errors"][0]["field"] for r in records[1:]] == ["_line", "_line"]


@pytest.mark.parametrize("content_type", ["application/ndjson", "application/jsonl"])
def test_ndjson_is_understood_under_its_other_names(web_client, content_type):
    response = web_client.post("/api/users", content=b'{"a": 1}\n', headers={"content-type": content_type})
    assert response.status_code == 202


@pytest.mark.parametrize(
    "filename, content_type, body, source",
    [
        ("users.csv", "text/csv", b"name,age\nAda,36\n", "csv"),
        ("users.txt", "application/octet-stream", b"name,age\nAda,36\n", "csv"),
        ("users.json", "application/octet-stream", b'[{"name": "Ada", "age": 36}]', "json"),
        ("data", "application/json", b'[{"name": "Ada", "age": 36}]', "json"),
        ("users.ndjson", "application/octet-stream", b'{"name": "Ada", "age": 36}\n', "ndjson"),
    ],
)
def test_a_multipart_upload_is_parsed_by_its_type_or_name(
    web_client, web_broker, filename, content_type, body, source
):
    # When
    response = web_client.post("/api/users", files={"file": (filename, body, content_type)})
    # Then
    assert response.status_code == 202, response.text
    messages = enqueued(web_broker)
    assert messages[0].args[2] == source
    assert batch_records(messages)[0]["data"]["name"] == "Ada"


def test_a_multipart_body_without_a_file_part_is_422(web_client, web_broker):
    response = web_client.post(
        "/api/users", data={"notfile": "x"}, files={"other": ("a.csv", b"a\n1\n", "text/csv")}
    )
    assert_error(response, 422, "invalid_body")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize(
    "body",
    [b"garbage", b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n"],
)
def test_a_broken_multipart_body_is_400(web_client, body):
    response = web_client.post(
        "/api/users", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, response.json()["error"]["code"])


def test_a_multipart_body_without_boundary_is_400(web_client):
    response = web_client.post("/api/users", content=b"x", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "malformed_multipart")


@pytest.mark.parametrize(
    "body, headers, status, code",
    [
        (b"[]", JSON, 422, "invalid_body"),
        (b'{"name": "Ada"}', JSON, 422, "invalid_body"),
        (b"", JSON, 400, "malformed_json"),
        (b'[{"a": 1}, {"b": ', JSON, 400, "malformed_json"),
        (b'[{"a": 1}] trailing', JSON, 400, "malformed_json"),
        (b"name,age\r\n", CSV, 422, "invalid_body"),
        (b"", CSV, 422, "invalid_body"),
        (b'name\r\n"unterminated\r\n', CSV, 400, "malformed_csv"),
        (b"name\r\n\xff\xfe\r\n", CSV, 400, "malformed_csv"),
        (b"\n\n", NDJSON, 422, "invalid_body"),
        (b'{"a": "\xff"}\n', NDJSON, 400, "malformed_json"),
        (b"a,b", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b"a,b", {}, 415, "unsupported_media_type"),
        (b"a,b", {"content-type": "text/csv; charset=windows-1252"}, 415, "unsupported_media_type"),
    ],
)
def test_a_batch_the_api_cannot_take_is_refused_before_anything_is_sent(
    web_client, web_broker, body, headers, status, code
):
    assert_error(web_client.post("/api/users", content=body, headers=headers), status, code)
    assert enqueued(web_broker) == []


def test_a_batch_over_the_record_limit_is_413(web_client, web_broker):
    # Given: at most 50 records in the test settings
    users = [{"name": "u", "age": i} for i in range(51)]
    # Then
    assert_error(web_client.post("/api/users", json=users), 413, "payload_too_large")


def test_a_batch_over_the_byte_limit_is_413_by_its_content_length(web_client, web_broker):
    # Given: at most 64 KiB in the test settings
    body = b"name\n" + b"x\n" * 40_000
    # Then
    assert_error(web_client.post("/api/users", content=body, headers=CSV), 413, "payload_too_large")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize("content_type", ["text/csv", "application/x-ndjson", "application/json"])
def test_a_chunked_batch_over_the_byte_limit_is_413_while_streaming(web_client, web_broker, content_type):
    # Given: no Content-Length, and a body that would go on for ever (64 KiB allowed in the test settings)
    first = {"text/csv": b"name\n", "application/x-ndjson": b"", "application/json": b"["}[content_type]
    line = {"text/csv": b"x\n", "application/x-ndjson": b'{"a": 1}\n', "application/json": b'{"a": 1},'}[
        content_type
    ]

    def endless():
        yield first
        while True:
            yield line * 100

    # When
    status, pulled = call_streaming(web_client.app, "POST", "/api/users", content_type, endless())
    # Then
    assert status == 413
    assert pulled < 400


def test_a_chunked_csv_batch_within_the_limits_is_accepted(web_client, web_broker):
    # Given
    def rows():
        yield b"name,ag"
        yield b"e\nAda,3"
        yield b'6\n"Bo\nb",7\n'

    # When
    response = web_client.post("/api/users", content=rows(), headers=CSV)
    # Then
    assert response.status_code == 202 and response.json()["count"] == 2
    assert [r["data"]["name"] for r in batch_records(enqueued(web_broker))] == ["Ada", "Bo\nb"]


def test_a_batch_is_503_when_the_broker_fails_midway():
    # Given: the broker takes one chunk, then fails
    broker = FailingBroker(succeed=1)
    with make_client(broker) as web_client:
        # When
        response = web_client.post("/api/users", json=[{"name": "u", "age": i} for i in range(7)])
        # Then
        body = assert_error(response, 503, "queue_unavailable")
        assert "retry the whole batch" in body["error"]["message"]
        assert response.headers["retry-after"] == "7"
        assert [m.actor_name for m in enqueued(broker)] == ["validate_users"]


def test_a_broker_with_enqueue_many_gets_the_chunks_in_groups():
    # Given
    broker = BatchingBroker()
    with make_client(broker, batch_chunk_size=2, max_batch_records=1000) as web_client:
        # When
        response = web_client.post("/api/users", json=[{"name": "u", "age": i} for i in range(41)])
        # Then
        assert response.status_code == 202
        # 21 chunks: a group of 16, then the 5 left (register_batch goes alone, by enqueue).
        assert broker.groups == [16, 5]
        assert len(batch_records(enqueued(broker))) == 41


def test_large_valid_batches_stream_through_in_many_chunks():
    # Given
    broker = StubBroker()
    users = [{"name": f"user {i}", "age": i % 150, "email": f"u{i}@example.com"} for i in range(5000)]
    with make_client(
        broker, batch_chunk_size=500, max_batch_records=10_000, max_batch_bytes=10**7
    ) as web_client:
        # When
        response = web_client.post("/api/users", json=users)
        # Then
        assert response.status_code == 202 and response.json()["count"] == 5000
        messages = enqueued(broker)
        assert len(messages) == 11
        assert [r["data"] for r in batch_records(messages)] == users


def test_a_multipart_plain_field_named_file_is_taken_as_csv(web_client, web_broker):
    # When: a form field, not a file upload
    response = web_client.post("/api/users", content=multipart_field("name,age\nAda,36\n"), headers=MULTIPART)
    # Then
    assert response.status_code == 202, response.text
    assert batch_records(enqueued(web_broker))[0]["data"] == {"name": "Ada", "age": "36"}


def test_a_multipart_plain_field_over_the_record_limit_is_413(web_client, web_broker):
    response = web_client.post(
        "/api/users", content=multipart_field("name\n" + "x" * 20_000), headers=MULTIPART
    )
    assert_error(response, 413, "payload_too_large")


def test_a_broker_that_hangs_is_answered_503_in_bounded_time():
    # Given: a broker whose enqueue does not return until the test ends
    release = threading.Event()
    broker = HangingBroker(release)
    try:
        with make_client(broker, enqueue_timeout_seconds=0.2) as web_client:
            # When
            single = web_client.post("/api/user", json={"name": "Ada", "age": 36})
            batch = web_client.post("/api/users", json=[{"name": "Ada", "age": 36}])
    finally:
        release.set()
    # Then
    assert_error(single, 503, "queue_unavailable")
    assert_error(batch, 503, "queue_unavailable")


@pytest.mark.parametrize("key", ["\\ud800", "a\\u0000b", "\\udfff x"])
def test_a_refused_key_is_quoted_escaped_in_the_error(web_client, key):
    # When: the key itself holds what is refused
    response = web_client.post("/api/user", content=f'{{"{key}": 1}}'.encode(), headers=JSON)
    # Then: the answer still encodes, naming the key in escapes
    body = assert_error(response, 422, "invalid_body")
    assert key.replace("\\u0000", "\\\\u0000") in json.dumps(body) or key in body["error"]["message"]


def test_a_batch_record_with_a_refused_key_names_it_in_storable_text(web_client, web_broker):
    # When
    response = web_client.post("/api/users", content=b'[{"\\ud800": 1}, {"a\\u0000": 2}]', headers=JSON)
    # Then: the field paths hold neither a surrogate nor NUL (the errors column is jsonb)
    assert response.status_code == 202
    fields = [r["errors"][0]["field"] for r in batch_records(enqueued(web_broker))]
    assert fields == ["\\ud800", "a\\u0000"]
    assert all(f.isascii() and "\x00" not in f for f in fields)
