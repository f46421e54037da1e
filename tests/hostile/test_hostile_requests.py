"""Hand-picked hostile requests, in process on Dramatiq's StubBroker: each answered as documented, never 5xx.

Malformed and truncated JSON, wrong and missing content types, empty bodies, bodies over the limits (refused
before they are read whole), 100k levels of nesting, huge strings, NUL bytes, invalid UTF-8, ragged CSV,
duplicate keys, numbers out of range, batches over the record limit, odd query strings and ids.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

from tests.hostile.conftest import DOCUMENTED_POST_STATUSES, ROOMY, asgi_post, check_answer
from tests.web_support import TEST_SETTINGS, batch_records, enqueued, make_client

JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
MULTIPART = "multipart/form-data; boundary=b0undary"
#: Bytes of each piece of an endless body.
PIECE = 1000


def post(client: Any, path: str, body: bytes, content_type: str | None = JSON) -> Any:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(path, content=body, headers=headers)
    check_answer(
        response, source="hand-picked", what=f"{path} {body[:60]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    return response


def error_code(response: Any) -> tuple[int, str | None]:
    """Status and error code (None for a success), to compare with what is expected in one assert."""
    body = response.json()
    return response.status_code, body["error"]["code"] if "error" in body else None


def registered(broker: StubBroker) -> list[Any]:
    return [m for m in enqueued(broker) if m.actor_name == "register_batch"]


# --- Malformed and truncated JSON ---------------------------------------------------------------------------

A_USER = (
    b'{"name": {"firstName": "Ada", "lastName": "Lovelace"}, "age": 36, "tags": ["x", 1.5e3, null, true]}'
)
A_BATCH = b'[{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41, "tags": [1, {"a": "b"}]}]'


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"}",
        b"{'name': 'Ada'}",
        b'{"name": "Ada",}',
        b'{"name" "Ada"}',
        b'{"name": "Ada"}}',
        b'{"name": "Ada"} {"name": "Alan"}',
        b'{"name": undefined}',
        b'{"name": "Ada"} // comment',
        b'{"age": 0x10}',
        b'{"age": 010}',
        b'{"age": +1}',
        b'{"age": .5}',
        b'{"name": "tab\there"}',  # a raw control character inside a string
        b'{"name": "\\x41"}',
        b"\xef\xbb\xbf\xef\xbb\xbf{}",  # two byte-order marks
    ],
)
def test_malformed_json_is_400_malformed_json(web_client, web_broker, body):
    # When
    response = post(web_client, "/api/user", body)
    # Then
    assert error_code(response) == (400, "malformed_json")
    assert enqueued(web_broker) == []


def test_every_truncation_of_a_user_is_400_and_nothing_is_sent(web_client, web_broker):
    # Given every proper prefix of a valid user (the body of a client that hung up or was cut off)
    for end in range(len(A_USER)):
        # When
        response = post(web_client, "/api/user", A_USER[:end])
        # Then
        assert error_code(response) == (400, "malformed_json"), A_USER[:end]
    assert enqueued(web_broker) == []


def test_every_truncation_of_a_json_batch_is_400_and_nothing_is_registered(web_client, web_broker):
    # Given every proper prefix of a valid JSON array batch
    for end in range(len(A_BATCH)):
        # When
        response = post(web_client, "/api/users", A_BATCH[:end])
        # Then
        assert error_code(response) == (400, "malformed_json"), A_BATCH[:end]
    assert enqueued(web_broker) == []


def test_a_truncated_last_ndjson_line_is_an_invalid_record_and_the_rest_goes_on(web_client, web_broker):
    # Given NDJSON whose last line was cut short
    body = b'{"name": "Ada", "age": 36}\n{"name": "Alan", "age": 4'
    # When
    response = post(web_client, "/api/users", body, NDJSON)
    # Then
    assert response.status_code == 202 and response.json()["count"] == 2
    first, second = batch_records(enqueued(web_broker))
    assert first["data"] == {"name": "Ada", "age": 36} and first["errors"] == []
    assert second["data"] is None and [e["field"] for e in second["errors"]] == ["_line"]


def test_a_csv_cut_inside_a_quoted_cell_is_400_malformed_csv(web_client, web_broker):
    # Given a CSV body that ends inside an open quote
    body = b'name,age\r\n"Ada,36\r\n'
    # When
    response = post(web_client, "/api/users", body, CSV)
    # Then
    assert error_code(response) == (400, "malformed_csv")
    assert registered(web_broker) == []


# --- Wrong and missing content types ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/user", "/api/users"])
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/json-patch+json",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "*/*",
        ";",
        "application/json\x7f",
    ],
)
def test_a_body_of_a_content_type_the_route_does_not_take_is_415(web_client, web_broker, path, content_type):
    # When
    response = post(web_client, path, b'[{"name": "Ada", "age": 36}]', content_type)
    # Then
    assert error_code(response) == (415, "unsupported_media_type")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize(
    "content_type",
    ["APPLICATION/JSON", "application/json; charset=UTF-8", ' application/json ; charset="utf8"'],
)
def test_the_json_content_type_is_matched_without_regard_to_case_or_parameters(web_client, content_type):
    # When
    response = post(web_client, "/api/user", b'{"name": "Ada", "age": 36}', content_type)
    # Then
    assert response.status_code == 202


# --- Empty bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, content_type, expected",
    [
        ("/api/user", JSON, (400, "malformed_json")),
        ("/api/users", JSON, (400, "malformed_json")),
        ("/api/users", NDJSON, (422, "invalid_body")),
        ("/api/users", CSV, (422, "invalid_body")),
        ("/api/users", MULTIPART, (422, "invalid_body")),
        ("/api/users", "multipart/form-data", (400, "malformed_multipart")),  # no boundary
    ],
)
@pytest.mark.parametrize("body", [b"", b" \r\n\t ", b"\xef\xbb\xbf"])
def test_an_empty_body_is_refused_and_nothing_is_sent(
    web_client, web_broker, path, content_type, expected, body
):
    # When
    response = post(web_client, path, body, content_type)
    # Then
    if content_type.startswith("multipart") and body:
        assert response.status_code in {400, 422}  # whitespace or a BOM is not a multipart body either
    else:
        assert error_code(response) == expected
    assert enqueued(web_broker) == []


# --- Bodies over the limit: refused before they are read whole ----------------------------------------------


def endless(prefix: bytes, piece: bytes) -> Any:
    return itertools.chain([prefix], itertools.repeat(piece))


ENDLESS = {
    # name: (path, content type, endless body, limit that stops it)
    "user": ("/api/user", JSON, endless(b'{"name": "', b"x" * PIECE), "max_body_bytes"),
    "json batch": ("/api/users", JSON, endless(b"[", b'{"name": "Ada", "age": 36},' * 20), "max_batch_bytes"),
    "ndjson batch": (
        "/api/users",
        NDJSON,
        endless(b"", b'{"name": "Ada", "age": 36}\n' * 20),
        "max_batch_bytes",
    ),
    "csv batch": ("/api/users", CSV, endless(b"name,age\r\n", b"Ada,36\r\n" * 100), "max_batch_bytes"),
    "multipart file": (
        "/api/users",
        MULTIPART,
        endless(
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="u.csv"\r\n\r\n'
            b"name,age\r\n",
            b"Ada,36\r\n" * 100,
        ),
        "max_batch_bytes",
    ),
    "one endless ndjson line": ("/api/users", NDJSON, endless(b'{"name": "', b"x" * PIECE), "max_body_bytes"),
    "one endless csv cell": ("/api/users", CSV, endless(b'name,age\r\n"', b"x" * PIECE), "max_body_bytes"),
    "one endless multipart field": (
        "/api/users",
        MULTIPART,
        endless(b'--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\n', b"x" * PIECE),
        "max_body_bytes",
    ),
}


@pytest.mark.parametrize("name", sorted(ENDLESS))
def test_an_endless_chunked_body_is_413_once_past_its_limit_and_read_no_further(web_broker, name):
    # Given an app that would take any number of records, and a body that never ends
    path, content_type, pieces, limit_name = ENDLESS[name]
    limit = getattr(TEST_SETTINGS, limit_name)
    with make_client(web_broker, max_batch_records=10**9) as client:
        # When
        answer, pulled = asgi_post(client.app, path, {"content-type": content_type}, pieces)
    # Then: refused, having read at most one piece (and a multipart header) past the limit
    check_answer(answer, source="hand-picked", what=f"endless {name}", allowed=DOCUMENTED_POST_STATUSES)
    assert error_code(answer) == (413, "payload_too_large"), answer.text
    assert limit < pulled <= limit + PIECE + 1024, pulled
    assert registered(web_broker) == []


def test_an_endless_json_string_element_is_refused_once_past_the_record_limit(web_broker):
    # Given a JSON array whose first element is a string that never ends
    with make_client(web_broker) as client:
        # When
        answer, pulled = asgi_post(
            client.app, "/api/users", {"content-type": JSON}, endless(b'["', b"x" * PIECE)
        )
    # Then: refused after about one record's worth (400 today: the parser cannot tell "too long" from "cut")
    check_answer(answer, source="hand-picked", what="endless json element", allowed=DOCUMENTED_POST_STATUSES)
    assert answer.status_code in {400, 413}
    assert pulled <= TEST_SETTINGS.max_body_bytes + 2 * PIECE, pulled


@pytest.mark.parametrize(
    "path, content_type",
    [("/api/user", JSON), ("/api/users", JSON), ("/api/users", CSV), ("/api/users", MULTIPART)],
)
def test_a_body_announced_over_the_limit_is_413_without_reading_a_byte(web_client, path, content_type):
    # Given a Content-Length over the batch limit, and a body that would never end
    headers = {"content-type": content_type, "content-length": str(10**12)}
    # When
    answer, pulled = asgi_post(web_client.app, path, headers, itertools.repeat(b"x" * PIECE))
    # Then
    check_answer(answer, source="hand-picked", what=f"announced {path}", allowed=DOCUMENTED_POST_STATUSES)
    assert error_code(answer) == (413, "payload_too_large")
    assert pulled == 0


# A record longer than MAX_BODY_BYTES is 413 (web/parsing.py), whatever its form and however it arrives.
@pytest.mark.parametrize(
    "content_type, body",
    [
        (JSON, b'[{"name": "' + b"x" * 20_000 + b'"}]'),
        (NDJSON, b'{"name": "' + b"x" * 20_000 + b'"}\n'),
        (CSV, b"name\r\n" + b"x" * 20_000 + b"\r\n"),
        (CSV, b"a,b,c,d\r\n" + b"x" * 6_000 + b"," + b"y" * 6_000 + b"," + b"z" * 6_000 + b",w\r\n"),
    ],
    ids=["json element", "ndjson line", "csv cell", "csv line of small cells"],
)
def test_a_record_over_the_record_limit_is_413_even_when_it_arrives_whole(
    web_client, web_broker, content_type, body
):
    # Given one record of ~20 KB, the record limit being 16 KiB (the batch limit 64 KiB)
    # When it arrives in one piece
    response = post(web_client, "/api/users", body, content_type)
    # Then
    assert error_code(response) == (413, "payload_too_large"), response.text
    assert registered(web_broker) == []


# --- A batch over the record limit --------------------------------------------------------------------------


def batch_of(count: int, form: str) -> tuple[bytes, str]:
    users = [{"name": f"User {n}", "age": 20 + n % 50} for n in range(count)]
    if form == "json":
        return json.dumps(users).encode(), JSON
    if form == "ndjson":
        return "\n".join(json.dumps(u) for u in users).encode(), NDJSON
    return ("name,age\r\n" + "".join(f"{u['name']},{u['age']}\r\n" for u in users)).encode(), CSV


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_a_batch_over_the_record_limit_is_413_and_never_registered(web_client, web_broker, form):
    # Given one record more than the limit (50)
    body, content_type = batch_of(TEST_SETTINGS.max_batch_records + 1, form)
    # When
    response = post(web_client, "/api/users", body, content_type)
    # Then: refused; chunks sent before the count ran over may be processed (documented), but the batch is
    # never registered, so it never reports "completed"
    assert error_code(response) == (413, "payload_too_large")
    assert registered(web_broker) == []


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_a_batch_at_the_record_limit_is_accepted_whole(web_client, web_broker, form):
    # Given exactly the limit
    body, content_type = batch_of(TEST_SETTINGS.max_batch_records, form)
    # When
    response = post(web_client, "/api/users", body, content_type)
    # Then
    assert response.status_code == 202 and response.json()["count"] == TEST_SETTINGS.max_batch_records
    messages = enqueued(web_broker)
    assert len(batch_records(messages)) == TEST_SETTINGS.max_batch_records
    assert [m.args[:2] for m in messages if m.actor_name == "register_batch"] == [
        (response.json()["batch_id"], TEST_SETTINGS.max_batch_records)
    ]


# --- Deep nesting: 100,000 levels ---------------------------------------------------------------------------

LEVELS = 100_000
DEEP_ARRAY = b"[" * LEVELS + b"]" * LEVELS
DEEP_OBJECT = b'{"a":' * LEVELS + b"1" + b"}" * LEVELS
UNCLOSED = b'{"a":' * LEVELS


@pytest.mark.parametrize(
    "body", [DEEP_OBJECT, b'{"a": ' + DEEP_ARRAY + b"}", UNCLOSED], ids=["object", "array", "unclosed"]
)
def test_a_user_nested_100k_levels_deep_is_refused_without_crashing(roomy_client, web_broker, body):
    # When
    response = post(roomy_client, "/api/user", body)
    # Then: 422 (too deep) or 400 (never closed), and the app still answers
    assert response.status_code in {400, 422}
    assert enqueued(web_broker) == []
    assert post(roomy_client, "/api/user", b'{"name": "Ada", "age": 36}').status_code == 202


@pytest.mark.parametrize(
    "content_type, body",
    [
        (JSON, b"[" + DEEP_OBJECT + b"]"),
        (JSON, DEEP_ARRAY),
        (NDJSON, b'{"name": "Ada", "age": 36}\n' + DEEP_OBJECT + b"\n"),
        (CSV, b".".join([b"a"] * 50_000) + b"\r\n1\r\n"),
    ],
    ids=["json element", "json array", "ndjson line", "csv header"],
)
def test_a_batch_nested_100k_levels_deep_is_refused_or_flags_the_record(
    roomy_client, web_broker, content_type, body
):
    # When
    response = post(roomy_client, "/api/users", body, content_type)
    # Then: the whole batch is refused (422), or (NDJSON) the deep line is an invalid record
    if content_type == NDJSON:
        assert response.status_code == 202
        ok, deep = batch_records(enqueued(web_broker))
        assert ok["data"] == {"name": "Ada", "age": 36}
        assert deep["data"] is None and deep["errors"]
    else:
        assert error_code(response) == (422, "invalid_body")


def test_nesting_one_level_past_the_limit_is_refused_and_at_the_limit_accepted(web_client):
    # Given objects nested 32 and 33 levels deep (the record itself is level 1)
    at_limit = b'{"a":' * 31 + b"{}" + b"}" * 31
    past_limit = b'{"a":' * 32 + b"{}" + b"}" * 32
    # Then
    assert post(web_client, "/api/user", at_limit).status_code == 202
    assert error_code(post(web_client, "/api/user", past_limit)) == (422, "invalid_body")


# --- Huge strings ---------------------------------------------------------------------------------------


def test_a_string_just_under_the_body_limit_travels_whole(roomy_client, web_broker):
    # Given a name of almost 2 MiB (the body limit of the roomy app)
    name = "é" * (ROOMY["max_body_bytes"] // 2 - 64)
    # When
    response = post(
        roomy_client, "/api/user", json.dumps({"name": name, "age": 1}, ensure_ascii=False).encode()
    )
    # Then
    assert response.status_code == 202
    [message] = enqueued(web_broker)
    assert message.args[0][0]["data"]["name"] == name


def test_a_string_just_over_the_body_limit_is_413(roomy_client, web_broker):
    # Given a body one byte over the limit, without Content-Length (read, then refused)
    body = b'{"name": "' + b"x" * (ROOMY["max_body_bytes"] - 11) + b'"}'
    assert len(body) == ROOMY["max_body_bytes"] + 1
    # When
    answer, _ = asgi_post(roomy_client.app, "/api/user", {"content-type": JSON}, iter([body]))
    # Then
    check_answer(answer, source="hand-picked", what="user 1 byte over", allowed=DOCUMENTED_POST_STATUSES)
    assert error_code(answer) == (413, "payload_too_large")
    assert enqueued(web_broker) == []


# --- NUL bytes, lone surrogates, invalid UTF-8 -------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"name": "a\x00b"}', (400, "malformed_json")),  # a raw NUL is a control character: not JSON
        (b'{"name": "Ada"}\x00', (400, "malformed_json")),
        (b'\x00{"name": "Ada"}', (400, "malformed_json")),
        (b'{"name": "a\\u0000b"}', (422, "invalid_body")),
        (b'{"a\\u0000b": 1}', (422, "invalid_body")),
        (b'{"name": "\\ud800"}', (422, "invalid_body")),
        (b'{"tags": [{"x": "\\udfff"}]}', (422, "invalid_body")),
        # A key holding a lone surrogate: the error message names the field, which must not break the answer.
        (b'{"\\ud800": 1}', (422, "invalid_body")),
        (b'{"a": {"\\udc00\\u0000": 1}}', (422, "invalid_body")),
    ],
)
def test_nul_and_lone_surrogates_in_a_user_are_refused_in_the_error_shape(
    web_client, web_broker, body, expected
):
    # When
    response = post(web_client, "/api/user", body)
    # Then
    assert error_code(response) == expected, response.text
    assert enqueued(web_broker) == []


def test_a_surrogate_pair_escape_is_one_character_and_accepted(web_client, web_broker):
    # When
    response = post(web_client, "/api/user", b'{"name": "\\ud83d\\udc09 dragon", "age": 3}')
    # Then
    assert response.status_code == 202
    assert enqueued(web_broker)[0].args[0][0]["data"]["name"] == "🐉 dragon"


@pytest.mark.parametrize(
    "content_type, body",
    [
        (JSON, b'[{"name": "Ada", "age": 36}, {"a\\u0000": 1}, {"b": "\\ud800"}, {"\\udfff": 2}]'),
        (NDJSON, b'{"name": "Ada", "age": 36}\n{"a\\u0000": 1}\n{"b": "\\ud800"}\n{"\\udfff": 2}\n'),
    ],
    ids=["json", "ndjson"],
)
def test_records_holding_nul_or_lone_surrogates_are_invalid_and_the_batch_goes_on(
    web_client, web_broker, content_type, body
):
    # Given a batch with one good record and three that PostgreSQL cannot store
    # When
    response = post(web_client, "/api/users", body, content_type)
    # Then: accepted; the bad records travel as invalid, with an error naming the field (the validator
    # escapes NUL and surrogates in it before storing: see test_hostile_stack.py)
    assert response.status_code == 202 and response.json()["count"] == 4
    good, *bad = batch_records(enqueued(web_broker))
    assert good["data"] == {"name": "Ada", "age": 36}
    for record in bad:
        assert record["data"] is None and record["errors"], record


def test_a_csv_cell_holding_nul_makes_only_its_row_invalid(web_client, web_broker):
    # When
    response = post(web_client, "/api/users", b"name,age\r\nAda,36\r\nA\x00da,37\r\nAlan,41\r\n", CSV)
    # Then
    assert response.status_code == 202 and response.json()["count"] == 3
    first, second, third = batch_records(enqueued(web_broker))
    assert first["data"] == {"name": "Ada", "age": "36"} and third["data"] == {"name": "Alan", "age": "41"}
    assert second["data"] is None and [e["field"] for e in second["errors"]] == ["name"]


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"],
    ids=["0xff", "overlong", "encoded surrogate", "cut sequence", "beyond U+10FFFF", "lone continuation"],
)
@pytest.mark.parametrize(
    "path, content_type, template",
    [
        ("/api/user", JSON, b'{"name": "%s"}'),
        ("/api/users", JSON, b'[{"name": "%s"}]'),
        ("/api/users", NDJSON, b'{"name": "%s"}\n'),
        ("/api/users", CSV, b"name\r\n%s\r\n"),
    ],
)
def test_invalid_utf8_is_400_in_every_form(web_client, web_broker, bad, path, content_type, template):
    # When
    response = post(web_client, path, template % bad, content_type)
    # Then
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"malformed_json", "malformed_csv"}
    assert registered(web_broker) == [] and batch_records(enqueued(web_broker)) == []


def test_a_utf16_body_is_400_not_guessed(web_client, web_broker):
    # When
    response = post(web_client, "/api/user", '{"name": "Ada"}'.encode("utf-16"))
    # Then
    assert error_code(response) == (400, "malformed_json")


# --- CSV: ragged rows and embedded newlines -----------------------------------------------------------------


def test_csv_ragged_rows_are_invalid_and_quoted_newlines_stay_in_their_cell(web_client, web_broker):
    # Given rows with too few and too many cells, and cells holding CRLF, LF, quotes and commas
    body = (
        b"name.firstName,name.lastName,age,note\r\n"
        b'Ada,Lovelace,36,"line one\r\nline two"\r\n'
        b"Alan,Turing\r\n"
        b'Grace,Hopper,85,"a ""quoted"" word, and a comma",extra\r\n'
        b'"Edsger","Dijkstra","72","lf\nonly"\n'
        b"\r\n"
        b",,,\r\n"
        b"Barbara,Liskov,,\r\n"
    )
    # When
    response = post(web_client, "/api/users", body, CSV)
    # Then: blank rows skipped; rows numbered from the first data row
    assert response.status_code == 202 and response.json()["count"] == 5
    records = batch_records(enqueued(web_broker))
    assert [r["row"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["data"] == {
        "name": {"firstName": "Ada", "lastName": "Lovelace"},
        "age": "36",
        "note": "line one\r\nline two",
    }
    assert records[1]["data"] is None and "2 fields" in records[1]["errors"][0]["message"]
    assert records[2]["data"] is None and "5 fields" in records[2]["errors"][0]["message"]
    assert records[3]["data"]["note"] == "lf\nonly"
    assert records[4]["data"] == {"name": {"firstName": "Barbara", "lastName": "Liskov"}}


@pytest.mark.parametrize(
    "header",
    [b"name,name", b"name,,age", b"address,address.city", b"a..b", b".a", b"a\x00b", b" , "],
)
def test_a_csv_header_that_cannot_build_objects_is_422(web_client, web_broker, header):
    # When
    response = post(web_client, "/api/users", header + b"\r\n1,2\r\n", CSV)
    # Then
    assert error_code(response) == (422, "invalid_body")


# --- Duplicate keys, odd numbers -----------------------------------------------------------------------


def test_with_duplicate_keys_the_last_one_wins_everywhere(web_client, web_broker):
    # When
    post(web_client, "/api/user", b'{"name": "First", "name": "Last", "a": {"b": 1, "b": 2}}')
    post(web_client, "/api/users", b'[{"name": "First", "name": "Last"}]')
    post(web_client, "/api/users", b'{"name": "First", "name": "Last"}\n', NDJSON)
    # Then
    messages = enqueued(web_broker)
    assert messages[0].args[0][0]["data"] == {"name": "Last", "a": {"b": 2}}
    assert [r["data"] for r in batch_records(messages)] == [{"name": "Last"}, {"name": "Last"}]


@pytest.mark.parametrize(
    "number",
    [
        b"1e309",
        b"-1e309",
        b"1e999999999",
        b"NaN",
        b"-NaN",
        b"Infinity",
        b"-Infinity",
        b"nan",
        b"inf",
        b"1" * 5000,
    ],
)
def test_numbers_json_cannot_carry_are_400(web_client, web_broker, number):
    # When
    response = post(web_client, "/api/user", b'{"name": "Ada", "age": ' + number + b"}")
    # Then
    assert error_code(response) == (400, "malformed_json")
    assert enqueued(web_broker) == []


@pytest.mark.parametrize("number", [b"NaN", b"1e309", b"-Infinity"])
def test_numbers_json_cannot_carry_spoil_only_their_ndjson_line(web_client, web_broker, number):
    # When
    response = post(web_client, "/api/users", b'{"age": 1}\n{"age": ' + number + b"}\n", NDJSON)
    # Then
    assert response.status_code == 202
    good, bad = batch_records(enqueued(web_broker))
    assert good["data"] == {"age": 1} and bad["data"] is None and bad["errors"][0]["field"] == "_line"


@pytest.mark.parametrize(
    "number, value",
    [
        (b"1e308", 1e308),
        (b"-0", 0),
        (b"5e-324", 5e-324),
        (b"1e-400", 0.0),
        (b"1E+2", 100.0),
        (b"123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_numbers_in_range_travel_as_numbers(web_client, web_broker, number, value):
    # When
    response = post(web_client, "/api/user", b'{"age": ' + number + b"}")
    # Then
    assert response.status_code == 202
    assert enqueued(web_broker)[0].args[0][0]["data"]["age"] == value


# --- Multipart oddities -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, body",
    [
        (MULTIPART, b"--b0undary\r\n\r\n\r\n--b0undary--\r\n"),
        (MULTIPART, b"--b0undary\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b0undary--\r\n"),
        (
            MULTIPART,
            b'--b0undary\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b0undary--\r\n',
        ),
        (MULTIPART, b"--wrong\r\nContent-Disposition: form-data; name=file\r\n\r\nx\r\n--wrong--\r\n"),
        (
            MULTIPART,
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nname\r\nAda',
        ),
        ("multipart/form-data; boundary=", b"----\r\n"),
        ("multipart/form-data; boundary=" + "b" * 5000, b"x"),
        ('multipart/form-data; boundary="unterminated', b"x"),
        ("multipart/form-data; boundary=b0undary; charset=utf-8", b"--b0undary--\r\n"),
    ],
)
def test_broken_multipart_bodies_are_refused_in_the_error_shape(web_client, web_broker, content_type, body):
    # When
    response = post(web_client, "/api/users", body, content_type)
    # Then
    assert response.status_code in {400, 413, 415, 422} or response.status_code == 202
    if response.status_code != 202:
        assert registered(web_broker) == []


# --- Reads: odd ids and query strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/submissions/" + "0" * 36,
        "/api/submissions/" + "z" * 10_000,
        "/api/submissions/%00",
        "/api/submissions/..%2F..%2Fetc%2Fpasswd",
        "/api/submissions/' OR '1'='1",
        "/api/submissions/" + "0" * 36 + ".1",
        "/api/submissions/" + "0" * 36 + ".99999999999999999999999",
        "/api/submissions/" + "0" * 36 + ".-1",
        "/api/submissions/" + "0" * 36 + ".\u0661",
        "/api/batches/" + "0" * 36,
        "/api/batches/%F0%9F%90%89",
        "/api/batches/%ff%fe",
    ],
)
def test_made_up_ids_are_404_in_the_error_shape(web_client, path):
    # When
    response = web_client.get(path)
    # Then
    check_answer(response, source="hand-picked", what=path[:80], allowed=frozenset({404}))


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=1001",
        "limit=1e3",
        "limit=\u0661\u0660",  # Arabic-Indic digits: str.isdigit() says yes, int() would take them
        "limit=" + "9" * 5000,
        "cursor=-1",
        "cursor=99999999999999999999",
        "cursor=0x10",
        "name=%00",
        "name=" + "a" * 201,
    ],
)
def test_odd_query_parameters_are_400_invalid_parameter(web_client, query):
    # When
    response = web_client.get(f"/api/users?{query}")
    # Then
    check_answer(response, source="hand-picked", what=query[:80], allowed=frozenset({400}))
    assert response.json()["error"]["code"] == "invalid_parameter"


# --- One known gap in the answers: Allow on 405 -------------------------------------------------------------


def test_a_405_lists_every_method_the_path_takes_in_allow(web_client):
    # Given /api/users takes GET and POST
    # When it is sent a method it does not take
    response = web_client.request("DELETE", "/api/users")
    # Then
    check_answer(response, source="hand-picked", what="DELETE /api/users", allowed=frozenset({405}))
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed, response.headers["allow"]
