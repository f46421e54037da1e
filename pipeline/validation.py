"""Validation and normalisation of user records, with Cerberus as the judge of every record.

A record is the JSON object a client sent (or a CSV row nested by its dotted headers).  The rules:

* ``name`` (required): a string, or ``{"firstName": str, "lastName": str}`` (both required, neither empty)
  stored as ``"First Last"``.  Whitespace is trimmed at both ends and runs of whitespace inside become one
  space; the stored name is 1 to :data:`NAME_MAX_LENGTH` characters.
* ``age`` (required): an integer from :data:`AGE_MIN` to :data:`AGE_MAX`.  From JSON a boolean is not an
  integer and neither is ``"30"`` nor ``30.0``; from CSV (where every cell is a string) an optionally signed
  string of digits, with surrounding spaces, is the integer (``" 42 "`` is 42, ``"abc"`` is an error).
* ``email`` (optional): ``local@domain.tld`` without spaces, at most :data:`EMAIL_MAX_LENGTH` characters,
  trimmed.
* ``phoneNumber`` (optional): E.164-like; spaces, dashes, dots and parentheses are removed first, then it
  must read ``+?[1-9]`` followed by 6 to 14 digits.  It is stored in that compact form (``+1 (415)
  555-0123`` is stored as ``+14155550123``).
* ``address`` (optional): an object with ``line1``, ``line2``, ``city`` and ``state``, each a string of
  at most :data:`ADDRESS_FIELD_MAX_LENGTH` characters (trimmed).  Other sub-fields (``zip``, ``postalCode``,
  ``country``...: what a real CSV has) are kept with the address under the same rule, as long as there are
  at most :data:`ADDRESS_OTHER_FIELDS_MAX` of them, each named in at most
  :data:`ADDRESS_OTHER_NAME_MAX_LENGTH` characters.
* Optional fields may be ``null`` (same as absent).
* Every other top-level field is kept as it is in ``additional_info``, as long as its JSON takes at most
  ``settings.MAX_ADDITIONAL_INFO_BYTES`` bytes (UTF-8).
* No string anywhere may hold a NUL character or a lone surrogate, and no number may be NaN or Infinity
  (PostgreSQL cannot store them).

Every error is collected (never only the first) as ``{"field": "<dotted path>", "message": "<for a
person>"}``: ``name.firstName``, ``address.city``, ``_root`` when the record is not an object.

Cerberus validators are not cheap to build, so each thread keeps one per schema (:func:`validator`) and
reuses it for every record.  The schemas are flat: ``name.firstName`` or ``address.city`` is a field of the
validated document of its own (:func:`normalise`), not a sub-schema, because Cerberus builds a child
validator for every sub-document it validates, which cost more than the rest of a record together.  Two
schemas, because ``name`` comes in two forms: a string, or an object whose parts are required.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import cerberus
from cerberus import errors as cerberus_errors

from pipeline import settings
from pipeline.contract import FieldError, storable_text

#: Most fields of a nested ``name`` or ``address`` object checked one by one; a larger one is one error.
MAX_NESTED_KEYS = 20
#: Most errors kept for one record (the last one says how many more there were).
MAX_ERRORS = 50
#: Longest stored name, in characters (after trimming and joining first and last name).
NAME_MAX_LENGTH = 100
#: Bounds of ``age``, inclusive.
AGE_MIN = 0
AGE_MAX = 150
#: Longest email address, in characters (RFC 5321's path limit).
EMAIL_MAX_LENGTH = 254
#: Longest ``address`` line, city or state, in characters.
ADDRESS_FIELD_MAX_LENGTH = 200
#: Fields of ``address`` the schema knows.
ADDRESS_FIELDS = ("line1", "line2", "city", "state")
#: Most other sub-fields of ``address`` kept (``zip``, ``country``...); more are one error on ``address``.
ADDRESS_OTHER_FIELDS_MAX = 10
#: Longest name of another sub-field of ``address``, in characters.
ADDRESS_OTHER_NAME_MAX_LENGTH = 50
#: Parts of a ``name`` given as an object.
NAME_PARTS = ("firstName", "lastName")
#: Top-level fields the schema knows; every other one goes to ``additional_info``.
KNOWN_FIELDS = ("name", "age", "email", "phoneNumber", "address")
#: Where the rest of a record goes (a key of the validated document, never taken from the input as is).
ADDITIONAL_INFO = "additional_info"
#: Field of the error given when the record is not an object at all.
ROOT_FIELD = "_root"

#: ``local@domain.tld``: no spaces, one ``@``, a dot in the domain.  Deliberately loose: the only
#: way to know that an address works is to write to it.
EMAIL_PATTERN = r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+"
#: E.164-like, after removing the separators listed in :data:`_PHONE_SEPARATORS`.
PHONE_PATTERN = r"\+?[1-9][0-9]{6,14}"

_PHONE_SEPARATORS = re.compile(r"[\s\-.()]+")
_WHITESPACE_RUN = re.compile(r"\s+")
_CSV_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,20}\s*")

#: Every error found in a record, in field order.
ErrorList = list[FieldError]

#: An error of our own rule ``storable``; its info is the dotted path, inside the record, of the value.
_UNSTORABLE = cerberus_errors.ErrorDefinition(0x7E, "storable")  # below 0x80: not a group error
_UNSTORABLE_MESSAGE = "must not contain NUL characters, unpaired surrogates, NaN or Infinity"


def _clean_text(value: str) -> str:
    """Trim both ends and turn every run of whitespace inside into one space."""
    return _WHITESPACE_RUN.sub(" ", value).strip()


def _is_storable(text: str) -> bool:
    """PostgreSQL refuses NUL in ``text``/``jsonb``, and UTF-8 cannot encode a lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unstorable_paths(value: Any, path: str) -> Iterable[str]:
    """Dotted paths of every string (key or value) or number in a JSON value that PostgreSQL cannot store."""
    if isinstance(value, str):
        if not _is_storable(value):
            yield path
    elif isinstance(value, float):
        if not math.isfinite(value):  # jsonb has no NaN nor Infinity
            yield path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _is_storable(key):
                yield key_path
            else:
                yield from _unstorable_paths(item, key_path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unstorable_paths(item, f"{path}.{index}" if path else str(index))


def _json_size(value: Any) -> int:
    # ensure_ascii=False: the bound is on what PostgreSQL stores (UTF-8), not on \u escapes.
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


class UserValidator(cerberus.Validator):  # type: ignore[misc]
    """Cerberus validator with the few rules the user schema needs.

    * type ``integer`` excludes booleans (Cerberus counts ``True`` as an integer, JSON does not);
    * rule ``storable`` rejects strings PostgreSQL cannot store (anywhere inside the value);
    * rule ``max_json_bytes`` bounds the JSON size of a value;
    * rule ``only_keys`` reports every key of an object but those listed as an unknown field (the listed
      ones are fields of the flat document of their own);
    * rule ``other_fields`` checks the sub-fields of ``address`` the schema does not know (kept as strings);
    * check ``full_name`` bounds the length of a ``{"firstName", "lastName"}`` name once joined.
    """

    types_mapping = {
        **cerberus.Validator.types_mapping,
        "integer": cerberus.TypeDefinition("integer", (int,), (bool,)),
    }

    def _validate_storable(self, storable: bool, field: str, value: Any) -> None:
        """{'type': 'boolean'}"""
        if storable:
            for path in _unstorable_paths(value, ""):
                self._error(field, _UNSTORABLE, path)

    def _validate_max_json_bytes(self, limit: int, field: str, value: Any) -> None:
        """{'type': 'integer'}"""
        size = _json_size(value)
        if size > limit:
            self._error(
                field,
                f"the fields besides {', '.join(KNOWN_FIELDS)} take {size} bytes as JSON; "
                f"at most {limit} are kept",
            )

    def _validate_only_keys(self, keys: list[str], field: str, value: Any) -> None:
        """{'type': 'list'}"""
        if isinstance(value, Mapping):
            for key in value:
                if key not in keys:
                    self._error(f"{field}.{key}", cerberus_errors.UNKNOWN_FIELD)

    def _validate_other_fields(self, known: list[str], field: str, value: Any) -> None:
        """{'type': 'list'}"""
        if not isinstance(value, Mapping):
            return
        others = [key for key in value if key not in known]
        if len(others) > ADDRESS_OTHER_FIELDS_MAX:
            self._error(
                field,
                f"has {len(others)} fields besides {', '.join(known)}; "
                f"at most {ADDRESS_OTHER_FIELDS_MAX} are kept",
            )
            return
        for key in others:
            problem = _other_field_problem(str(key), value[key])
            if problem:
                self._error(f"{field}.{key}", problem)

    def _check_with_full_name(self, field: str, value: Any) -> None:
        if isinstance(value, Mapping):
            first, last = value.get("firstName"), value.get("lastName")
            if isinstance(first, str) and isinstance(last, str):
                length = len(f"{first} {last}")
                if length > NAME_MAX_LENGTH:
                    self._error(
                        field,
                        f"first and last name together must be at most {NAME_MAX_LENGTH} characters, "
                        f"not {length}",
                    )


def _other_field_problem(key: str, value: Any) -> str | None:
    """Why another sub-field of ``address`` cannot be kept (the same rules as the known ones), or None."""
    if not _is_storable(key):
        return _UNSTORABLE_MESSAGE
    if len(key) > ADDRESS_OTHER_NAME_MAX_LENGTH:
        limit = ADDRESS_OTHER_NAME_MAX_LENGTH
        return f"is a field name of {len(key)} characters; at most {limit} are allowed"
    if value is None:
        return "must not be null"
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > ADDRESS_FIELD_MAX_LENGTH:
        return f"must be at most {ADDRESS_FIELD_MAX_LENGTH} characters long"
    return None if _is_storable(value) else _UNSTORABLE_MESSAGE


def _text(max_length: int, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "storable": True, "maxlength": max_length, **extra}


def build_schema(
    *, max_additional_info_bytes: int | None = None, name_object: bool = False
) -> dict[str, Any]:
    """The flat Cerberus schema of a user record, once normalised by :func:`normalise`.

    ``name_object``: the schema for records whose ``name`` is an object (its parts are fields of their own,
    ``name.firstName`` and ``name.lastName``, and required); otherwise ``name`` must be a string.
    """
    limit = (
        settings.MAX_ADDITIONAL_INFO_BYTES if max_additional_info_bytes is None else max_additional_info_bytes
    )
    name: dict[str, Any]
    parts: dict[str, Any] = {}
    if name_object:
        # The object's own storable rule covers its parts (and its unknown keys), so theirs is not needed.
        name = {"required": True, "only_keys": list(NAME_PARTS), "storable": True, "empty": False}
        name["check_with"] = "full_name"
        part = {"required": True, "type": "string", "empty": False, "maxlength": NAME_MAX_LENGTH}
        parts = {f"name.{key}": part for key in NAME_PARTS}
    else:
        name = {"required": True, "type": ["string", "dict"], "storable": True, "empty": False}
        name["maxlength"] = NAME_MAX_LENGTH
    return {
        "name": name,
        **parts,
        "age": {"required": True, "type": "integer", "min": AGE_MIN, "max": AGE_MAX},
        "email": _text(EMAIL_MAX_LENGTH, nullable=True, empty=False, regex=EMAIL_PATTERN),
        "phoneNumber": {
            "type": "string",
            "nullable": True,
            "storable": True,
            "empty": False,
            "regex": PHONE_PATTERN,
        },
        "address": {"type": "dict", "other_fields": list(ADDRESS_FIELDS)},
        **{f"address.{key}": _text(ADDRESS_FIELD_MAX_LENGTH) for key in ADDRESS_FIELDS},
        ADDITIONAL_INFO: {"type": "dict", "storable": True, "max_json_bytes": limit},
    }


def normalise(data: Mapping[str, Any], *, source: str = "json") -> dict[str, Any]:
    """The document Cerberus validates: known fields tidied, every other field under ``additional_info``.

    Tidying only touches values of the expected type (a number where a string belongs is left for the
    type rule to report): strings are trimmed with inner whitespace collapsed, phone separators dropped,
    and from CSV a string of digits in ``age`` becomes the integer.  This is done here rather than with
    Cerberus' ``coerce`` because Cerberus 1.3 re-validates its own schema on every normalisation, which
    took three quarters of the validation time (measured with cProfile).  ``null`` in an optional field
    means "not given".

    The known parts of a ``name`` or ``address`` object are copied to fields of their own (``name.firstName``,
    ``address.city``) that the flat schema checks; the object stays too (the user is built from it).
    """
    document: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KNOWN_FIELDS:
            extra[key] = value
        elif key == "name":
            if isinstance(value, str):
                value = _clean_text(value)
            elif isinstance(value, Mapping):
                value = _flatten_into(document, key, value, NAME_PARTS)
            document[key] = value
        elif key == "age":
            if source == "csv" and isinstance(value, str) and _CSV_INTEGER.fullmatch(value):
                value = int(value)
            document[key] = value
        elif value is None:
            continue
        elif key == "phoneNumber":
            document[key] = _PHONE_SEPARATORS.sub("", value) if isinstance(value, str) else value
        elif key == "address" and isinstance(value, Mapping):
            document[key] = _flatten_into(document, key, value, ADDRESS_FIELDS)
        else:
            document[key] = _clean_text(value) if isinstance(value, str) else value
    document[ADDITIONAL_INFO] = extra
    return document


def _flatten_into(
    document: dict[str, Any], key: str, value: Mapping[str, Any], parts: tuple[str, ...]
) -> dict[str, Any]:
    """``value`` with its strings tidied; its known ``parts`` also go into ``document`` as ``key.part``."""
    tidied = {k: _clean_text(v) if isinstance(v, str) else v for k, v in value.items()}
    for part in parts:
        if part in tidied:
            document[f"{key}.{part}"] = tidied[part]
    return tidied


_local = threading.local()


def validator(*, name_object: bool = False) -> UserValidator:
    """This thread's validator for one of the two schemas: built once, reused for every record."""
    attribute = "validator_name_object" if name_object else "validator"
    found: UserValidator | None = getattr(_local, attribute, None)
    if found is None:
        found = UserValidator(build_schema(name_object=name_object))
        setattr(_local, attribute, found)
    return found


# --- Messages --------------------------------------------------------------------------------------------

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "dict": "an object"}
_MESSAGES_BY_FIELD = {
    ("name", "type"): 'must be a string, or an object with "firstName" and "lastName"',
    ("email", "regex"): "must be a valid email address (name@example.com)",
    ("phoneNumber", "regex"): (
        "must be a phone number in international form: an optional +, then 7 to 15 digits not starting "
        "with 0 (spaces, dashes, dots and parentheses are ignored)"
    ),
}


def _message(error: cerberus_errors.ValidationError, field: str) -> str:
    rule, constraint = error.rule, error.constraint
    special = _MESSAGES_BY_FIELD.get((field, rule))
    if special:
        return special
    if error.code == cerberus_errors.CUSTOM.code:
        return str(error.info[0])
    if error.code == cerberus_errors.UNKNOWN_FIELD.code:
        return "is not a known field"
    if rule == "required":
        return "is required"
    if rule == "nullable":
        return "must not be null"
    if rule == "empty":
        return "must not be empty"
    if rule == "type":
        kinds = constraint if isinstance(constraint, list) else [constraint]
        return "must be " + " or ".join(_TYPE_NAMES.get(str(kind), str(kind)) for kind in kinds)
    if rule == "min":
        return f"must be at least {constraint}"
    if rule == "max":
        return f"must be at most {constraint}"
    if rule == "maxlength":
        return f"must be at most {constraint} characters long"
    if rule == "regex":
        return "is not in the expected form"
    return str(cerberus.errors.BasicErrorHandler.messages.get(error.code, f"breaks the rule {rule!r}"))


def _flatten(errors: Iterable[cerberus_errors.ValidationError]) -> Iterable[cerberus_errors.ValidationError]:
    for error in errors:
        if error.is_group_error:
            yield from _flatten(error.child_errors)
        else:
            yield error


def _field_order(item: FieldError) -> tuple[int, str]:
    top = item["field"].split(".", 1)[0]
    order = (*KNOWN_FIELDS, ADDITIONAL_INFO)
    return (order.index(top) if top in order else len(order), item["field"])


def _errors_of(validator: UserValidator) -> ErrorList:
    found: ErrorList = []
    for error in _flatten(validator._errors):
        path = [str(part) for part in error.document_path]
        if error.rule == _UNSTORABLE.rule:
            # Values of additional_info are reported where the client put them (``gender``, not
            # ``additional_info.gender``); the others at their own path.
            inner = str(error.info[0])
            path = (
                [*path[:-1], inner]
                if path[0] == ADDITIONAL_INFO and inner
                else path + ([inner] if inner else [])
            )
            found.append({"field": ".".join(path), "message": _UNSTORABLE_MESSAGE})
            continue
        field = ".".join(path)
        found.append({"field": field, "message": _message(error, field)})
    unique = list({(e["field"], e["message"]): e for e in found}.values())
    return sorted(unique, key=_field_order)


def _storable_errors(errors: ErrorList) -> ErrorList:
    # Field names come from the client (an unknown key, a key of additional_info) and end up in a jsonb
    # column: one that PostgreSQL cannot store would fail the whole chunk.
    return [{"field": storable_text(e["field"]), "message": storable_text(e["message"])} for e in errors]


def _user_from(document: Mapping[str, Any]) -> dict[str, Any]:
    """The validated document as the ``users`` columns."""
    name = document["name"]
    if isinstance(name, Mapping):
        name = f"{name['firstName']} {name['lastName']}"
    address = document.get("address")
    return {
        "name": name,
        "age": document["age"],
        "email": document.get("email"),
        "phone_number": document.get("phoneNumber"),
        "address": dict(address) if address is not None else None,
        "additional_info": document.get(ADDITIONAL_INFO) or {},
    }


def validate_record(
    data: Any, *, source: str = "json", parse_errors: Iterable[Mapping[str, Any]] = ()
) -> tuple[dict[str, Any] | None, ErrorList]:
    """Validate one record; return ``(user, [])`` when valid, else ``(None, every error)``.

    ``user`` holds the ``users`` columns: ``name``, ``age``, ``email``, ``phone_number``, ``address``,
    ``additional_info``.  ``parse_errors`` (found by the web while reading the body) are kept first and
    make the record invalid whatever its data.
    """
    errors: ErrorList = [{"field": str(e["field"]), "message": str(e["message"])} for e in parse_errors]
    errors = _storable_errors(errors)
    if not isinstance(data, Mapping):
        if not errors:
            kind = (
                "an array"
                if isinstance(data, list)
                else "null"
                if data is None
                else f"a {type(data).__name__}"
            )
            errors.append(
                {"field": ROOT_FIELD, "message": f"must be a JSON object with the user's fields, not {kind}"}
            )
        return None, errors
    oversized = [
        k for k in ("name", "address") if isinstance(data.get(k), Mapping) and len(data[k]) > MAX_NESTED_KEYS
    ]
    if oversized:
        # Cerberus' cost grows with the square of the errors it collects: refuse a huge object at once.
        errors.extend(
            {"field": k, "message": f"has {len(data[k])} fields; at most {MAX_NESTED_KEYS} are allowed"}
            for k in oversized
        )
        data = {k: ("-" if k == "name" else None) if k in oversized else v for k, v in data.items()}
    checker = validator(name_object=isinstance(data.get("name"), Mapping))
    if checker.validate(normalise(data, source=source), normalize=False) and not errors:
        return _user_from(checker.document), []
    found = errors + _storable_errors(_errors_of(checker))
    if len(found) > MAX_ERRORS:
        # Every error is kept up to a bound, so that one record cannot outgrow a Kafka message.
        more: FieldError = {"field": ROOT_FIELD, "message": f"and {len(found) - MAX_ERRORS + 1} more errors"}
        found = [*found[: MAX_ERRORS - 1], more]
    return None, found
