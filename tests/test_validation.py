"""Validation of user records (pure: no database; the chunk form is the ``validate_users`` actor, called as
a function, which needs no broker to run)."""

from __future__ import annotations

import threading

import pytest

from pipeline import validation
from pipeline.validation import validate_record


def fields_of(errors):
    return [error["field"] for error in errors]


def only_error(data, **kwargs):
    user, errors = validate_record(data, **kwargs)
    assert user is None
    assert len(errors) == 1, errors
    return errors[0]


# --- valid records -----------------------------------------------------------------------------------------


def test_a_minimal_user_is_valid_and_normalised_to_the_users_columns():
    # When
    user, errors = validate_record({"name": "Ada", "age": 36})
    # Then
    assert errors == []
    assert user == {
        "name": "Ada",
        "age": 36,
        "email": None,
        "phone_number": None,
        "address": None,
        "additional_info": {},
    }


def test_a_full_user_keeps_every_field_and_the_unknown_ones_in_additional_info():
    # Given
    data = {
        "name": "Ada Lovelace",
        "age": 36,
        "email": "ada@example.org",
        "phoneNumber": "+442079460958",
        "address": {"line1": "12 St James's Sq", "line2": "", "city": "London", "state": "LDN"},
        "gender": "f",
        "hobbies": ["chess", {"kind": "maths"}],
    }
    # When
    user, errors = validate_record(data)
    # Then
    assert errors == []
    assert user["email"] == "ada@example.org"
    assert user["phone_number"] == "+442079460958"
    assert user["address"] == data["address"]
    assert user["additional_info"] == {"gender": "f", "hobbies": ["chess", {"kind": "maths"}]}


def test_first_and_last_name_become_one_trimmed_name():
    user, errors = validate_record({"name": {"firstName": "  Ada ", "lastName": " Lovelace  "}, "age": 36})
    assert errors == []
    assert user["name"] == "Ada Lovelace"


@pytest.mark.parametrize(
    "raw, stored",
    [
        ("  Ada  ", "Ada"),
        ("Ada \t  Lovelace", "Ada Lovelace"),
        ("\nAda\n", "Ada"),
        ("Zoë 李小龍 🚀", "Zoë 李小龍 🚀"),
    ],
)
def test_whitespace_around_and_inside_names_is_tidied(raw, stored):
    user, errors = validate_record({"name": raw, "age": 1})
    assert errors == [] and user["name"] == stored


def test_a_name_that_looks_like_sql_is_just_a_name():
    name = "Robert'); DROP TABLE users;--"
    user, errors = validate_record({"name": name, "age": 20})
    assert errors == [] and user["name"] == name


@pytest.mark.parametrize("age", [0, 1, 75, 150])
def test_ages_from_0_to_150_are_valid(age):
    user, errors = validate_record({"name": "Ada", "age": age})
    assert errors == [] and user["age"] == age


@pytest.mark.parametrize(
    "raw, stored",
    [("+1 (415) 555-0123", "+14155550123"), ("44.20.7946.0958", "442079460958"), ("4155550", "4155550")],
)
def test_phone_numbers_lose_their_separators(raw, stored):
    user, errors = validate_record({"name": "Ada", "age": 1, "phoneNumber": raw})
    assert errors == [] and user["phone_number"] == stored


def test_email_and_address_values_are_trimmed():
    user, errors = validate_record(
        {"name": "Ada", "age": 1, "email": " a@b.co ", "address": {"city": "  Paris "}}
    )
    assert errors == []
    assert user["email"] == "a@b.co" and user["address"] == {"city": "Paris"}


@pytest.mark.parametrize("field", ["email", "phoneNumber", "address"])
def test_a_null_optional_field_is_the_same_as_an_absent_one(field):
    user, errors = validate_record({"name": "Ada", "age": 1, field: None})
    assert errors == []
    assert user["email"] is None and user["phone_number"] is None and user["address"] is None


def test_a_field_called_additional_info_is_kept_inside_additional_info():
    user, errors = validate_record({"name": "Ada", "age": 1, "additional_info": {"x": 1}})
    assert errors == [] and user["additional_info"] == {"additional_info": {"x": 1}}


# --- one rule at a time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"age": 1}, "name", "is required"),
        ({"name": None, "age": 1}, "name", "must not be null"),
        ({"name": "", "age": 1}, "name", "must not be empty"),
        ({"name": "   ", "age": 1}, "name", "must not be empty"),
        ({"name": 42, "age": 1}, "name", 'must be a string, or an object with "firstName" and "lastName"'),
        (
            {"name": ["Ada"], "age": 1},
            "name",
            'must be a string, or an object with "firstName" and "lastName"',
        ),
        ({"name": "x" * 101, "age": 1}, "name", "must be at most 100 characters long"),
        ({"name": {"firstName": "Ada"}, "age": 1}, "name.lastName", "is required"),
        ({"name": {"lastName": "L"}, "age": 1}, "name.firstName", "is required"),
        ({"name": {"firstName": 7, "lastName": "L"}, "age": 1}, "name.firstName", "must be a string"),
        ({"name": {"firstName": " ", "lastName": "L"}, "age": 1}, "name.firstName", "must not be empty"),
        (
            {"name": {"firstName": "A", "lastName": "L", "nick": "x"}, "age": 1},
            "name.nick",
            "is not a known field",
        ),
        ({"name": "Ada"}, "age", "is required"),
        ({"name": "Ada", "age": None}, "age", "must not be null"),
        ({"name": "Ada", "age": -1}, "age", "must be at least 0"),
        ({"name": "Ada", "age": 151}, "age", "must be at most 150"),
        ({"name": "Ada", "age": 10**40}, "age", "must be at most 150"),
        ({"name": "Ada", "age": "30"}, "age", "must be an integer"),
        ({"name": "Ada", "age": 30.0}, "age", "must be an integer"),
        ({"name": "Ada", "age": True}, "age", "must be an integer"),
        ({"name": "Ada", "age": False}, "age", "must be an integer"),
        ({"name": "Ada", "age": 1, "email": ""}, "email", "must not be empty"),
        ({"name": "Ada", "age": 1, "email": 5}, "email", "must be a string"),
        ({"name": "Ada", "age": 1, "address": "Paris"}, "address", "must be an object"),
        ({"name": "Ada", "age": 1, "address": {"city": 75}}, "address.city", "must be a string"),
        (
            {"name": "Ada", "age": 1, "address": {"line1": "x" * 201}},
            "address.line1",
            "must be at most 200 characters long",
        ),
        ({"name": "Ada", "age": 1, "phoneNumber": 4155550123}, "phoneNumber", "must be a string"),
    ],
)
def test_each_rule_reports_its_field_and_a_readable_message(data, field, message):
    error = only_error(data)
    assert error == {"field": field, "message": message}


def test_first_and_last_name_together_are_at_most_100_characters():
    error = only_error({"name": {"firstName": "a" * 50, "lastName": "b" * 50}, "age": 1})
    assert error["field"] == "name" and "at most 100" in error["message"]


def test_first_and_last_name_of_exactly_100_characters_are_valid():
    user, errors = validate_record({"name": {"firstName": "a" * 49, "lastName": "b" * 50}, "age": 1})
    assert errors == [] and len(user["name"]) == 100


@pytest.mark.parametrize(
    "email", ["plain", "a@b", "a b@c.de", "a@b@c.de", "@b.co", "a@.co", "a@b.", "a@b..co"]
)
def test_malformed_email_addresses_are_errors(email):
    error = only_error({"name": "Ada", "age": 1, "email": email})
    assert error["field"] == "email" and "valid email" in error["message"]


@pytest.mark.parametrize("email", ["a@b.co", "first.last+tag@sub.example.org", "ü@exämple.de"])
def test_ordinary_email_addresses_are_valid(email):
    user, errors = validate_record({"name": "Ada", "age": 1, "email": email})
    assert errors == [] and user["email"] == email


@pytest.mark.parametrize(
    "phone", ["12", "0123456789", "+0123456789", "+1234567890123456", "415-555-CALL", "+"]
)
def test_phone_numbers_that_are_not_e164_like_are_errors(phone):
    error = only_error({"name": "Ada", "age": 1, "phoneNumber": phone})
    assert error["field"] == "phoneNumber" and "phone number" in error["message"]


def test_other_address_fields_of_a_real_csv_are_kept_with_the_address_as_trimmed_strings():
    # Given the address columns of an ordinary export
    address = {"line1": "1 Main St", "city": "Paris", "zip": " 75001 ", "postalCode": "", "country": "FR"}
    # When
    user, errors = validate_record({"name": "Ada", "age": "1", "address": address}, source="csv")
    # Then the known ones are checked as ever and the others are kept, not errors
    assert errors == []
    assert user["address"] == {**address, "zip": "75001"}


@pytest.mark.parametrize(
    "value, message",
    [
        (75001, "must be a string"),
        (None, "must not be null"),
        ({"a": 1}, "must be a string"),
        ("x" * 201, "must be at most 200 characters long"),
        ("a\x00b", "must not contain NUL characters, unpaired surrogates, NaN or Infinity"),
    ],
)
def test_other_address_fields_follow_the_rules_of_the_known_ones(value, message):
    error = only_error({"name": "Ada", "age": 1, "address": {"city": "X", "zip": value}})
    assert error == {"field": "address.zip", "message": message}


def test_other_address_fields_are_bounded_in_count_and_in_name_length():
    # Given one other field too many, and separately a field name too long
    limit, longest = validation.ADDRESS_OTHER_FIELDS_MAX, validation.ADDRESS_OTHER_NAME_MAX_LENGTH
    many = {f"extra{n}": "x" for n in range(limit + 1)}
    long_name = "n" * (longest + 1)
    # When / Then
    error = only_error({"name": "Ada", "age": 1, "address": {"city": "X", **many}})
    assert error["field"] == "address" and f"at most {limit} are kept" in error["message"]
    assert validate_record({"name": "Ada", "age": 1, "address": dict(list(many.items())[:limit])})[1] == []
    error = only_error({"name": "Ada", "age": 1, "address": {long_name: "x"}})
    assert error["field"] == f"address.{long_name}" and f"at most {longest}" in error["message"]


def test_an_unknown_name_field_is_still_an_error():
    error = only_error({"name": {"firstName": "A", "lastName": "L", "zip": "x"}, "age": 1})
    assert error == {"field": "name.zip", "message": "is not a known field"}


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_strings_postgresql_cannot_store_are_errors_where_they_are(bad):
    # Given strings with a NUL or a lone surrogate in a known field and inside additional_info
    data = {"name": bad, "age": 1, "address": {"city": bad}, "extra": {"deep": [bad]}, bad: "key"}
    # When
    user, errors = validate_record(data)
    # Then
    assert user is None
    assert {"name", "address.city", "extra.deep.0"} < set(fields_of(errors))
    assert len(errors) == 4 and all("NUL" in e["message"] for e in errors)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_numbers_jsonb_cannot_hold_are_errors(number):
    error = only_error({"name": "Ada", "age": 1, "score": {"last": [number]}})
    assert error["field"] == "score.last.0" and "NaN or Infinity" in error["message"]


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_errors_are_always_storable_even_when_a_field_name_is_not(bad):
    # Given unknown keys PostgreSQL could not store, which end up in the field of an error
    data = {"name": "Ada", "age": 1, "address": {bad: "x"}, bad: 1}
    parse_errors = [{"field": "_line", "message": f"odd {bad}"}]
    # When
    _, errors = validate_record(data, parse_errors=parse_errors)
    # Then every field and message can go into a jsonb column
    assert len(errors) == 3
    for error in errors:
        for text in (error["field"], error["message"]):
            assert "\x00" not in text
            text.encode("utf-8")
    # ... spelled as the web spells them (JSON's escapes)
    escaped = {"a\x00b": "a\\u0000b", "\ud800": "\\ud800"}[bad]
    assert {escaped, f"address.{escaped}"} < set(fields_of(errors))
    assert f"odd {escaped}" in [error["message"] for error in errors]


def test_additional_info_over_the_bound_is_an_error():
    # Given other fields whose JSON is larger than the bound
    limit = validation.settings.MAX_ADDITIONAL_INFO_BYTES
    # When
    error = only_error({"name": "Ada", "age": 1, "bio": "é" * limit})
    # Then the size counts UTF-8 bytes
    assert error["field"] == "additional_info"
    assert f"at most {limit}" in error["message"]


def test_additional_info_just_under_the_bound_is_kept():
    limit = validation.settings.MAX_ADDITIONAL_INFO_BYTES
    filler = "x" * (limit - len('{"bio":""}'))
    user, errors = validate_record({"name": "Ada", "age": 1, "bio": filler})
    assert errors == [] and user["additional_info"] == {"bio": filler}


# --- several errors at once, and what is not an object -----------------------------------------------------


def test_every_error_is_reported_at_once_in_field_order():
    # Given a record breaking five rules
    data = {
        "name": {"firstName": 5},
        "age": "thirty",
        "email": "nope",
        "phoneNumber": "12",
        "address": {"city": 3, "zip": 75001},
    }
    # When
    user, errors = validate_record(data)
    # Then
    assert user is None
    assert fields_of(errors) == [
        "name.firstName",
        "name.lastName",
        "age",
        "email",
        "phoneNumber",
        "address.city",
        "address.zip",
    ]
    assert all(isinstance(e["message"], str) and "{" not in e["message"] for e in errors)


def test_an_empty_object_misses_name_and_age():
    _, errors = validate_record({})
    assert errors == [{"field": "name", "message": "is required"}, {"field": "age", "message": "is required"}]


@pytest.mark.parametrize("data", [None, [], ["Ada", 36], "Ada", 36, True])
def test_data_that_is_not_an_object_is_one_error_on_root(data):
    error = only_error(data)
    assert error["field"] == "_root" and "object" in error["message"]


def test_parse_errors_from_the_web_are_kept_and_make_the_record_invalid():
    # Given a CSV row that the web could not read
    parse_errors = [{"field": "_row", "message": "row 2 has 2 fields, the header has 3"}]
    # When
    user, errors = validate_record(None, source="csv", parse_errors=parse_errors)
    # Then only the parse error is reported
    assert user is None and errors == parse_errors


def test_parse_errors_come_first_even_when_the_data_would_be_valid():
    parse_errors = [{"field": "_line", "message": "line 3 is not valid JSON"}]
    user, errors = validate_record({"name": "Ada", "age": 1}, parse_errors=parse_errors)
    assert user is None and errors == parse_errors


# --- CSV ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, age", [("42", 42), (" 42 ", 42), ("0", 0), ("+7", 7), ("007", 7)])
def test_csv_digits_are_the_age(raw, age):
    user, errors = validate_record({"name": "Ada", "age": raw}, source="csv")
    assert errors == [] and user["age"] == age


@pytest.mark.parametrize(
    "raw, message",
    [
        ("abc", "must be an integer"),
        ("4 2", "must be an integer"),
        ("42.0", "must be an integer"),
        ("", "must be an integer"),
        ("-3", "must be at least 0"),
        ("151", "must be at most 150"),
    ],
)
def test_csv_ages_that_are_not_digits_in_range_are_errors(raw, message):
    error = only_error({"name": "Ada", "age": raw}, source="csv")
    assert error == {"field": "age", "message": message}


def test_a_csv_row_with_nested_headers_validates_like_json():
    # Given what the web makes of "name.firstName,name.lastName,age,address.city,gender"
    data = {
        "name": {"firstName": "Ann", "lastName": "Lee"},
        "age": "30",
        "address": {"city": "X"},
        "gender": "f",
    }
    # When
    user, errors = validate_record(data, source="csv")
    # Then
    assert errors == []
    assert (user["name"], user["age"], user["address"], user["additional_info"]) == (
        "Ann Lee",
        30,
        {"city": "X"},
        {"gender": "f"},
    )


# --- validate_users (the chunk form) -----------------------------------------------------------------------


@pytest.fixture
def actors():
    """``pipeline.actors``, imported the way the worker imports it (after the global broker is set)."""
    from pipeline.worker import actors as module

    return module


def test_validate_users_returns_one_result_per_record_in_order(actors):
    # Given a chunk of a CSV batch with a valid record, an invalid one and a parse error
    records = [
        {"id": "b.1", "row": 1, "data": {"name": "A", "age": "1"}, "errors": []},
        {"id": "b.2", "row": 2, "data": {"name": "B", "age": "x"}, "errors": []},
        {"id": "b.3", "row": 3, "data": None, "errors": [{"field": "_row", "message": "bad"}]},
    ]
    # When the actor's function runs on it
    results = actors.validate_users(records, "b", "csv")
    # Then
    assert [(r["id"], r["row"], r["batch_id"]) for r in results] == [
        ("b.1", 1, "b"),
        ("b.2", 2, "b"),
        ("b.3", 3, "b"),
    ]
    assert results[0]["user"]["age"] == 1 and results[0]["errors"] == []
    assert results[1]["user"] is None and fields_of(results[1]["errors"]) == ["age"]
    assert results[2]["user"] is None and fields_of(results[2]["errors"]) == ["_row"]


def test_each_thread_reuses_one_validator():
    # Given
    seen = []

    def work():
        validate_record({"name": "A", "age": 1})
        first = validation.validator()
        validate_record({"name": "B", "age": "x"})
        seen.append((first, validation.validator()))

    # When two threads validate
    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each reused its own validator, and they are not shared
    assert all(a is b for a, b in seen)
    assert seen[0][0] is not seen[1][0]


def test_a_validator_left_dirty_by_an_invalid_record_does_not_leak_errors_into_the_next():
    validate_record({"name": 1, "age": "x", "email": "e"})
    user, errors = validate_record({"name": "Ada", "age": 1})
    assert errors == [] and user is not None
