"""Hypothesis throws generated bodies at ``POST /api/user`` and ``POST /api/users`` (every batch form).

Two kinds of properties.  For *any* bytes, text or content type: never a 5xx, only the documented statuses
(202/400/401/413/415/422/503), every error in the one shape.  For generated *well-formed* bodies, an exact
oracle: which status, how many records, and what each record carries to the workers (the data as posted,
or ``None`` with an error naming the field when the record cannot be stored).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.hostile.conftest import DOCUMENTED_POST_STATUSES, Answer, asgi_post, check_answer
from tests.web_support import TEST_SETTINGS, batch_records, enqueued, make_client
from web.parsing import MAX_DEPTH

#: Examples per property; about a dozen properties, so a couple of thousand requests in all.
EXAMPLES = 200

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ in the work tree; a failure prints the example to reproduce it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

BATCH_MEDIA = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "multipart": "multipart/form-data; boundary=fuzzb0undary",
}


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[TestClient, StubBroker]]:
    """One app for the whole module (hypothesis runs many examples per test); limits of ``web_support``."""
    broker = StubBroker()
    with make_client(broker) as client:
        yield client, broker
    broker.close()


def post_in_pieces(client: TestClient, path: str, content_type: str, body: bytes, cuts: list[int]) -> Answer:
    """POST ``body`` to the app cut at the byte offsets ``cuts`` (pieces may split a UTF-8 character, a
    number, a line end); TestClient would send it whole."""
    offsets = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    pieces = [body[a:b] for a, b in itertools.pairwise(offsets)]
    answer, _ = asgi_post(client.app, path, {"content-type": content_type}, iter(pieces))
    return answer


cuts_strategy = st.lists(st.integers(min_value=0, max_value=100_000), max_size=6)


def drained(broker: StubBroker) -> list[Any]:
    """What the app enqueued since the last call (the StubBroker's queue, emptied)."""
    return enqueued(broker)


# --- Strategies -----------------------------------------------------------------------------------------

#: Text that may hold anything Unicode, NUL and lone surrogates included (surrogates only reach the
#: server as JSON ``\\u`` escapes: they cannot be encoded as UTF-8).
nasty_text = st.text(st.characters(codec=None, categories=None), max_size=20) | st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "\udfff x", "\ufeff", "\u2028", "'; DROP TABLE users;--", "\\", '"']
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | nasty_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(nasty_text, json_values, max_size=6)


def deep(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = {"k": value}
    return value


#: Objects that are sometimes nested just past the limit of the API.
maybe_deep_objects = json_objects | st.builds(
    deep, json_objects, st.integers(min_value=MAX_DEPTH - 3, max_value=MAX_DEPTH + 3)
)


def storable(value: Any, depth: int = 1) -> bool:
    """The rule of ``web.parsing``: no NUL, no lone surrogate, at most ``MAX_DEPTH`` levels."""
    if isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            return False
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return all((not isinstance(k, str) or storable(k)) and storable(v, depth + 1) for k, v in items)
    if isinstance(value, str):
        return "\x00" not in value and not re.search("[\ud800-\udfff]", value)
    return True


def encode(value: Any, ensure_ascii: bool) -> bytes:
    """JSON bytes of ``value``; non-ASCII as UTF-8 unless it holds lone surrogates (those need escapes)."""
    text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, allow_nan=False).encode()


# --- POST /api/user: anything goes in, only documented answers come out -------------------------------------


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_bytes_posted_as_a_user_get_a_documented_answer(app, body):
    # Given any bytes, sent as JSON
    client, broker = app
    # When
    response = client.post("/api/user", content=body, headers={"content-type": "application/json"})
    # Then
    check_answer(
        response, source="hypothesis", what=f"user bytes {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    assert len(drained(broker)) == (1 if response.status_code == 202 else 0)


@FUZZ
@given(
    text=st.text(max_size=200),
    content_type=st.sampled_from(
        [
            None,
            "",
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
            "application/json; charset=UTF-8",
            'APPLICATION/JSON; charset="utf8"',
            "application/json;;;",
            "application/jsonx",
            "text/csv",
        ]
    )
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
def test_any_text_with_any_content_type_gets_a_documented_answer(app, text, content_type):
    # Given any text under any (or no) content type
    client, broker = app
    headers = {} if content_type is None else {"content-type": content_type}
    # When
    response = client.post("/api/user", content=text.encode(), headers=headers)
    # Then
    check_answer(
        response, source="hypothesis", what=f"user {content_type!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        assert response.status_code == 415, response.text
    drained(broker)


@FUZZ
@given(value=json_values | maybe_deep_objects, ensure_ascii=st.booleans())
def test_a_posted_json_value_is_accepted_exactly_when_it_is_a_storable_object(app, value, ensure_ascii):
    # Given any JSON value
    client, broker = app
    body = encode(value, ensure_ascii)
    # When
    response = client.post("/api/user", content=body, headers={"content-type": "application/json"})
    # Then: objects that can be stored are accepted and travel literally; the rest is 422 (or 413)
    check_answer(response, source="hypothesis", what=f"user {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES)
    messages = drained(broker)
    if len(body) > TEST_SETTINGS.max_body_bytes:
        assert response.status_code == 413
    elif isinstance(value, dict) and storable(value):
        assert response.status_code == 202, response.text
        [message] = messages
        assert message.args[0][0]["data"] == value  # (validate_users: a list of records)
    else:
        assert response.status_code == 422, response.text
        assert messages == []


# --- POST /api/users: any bytes, any form -------------------------------------------------------------------


@FUZZ
@given(form=st.sampled_from(sorted(BATCH_MEDIA)), body=st.binary(max_size=400))
def test_any_bytes_posted_as_a_batch_get_a_documented_answer(app, form, body):
    # Given any bytes, sent as one of the batch forms
    client, broker = app
    # When
    response = client.post("/api/users", content=body, headers={"content-type": BATCH_MEDIA[form]})
    # Then
    check_answer(
        response, source="hypothesis", what=f"{form} bytes {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    messages = drained(broker)
    registered = [m for m in messages if m.actor_name == "register_batch"]
    if response.status_code == 202:
        assert registered == [] or registered[0].args[1] == response.json()["count"]
        assert len(batch_records(messages)) == response.json()["count"]
    else:
        assert registered == []  # a refused batch is never registered


@FUZZ
@given(
    boundary=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
    parts=st.lists(
        st.tuples(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
            st.binary(max_size=100),
        ),
        max_size=4,
    ),
    closed=st.booleans(),
)
def test_any_multipart_body_gets_a_documented_answer(app, boundary, parts, closed):
    # Given a multipart body built from random part headers and contents (boundary possibly empty or odd)
    client, broker = app
    body = b"".join(
        b"--" + boundary.encode() + b"\r\n" + header.encode() + b"\r\n\r\n" + content + b"\r\n"
        for header, content in parts
    ) + ((b"--" + boundary.encode() + b"--\r\n") if closed else b"")
    # When
    response = client.post(
        "/api/users", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    # Then
    check_answer(
        response, source="hypothesis", what=f"multipart {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    drained(broker)


# --- POST /api/users: well-formed batches, exact oracle ---------------------------------------------------


def check_records(records: list[dict[str, Any]], expected: list[Any]) -> None:
    """Each record is the element as posted (when it is a storable object) or ``None`` with an error."""
    assert [r["row"] for r in records] == list(range(1, len(expected) + 1))
    for record, element in zip(records, expected, strict=True):
        if isinstance(element, dict) and storable(element):
            assert record["data"] == element and record["errors"] == []
        else:
            assert record["data"] is None, record
            assert record["errors"] and all(set(e) == {"field", "message"} for e in record["errors"]), record
        # (An error may name a key holding NUL or a lone surrogate verbatim: the validator escapes it before
        # it is stored, see test_hostile_stack.py.)


@FUZZ
@given(
    elements=st.lists(json_values | maybe_deep_objects, max_size=12),
    ensure_ascii=st.booleans(),
    cuts=cuts_strategy,
)
def test_a_json_array_batch_carries_every_element_as_a_record(app, elements, ensure_ascii, cuts):
    # Given a JSON array of any values, uploaded in pieces cut anywhere
    client, broker = app
    body = encode(elements, ensure_ascii)
    # When
    response = post_in_pieces(client, "/api/users", "application/json", body, cuts)
    # Then: every element is a record (invalid when it is not a storable object); an empty array is 422
    check_answer(
        response, source="hypothesis", what=f"json batch {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    messages = drained(broker)
    if len(body) > TEST_SETTINGS.max_batch_bytes or any(
        len(encode(e, ensure_ascii)) > TEST_SETTINGS.max_body_bytes for e in elements
    ):
        assert response.status_code == 413, response.text
    elif not elements:
        assert response.status_code == 422, response.text
    else:
        assert response.status_code == 202, response.text
        assert response.json()["count"] == len(elements)
        check_records(batch_records(messages), elements)


ndjson_lines = st.lists(
    st.one_of(
        json_values.map(lambda v: encode(v, ensure_ascii=False).decode()),
        maybe_deep_objects.map(lambda v: encode(v, ensure_ascii=True).decode()),
        st.text(st.characters(blacklist_characters="\n", codec="utf-8"), max_size=30),  # not JSON, mostly
        st.sampled_from(["", "   ", "\r", "NaN", "[1e309]", '{"a": 1} {"b": 2}', "{", '{"a":"\\u0000"}']),
    ),
    max_size=12,
)


@FUZZ
@given(lines=ndjson_lines, crlf=st.booleans(), final_newline=st.booleans(), cuts=cuts_strategy)
def test_an_ndjson_batch_carries_every_non_blank_line_as_a_record(app, lines, crlf, final_newline, cuts):
    # Given NDJSON lines, some of them not JSON or not objects, uploaded in pieces cut anywhere
    client, broker = app
    text = ("\r\n" if crlf else "\n").join(lines) + ("\n" if final_newline else "")
    body = text.encode("utf-8")
    # When
    response = post_in_pieces(client, "/api/users", "application/x-ndjson", body, cuts)
    # Then: one record per non-blank line, in order; a line that is not a storable object is invalid
    check_answer(
        response, source="hypothesis", what=f"ndjson {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES
    )
    messages = drained(broker)
    kept = [line for line in text.removeprefix("\ufeff").split("\n") if line.strip(" \t\r\n")]
    if not kept:
        assert response.status_code == 422, response.text
        return
    assert response.status_code == 202, response.text
    expected = []
    for line in kept:
        try:
            expected.append(json.loads(line, parse_constant=lambda name: [name]))  # NaN: never an object
        except ValueError:
            expected.append(None)
    assert response.json()["count"] == len(kept)
    check_records(batch_records(messages), expected)


header_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,8}){0,2}\Z")
cells = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=12) | st.sampled_from(
    [
        "",
        "a,b",
        'say "hi"',
        "line\nbreak",
        "cr\ronly",
        "crlf\r\nin",
        " spaced ",
        "12",
        "'; DROP TABLE users;--",
    ]
)


def conflict_free(names: list[str]) -> bool:
    paths = [tuple(n.split(".")) for n in names]
    return len(set(paths)) == len(paths) and not any(p[:k] in paths for p in paths for k in range(1, len(p)))


def nest(header: list[str], row: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=True):
        if cell == "":
            continue
        *parents, leaf = name.split(".")
        target = record
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = cell
    return record


@FUZZ
@given(
    header=st.lists(header_names, min_size=1, max_size=5).filter(conflict_free),
    rows=st.lists(st.lists(cells, max_size=7), max_size=10),
    line_end=st.sampled_from(["\r\n", "\n", "\r"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    bom=st.booleans(),
    cuts=cuts_strategy,
)
def test_a_csv_batch_reads_as_the_csv_module_reads_it_and_flags_ragged_rows(
    app, header, rows, line_end, quoting, bom, cuts
):
    # Given a CSV body (quoted commas, quotes, CR and LF inside cells, some ragged rows), in pieces
    client, broker = app
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=line_end, quoting=quoting).writerows([header, *rows])
    text = buffer.getvalue()
    body = (("\ufeff" if bom else "") + text).encode("utf-8")
    # When
    response = post_in_pieces(client, "/api/users", "text/csv", body, cuts)
    # Then: the records are the rows the csv module reads from the whole text (a lone CR inside an unquoted
    # cell ends a line there too), blank ones skipped, nested by the dotted header; ragged ones invalid
    check_answer(response, source="hypothesis", what=f"csv {body[:80]!r}", allowed=DOCUMENTED_POST_STATUSES)
    messages = drained(broker)
    read = list(csv.reader(io.StringIO(text, newline="")))
    kept = [row for row in read[1:] if row and not all(cell == "" for cell in row)]
    if not kept:
        assert response.status_code == 422, response.text
        return
    assert response.status_code == 202, response.text
    records = batch_records(messages)
    assert response.json()["count"] == len(kept) == len(records)
    for number, (record, row) in enumerate(zip(records, kept, strict=True), start=1):
        assert record["row"] == number
        if len(row) == len(header):
            assert record["errors"] == [] and record["data"] == nest(header, row), (row, record)
        else:
            assert record["data"] is None and [e["field"] for e in record["errors"]] == ["_row"], record
