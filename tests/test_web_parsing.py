"""The body parsers, fed in chunks of every size so that chunk boundaries fall everywhere."""

from __future__ import annotations

import json

import pytest

from web.errors import InvalidBody, Malformed, PayloadTooLarge
from web.parsing import MAX_DEPTH, iter_csv, iter_json_array, iter_ndjson, parse_object

CHUNK_SIZES = [1, 2, 3, 7, 64, 100_000]


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def parse(parser, body: bytes, size: int = 100_000, limit: int = 10_000):
    return [(r.row, r.data, r.errors) for r in parser(chunked(body, size), max_record_bytes=limit)]


# --- one object ---------------------------------------------------------------------------------------
def test_a_single_object_parses_and_the_last_duplicate_key_wins():
    assert parse_object(b'{"name": "Ada", "age": 36, "age": 37}') == {"name": "Ada", "age": 37}


def test_a_single_object_may_start_with_a_byte_order_mark():
    assert parse_object('\ufeff{"a": 1}'.encode()) == {"a": 1}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"a": 1',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e309}',
        b'{"a": -1e400}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"\xff\xfe{}",
        b'{"a": "\xc3("}',
        b"{} {}",
        b'{"a": "\x01"}',
    ],
)
def test_a_body_that_is_not_strict_json_is_malformed(body):
    with pytest.raises(Malformed) as caught:
        parse_object(body)
    assert caught.value.code == "malformed_json"


@pytest.mark.parametrize(
    "body, hint",
    [
        (b"[]", "array"),
        (b'"x"', "string"),
        (b"1", "number"),
        (b"null", "null"),
        (b"true", "boolean"),
        (b'{"name": "A\\u0000da"}', "NUL"),
        (b'{"n\\u0000": 1}', "NUL"),
        (b'{"name": "\\ud800"}', "surrogate"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        (b"[" * 5000 + b"]" * 5000, ""),
    ],
)
def test_valid_json_that_is_not_a_storable_object_is_an_invalid_body(body, hint):
    with pytest.raises(InvalidBody) as caught:
        parse_object(body)
    assert hint in caught.value.message


def test_a_surrogate_pair_is_a_character_not_an_error():
    assert parse_object(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


def test_nesting_up_to_the_limit_is_accepted():
    # Given: the object itself is level 1
    body = b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    # Then
    assert parse_object(body)["a"]


# --- JSON array -------------------------------------------------------------------------------------------
ARRAY = json.dumps(
    [
        {"name": "Ada", "age": 36},
        {"name": {"firstName": "É", "lastName": "李"}, "age": 1.5e3},
        7,
        [1],
        {"n": -12345678901234567890},
        {"s": 'a,b]}{"\\'},
        {},
        None,
        "x",
        {"e": 1e-5},
    ],
    ensure_ascii=False,
).encode()


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_a_json_array_yields_one_record_per_element_whatever_the_chunking(size):
    # When
    records = parse(iter_json_array, ARRAY, size)
    # Then
    assert [r[0] for r in records] == list(range(1, 11))
    assert records[0][1] == {"name": "Ada", "age": 36}
    assert records[1][1] == {"name": {"firstName": "É", "lastName": "李"}, "age": 1500.0}
    assert records[2] == (3, None, [{"field": "_row", "message": "row 3 is a number, not a JSON object"}])
    assert records[3][2][0]["message"] == "row 4 is an array, not a JSON object"
    assert records[4][1] == {"n": -12345678901234567890}
    assert records[5][1] == {"s": 'a,b]}{"\\'}
    assert records[7][2] and records[8][2]
    assert records[9][1] == {"e": 1e-5}


def test_an_empty_json_array_has_no_records():
    assert parse(iter_json_array, b" [ \n ] \n") == []


def test_a_record_holding_nul_is_invalid_and_the_batch_goes_on():
    # When
    records = parse(iter_json_array, b'[{"name": "a\\u0000"}, {"name": "b"}]')
    # Then
    assert records[0][1] is None and records[0][2][0]["field"] == "name"
    assert records[1] == (2, {"name": "b"}, [])


@pytest.mark.parametrize("size", [1, 3, 100])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[",
        b'[{"a": 1}',
        b'[{"a": 1},',
        b'[{"a": 1},]',
        b"[,]",
        b'[{"a": 1} {"b": 2}]',
        b"[1] 2",
        b'[{"a": NaN}]',
        b"[1e309]",
        b"[1e",
        b'[{"a": tru}]',
        b'[{"a": "\xff"}]',
        b"nope",
        b'["unterminated]',
    ],
)
def test_a_broken_json_array_is_malformed_wherever_the_chunks_end(body, size):
    with pytest.raises(Malformed):
        parse(iter_json_array, body, size)


@pytest.mark.parametrize("body, hint", [(b'{"a": 1}', "object"), (b'"x"', "string"), (b"42", "number")])
def test_a_json_value_that_is_not_an_array_is_an_invalid_body(body, hint):
    with pytest.raises(InvalidBody) as caught:
        parse(iter_json_array, body, 2)
    assert hint in caught.value.message


def test_an_element_nested_past_the_decoder_limit_is_an_invalid_body():
    with pytest.raises(InvalidBody):
        parse(iter_json_array, b"[" + b"[" * 5000 + b"]" * 5000 + b"]", 4096, limit=100_000)


def test_an_element_longer_than_the_record_limit_is_refused():
    # Given
    body = json.dumps([{"a": "x" * 500}, {"b": "y" * 5000}]).encode()
    # Then
    with pytest.raises((PayloadTooLarge, Malformed)):
        parse(iter_json_array, body, 256, limit=1000)


def test_a_long_number_cut_by_every_chunk_boundary_is_read_whole():
    # Given
    body = b"[" + b",".join([b'{"n": 123456789012345}', b"98765432109876543210", b"1.25e-3"]) + b"]"
    # Then
    for size in range(1, 12):
        records = parse(iter_json_array, body, size)
        assert records[0][1] == {"n": 123456789012345}
        assert "number" in records[1][2][0]["message"] and "number" in records[2][2][0]["message"]


# --- NDJSON -----------------------------------------------------------------------------------------------
NDJSON = b'{"name": "Ada"}\r\n\n   \n[1]\nnot json\n{"name": "\\u0000"}\n{"name": "Bo"}'


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_ndjson_yields_one_record_per_non_blank_line(size):
    # When
    records = parse(iter_ndjson, NDJSON, size)
    # Then
    assert [r[0] for r in records] == [1, 2, 3, 4, 5]
    assert records[0] == (1, {"name": "Ada"}, [])
    assert records[1] == (2, None, [{"field": "_line", "message": "line 2 is an array, not a JSON object"}])
    assert records[2][1] is None and records[2][2][0]["field"] == "_line"
    assert "not valid JSON" in records[2][2][0]["message"]
    assert records[3][1] is None and records[3][2][0]["field"] == "name"
    assert records[4] == (5, {"name": "Bo"}, [])


def test_ndjson_with_invalid_utf8_is_malformed():
    with pytest.raises(Malformed):
        parse(iter_ndjson, b'{"a": 1}\n{"b": "\xc3("}\n', 5)


def test_an_ndjson_line_longer_than_the_record_limit_is_refused():
    with pytest.raises(PayloadTooLarge):
        parse(iter_ndjson, b'{"a": "' + b"x" * 5000 + b'"}\n', 100, limit=1000)


# --- CSV --------------------------------------------------------------------------------------------------
CSV = (
    "\ufeffname.firstName,name.lastName,age,address.line1,address.city,gender\r\n"
    'Ada,"Love, lace",36,"1 ""Main"" St\nFlat 2",London,f\r\n'
    "\r\n"
    ",,,,,\r\n"
    "Bob,Smith,abc\r\n"
    "Émile,Zola,62,,,\r\n"
    "Robert'); DROP TABLE users;--,x,1,a,b,c,d\r\n"
    "李,小龙,32,,,m"
).encode()


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_csv_rows_become_nested_records_whatever_the_chunking(size):
    # When
    records = parse(iter_csv, CSV, size)
    # Then
    assert records[0] == (
        1,
        {
            "name": {"firstName": "Ada", "lastName": "Love, lace"},
            "age": "36",
            "address": {"line1": '1 "Main" St\nFlat 2', "city": "London"},
            "gender": "f",
        },
        [],
    )
    assert records[1] == (2, None, [{"field": "_row", "message": "row 2 has 3 fields, the header has 6"}])
    assert records[2] == (3, {"name": {"firstName": "Émile", "lastName": "Zola"}, "age": "62"}, [])
    assert records[3] == (4, None, [{"field": "_row", "message": "row 4 has 7 fields, the header has 6"}])
    assert records[4][1] == {"name": {"firstName": "李", "lastName": "小龙"}, "age": "32", "gender": "m"}
    assert len(records) == 5


def test_a_csv_cell_holding_nul_makes_its_row_invalid():
    # When
    records = parse(iter_csv, b"name,age\nA\x00,1\nB,2\n")
    # Then
    assert records[0] == (1, None, [{"field": "name", "message": records[0][2][0]["message"]}])
    assert records[1] == (2, {"name": "B", "age": "2"}, [])


@pytest.mark.parametrize(
    "body, hint",
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"a,,b\n1,2,3", "empty"),
        (b"a,a\n1,2", "twice"),
        (b"a,a.b\n1,2", "conflict"),
        (b"a..b\n1", "empty part"),
        (b".a\n1", "empty part"),
    ],
)
def test_a_csv_header_that_cannot_build_objects_is_an_invalid_body(body, hint):
    with pytest.raises(InvalidBody) as caught:
        parse(iter_csv, body)
    assert hint in caught.value.message


@pytest.mark.parametrize("body", [b"a\n\xff\n", b'a\n"open quote\n', b'a,b\n"x"y,1\n'])
def test_broken_csv_is_malformed_csv(body):
    with pytest.raises(Malformed) as caught:
        parse(iter_csv, body, 2)
    assert caught.value.code == "malformed_csv"


def test_a_header_only_csv_has_no_records():
    assert parse(iter_csv, b"name,age\r\n") == []


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_csv_lines_may_end_with_a_lone_carriage_return(size):
    # Given: old Mac line ends, and a quoted CR/LF kept inside a value
    body = b'name,note\rAda,"one\r\ntwo"\rBob,x\r\nCy,y'
    # When
    records = parse(iter_csv, body, size)
    # Then
    assert [r[1] for r in records] == [
        {"name": "Ada", "note": "one\r\ntwo"},
        {"name": "Bob", "note": "x"},
        {"name": "Cy", "note": "y"},
    ]
