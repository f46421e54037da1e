"""Parsers of request bodies: one JSON object, or a batch as a JSON array, NDJSON or CSV.

The batch parsers are generators over an iterable of byte chunks (the request body as it arrives) and
yield one :class:`ParsedRecord` per record, so that a body of a million records never sits whole in memory;
they are synchronous and run in a worker thread (see ``web.batches``).

Rules shared by every form:

* Bodies are UTF-8 (a leading byte-order mark is dropped); anything else is ``400``.
* JSON is strict: ``NaN``/``Infinity`` and numbers out of the float range (``1e309``) or longer than
  Python's integer digit limit are ``400 malformed_json``.  With duplicate keys the last one wins.
* Strings holding a NUL character or a lone UTF-16 surrogate (``"\\u0000"``, ``"\\ud800"``) cannot be stored
  in PostgreSQL nor sent on as UTF-8: a single submission holding one is ``422 invalid_body``; in a batch the
  record becomes invalid (``data`` ``None`` and an error naming the field) and the rest goes on.
* Values nested deeper than :data:`MAX_DEPTH` levels are refused the same way.
* A record of a batch (JSON element, NDJSON line, CSV line) may not be longer than ``max_record_bytes``
  characters (``413``).

Per-record problems that do not stop the batch (the record then carries ``errors`` and ``data`` ``None``):
an element of a JSON array or an NDJSON line that is not an object (field ``_row`` / ``_line``), an NDJSON
line that is not JSON (``_line``), a CSV row with more or fewer cells than the header (``_row``).
A file exported by ``GET /api/batches/<id>/invalid.*`` reads as its records were: ``web/invalid_file.py``.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.contract import storable_text
from web import invalid_file
from web.errors import InvalidBody, Malformed, PayloadTooLarge

#: Deepest nesting of objects and arrays accepted in a record (the record itself is level 1).
MAX_DEPTH = 32

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BOM = "\ufeff"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ParsedRecord:
    """One record of a batch: its 1-based row, the data that could be parsed, and the problems found."""

    row: int
    data: dict[str, Any] | None
    errors: list[dict[str, str]] = field(default_factory=list)
    #: What could not be made an object (``data`` None): a CSV row's cells, a JSON value's or line's text.
    raw: Any = None
    #: A CSV batch's header cells as uploaded (the same list for every row).
    header: list[str] | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


class _Unstorable(ValueError):
    """A decoded value that parses but cannot be stored (NUL, lone surrogate, too deep)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        # The path quotes the client's keys, which may hold the very characters being refused.
        self.path = storable_text(path)
        self.message = message


def _describe_json_error(exc: Exception, *, where: bool = True) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}" if where else exc.msg
    return str(exc)


def _loads(text: str) -> Any:
    """Strict ``json.loads``; raises ``ValueError`` (with a readable message) or ``_Unstorable``."""
    try:
        value, end = _DECODER.raw_decode(text, _WHITESPACE.match(text).end())  # type: ignore[union-attr]
    except RecursionError:
        raise _Unstorable("", f"values may not be nested deeper than {MAX_DEPTH} levels") from None
    if _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError(f"unexpected data after the JSON value at character {end}")
    _check_storable(value, text)
    return value


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _check_storable(value: Any, source: str) -> None:
    """Raise ``_Unstorable`` if ``value`` nests too deep or holds a string PostgreSQL cannot store.

    ``source`` is the JSON text ``value`` came from: NUL and lone surrogates can only come from ``\\u``
    escapes, and depth is bounded by the count of brackets, so most records skip the walk entirely.
    """
    suspicious_escape = "\\u" in source
    maybe_deep = source.count("{") + source.count("[") > MAX_DEPTH
    if not suspicious_escape and not maybe_deep:
        return
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _Unstorable(path, f"values may not be nested deeper than {MAX_DEPTH} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    _check_string(key, _path(path, key), "a key")
                stack.append((child, _path(path, key), depth + 1))
        elif isinstance(item, str):
            _check_string(item, path, "the value")


def _check_string(text: str, path: str, what: str) -> None:
    if "\x00" in text:
        raise _Unstorable(path, f"{what} contains a NUL character (\\u0000), which cannot be stored")
    if _SURROGATE.search(text):
        raise _Unstorable(path, f"{what} contains a lone UTF-16 surrogate, which is not valid Unicode")


def _decode_utf8(body: bytes, *, code: str) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"the body is not valid UTF-8 (byte {exc.start})", code=code) from None
    return text[1:] if text.startswith(_BOM) else text


def parse_object(body: bytes) -> dict[str, Any]:
    """The JSON object of a single submission; raises ``Malformed`` (400) or ``InvalidBody`` (422)."""
    text = _decode_utf8(body, code="malformed_json")
    if not text.strip(" \t\r\n"):
        raise Malformed("the body is empty; a JSON object is expected")
    try:
        value = _loads(text)
    except _Unstorable as exc:
        raise InvalidBody(f"{exc.path}: {exc.message}" if exc.path else exc.message) from None
    except ValueError as exc:
        raise Malformed(f"the body is not valid JSON: {_describe_json_error(exc)}") from None
    if not isinstance(value, dict):
        raise InvalidBody(f"a JSON object is expected, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _record(row: int, value: Any, field_name: str, what: str) -> ParsedRecord:
    if isinstance(value, dict):
        return ParsedRecord(row, invalid_file.drop_marker_keys(value))
    return ParsedRecord(
        row,
        None,
        [{"field": field_name, "message": f"{what} {row} is {_json_type(value)}, not a JSON object"}],
        raw=json.dumps(value),
    )


def _unstorable_record(row: int, exc: _Unstorable, field_name: str, raw: str) -> ParsedRecord:
    return ParsedRecord(row, None, [{"field": exc.path or field_name, "message": exc.message}], raw=raw)


def _texts(chunks: Iterable[bytes], *, code: str) -> Iterator[str]:
    """Decode UTF-8 incrementally (chunks may split characters), dropping a leading BOM."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    offset = 0
    try:
        for chunk in chunks:
            text = decoder.decode(chunk)
            offset += len(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise Malformed(f"the body is not valid UTF-8 (near byte {offset + exc.start})", code=code) from None
    if tail:
        yield tail


#: Characters of a number or literal (``true``...) that a chunk boundary may cut.
_NUMBER_OR_LITERAL_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-"


class _TextBuffer:
    """Decoded text of a body with a read position; consumed text is dropped as more arrives.

    A trailing run of number/literal characters is held back until the next piece arrives (or the body
    ends), so that the decoder never mistakes ``12`` for a whole number when ``345`` is still to come.
    """

    def __init__(self, texts: Iterator[str], *, max_held: int) -> None:
        self.texts = texts
        self.text = ""
        self.position = 0
        self.eof = False
        self._held = ""
        self._max_held = max_held

    def more(self) -> bool:
        """Append the next piece of text; ``False`` at the end of the body."""
        for piece in self.texts:
            piece = self._held + piece
            keep = len(piece.rstrip(_NUMBER_OR_LITERAL_CHARS))  # rstrip, not a regex search: linear and in C
            if len(piece) - keep <= self._max_held:
                piece, self._held = piece[:keep], piece[keep:]
            else:
                self._held = ""
            self.text = self.text[self.position :] + piece
            self.position = 0
            return True
        if self._held:
            self.text, self.position, self._held = self.text[self.position :] + self._held, 0, ""
            return True
        self.eof = True
        return False

    def skip_whitespace(self) -> bool:
        """Move past whitespace, reading on; ``False`` if the body ends first."""
        while True:
            self.position = _WHITESPACE.match(self.text, self.position).end()  # type: ignore[union-attr]
            if self.position < len(self.text):
                return True
            if not self.more():
                return False

    def pending(self) -> int:
        return len(self.text) - self.position


def iter_json_array(chunks: Iterable[bytes], *, max_record_bytes: int) -> Iterator[ParsedRecord]:
    """The elements of a JSON array, one record each (row = index + 1).

    Elements are decoded one at a time with the C decoder's ``raw_decode``.  An element cut by a chunk
    boundary fails to decode (or, for a number, touches the end of the text) and is retried once the
    buffered text has doubled, so a large element costs linear time; an element still undecodable past
    ``max_record_bytes`` characters is refused.
    """
    body = _TextBuffer(_texts(chunks, code="malformed_json"), max_held=max_record_bytes)
    if not body.skip_whitespace():
        raise Malformed("the body is empty; a JSON array of objects is expected")
    if body.text[body.position] != "[":
        _classify_non_array(body, max_record_bytes)
    body.position += 1
    row = 0
    while True:
        # After "[" or ",": a value, or (only right after "[") the closing "]".
        if not body.skip_whitespace():
            raise Malformed("the JSON array is not closed (was the body cut short?)")
        if row == 0 and body.text[body.position] == "]":
            body.position += 1
            break
        row += 1
        value, end = _decode_element(body, row, max_record_bytes)
        if end - body.position > max_record_bytes:
            raise PayloadTooLarge(f"row {row} is longer than {max_record_bytes} characters")
        try:
            _check_storable(value, body.text[body.position : end])
            yield _record(row, value, "_row", "row")
        except _Unstorable as exc:
            yield _unstorable_record(row, exc, "_row", json.dumps(value))
        body.position = end
        if not body.skip_whitespace():
            raise Malformed("the JSON array is not closed (was the body cut short?)")
        char = body.text[body.position]
        body.position += 1
        if char == "]":
            break
        if char != ",":
            raise Malformed(f"',' or ']' is expected after row {row}, not {char!r}")
    if body.skip_whitespace():
        raise Malformed("unexpected data after the end of the JSON array")


def _decode_element(body: _TextBuffer, row: int, max_record_bytes: int) -> tuple[Any, int]:
    """Decode the value at the read position, reading more text as needed; returns it and its end."""
    while True:
        try:
            value, end = _DECODER.raw_decode(body.text, body.position)
        except RecursionError:
            raise InvalidBody(f"row {row} is nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            if body.eof:
                raise Malformed(
                    f"row {row} is not valid JSON: {_describe_json_error(exc, where=False)}"
                ) from None
            if body.pending() > max_record_bytes:
                raise Malformed(
                    f"row {row} is not valid JSON (or longer than {max_record_bytes} characters): "
                    f"{_describe_json_error(exc, where=False)}"
                ) from None
        else:
            # A value touching the end of the text may go on in the next chunk (think of a number).
            if end < len(body.text) or body.eof:
                return value, end
        target = max(2 * body.pending(), 4096)
        while body.pending() < target and body.more():
            pass


def _classify_non_array(body: _TextBuffer, limit: int) -> None:
    """The body does not start with "[": 422 if it is some other JSON value, else 400."""
    while body.more():
        if body.pending() > limit:
            raise InvalidBody("a JSON array of objects is expected")
    try:
        value = _loads(body.text[body.position :])
    except _Unstorable:
        raise InvalidBody("a JSON array of objects is expected") from None
    except ValueError as exc:
        raise Malformed(f"the body is not valid JSON: {_describe_json_error(exc)}") from None
    raise InvalidBody(f"a JSON array of objects is expected, not {_json_type(value)}")


def iter_ndjson(chunks: Iterable[bytes], *, max_record_bytes: int) -> Iterator[ParsedRecord]:
    """One record per non-blank line (row = count of non-blank lines so far); ``\\r\\n`` is fine.

    A line that is not JSON, or JSON but not an object, is an invalid record (field ``_line``); the rest
    of the body goes on.  Invalid UTF-8 anywhere is ``400 malformed_json``.
    """
    row = 0
    for line in _lines(_texts(chunks, code="malformed_json"), max_record_bytes, "line"):
        if not line.strip(" \t\r\n"):
            continue
        row += 1
        try:
            value = _loads(line)
        except _Unstorable as exc:
            yield _unstorable_record(row, exc, "_line", storable_text(line.strip(" \t\r\n")))
            continue
        except ValueError as exc:
            message = f"line {row} is not valid JSON: {_describe_json_error(exc, where=False)}"
            raw = storable_text(line.strip(" \t\r\n"))
            yield ParsedRecord(row, None, [{"field": "_line", "message": message}], raw=raw)
            continue
        yield _record(row, value, "_line", "line")


#: Line ends of CSV: CRLF, LF, and a lone CR (old Mac exports).  NDJSON lines end at LF only.
_CSV_LINE_END = re.compile(r"\r\n|\n|\r")


def _lines(texts: Iterable[str], max_line: int, what: str, *, lone_cr: bool = False) -> Iterator[str]:
    """Split text into lines (ends kept), whatever the chunking; a line over ``max_line`` characters is 413.

    With ``lone_cr`` a CR not followed by LF ends a line too (a CR at the end of a chunk waits for the
    next one, which may start with its LF).
    """
    too_long = PayloadTooLarge(f"a {what} of the body is longer than {max_line} characters")
    pending = ""
    for text in texts:
        pending += text
        start = 0
        limit = len(pending) - 1 if lone_cr and pending.endswith("\r") else len(pending)
        if lone_cr:
            for match in _CSV_LINE_END.finditer(pending, 0, limit):
                if match.start() - start > max_line:
                    raise too_long
                yield pending[start : match.end()]
                start = match.end()
        else:
            while (end := pending.find("\n", start)) != -1:
                if end - start > max_line:
                    raise too_long
                yield pending[start : end + 1]
                start = end + 1
        pending = pending[start:]
        if len(pending) > max_line:
            raise too_long
    if pending:
        yield pending


def parse_csv_header(cells: list[str]) -> list[tuple[str, ...]]:
    """The dotted header of a CSV body as key paths; raises ``InvalidBody`` if it cannot build objects."""
    paths: list[tuple[str, ...]] = []
    seen: dict[tuple[str, ...], str] = {}
    for index, cell in enumerate(cells, start=1):
        name = cell.strip()
        if not name:
            raise InvalidBody(f"CSV header column {index} is empty")
        if "\x00" in name:
            raise InvalidBody(f"CSV header column {index} contains a NUL character")
        path = tuple(part.strip() for part in name.split("."))
        if not all(path):
            raise InvalidBody(f"CSV header {name!r} has an empty part between dots")
        if len(path) > MAX_DEPTH - 1:
            raise InvalidBody(f"CSV header {name!r} nests deeper than {MAX_DEPTH} levels")
        if path in seen:
            raise InvalidBody(f"CSV header {name!r} appears twice")
        seen[path] = name
        paths.append(path)
    # "address" and "address.city" cannot both be columns: one would overwrite the other.
    for path, name in seen.items():
        for length in range(1, len(path)):
            if path[:length] in seen:
                raise InvalidBody(f"CSV headers {seen[path[:length]]!r} and {name!r} conflict")
    return paths


def _nest(paths: list[tuple[str, ...]], cells: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for path, cell in zip(paths, cells, strict=True):
        if cell == "":
            continue  # an empty cell is an absent field
        target = record
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = cell
    return record


def iter_csv(chunks: Iterable[bytes], *, max_record_bytes: int) -> Iterator[ParsedRecord]:
    """One record per data row (row 1 is the first row after the header; blank rows are skipped).

    Parsed with the ``csv`` module (quoted commas, doubled quotes, newlines inside quotes, CRLF); dotted
    headers build nested objects; empty cells are left out; a row with more or fewer cells than the
    header is an invalid record (field ``_row``).  Cells stay strings: the validator coerces them.
    """
    csv.field_size_limit(max(max_record_bytes, 1))
    lines = _lines(_texts(chunks, code="malformed_csv"), max_record_bytes, "line", lone_cr=True)
    # strict: a quote left open at the end of the body (a cut-off upload) is an error, not a value.
    reader = csv.reader(lines, strict=True)
    paths: list[tuple[str, ...]] | None = None
    header: list[str] = []
    markers: tuple[int, ...] = ()  # the columns of a file exported by GET /api/batches/<id>/invalid.csv
    row = 0
    try:
        for cells in reader:
            if not cells or all(cell == "" for cell in cells):
                continue
            if paths is None:
                markers = invalid_file.marker_columns(cells)
                header = invalid_file.without_markers(cells, markers)
                paths = parse_csv_header(header)
                continue
            row += 1
            cells = invalid_file.without_markers(cells, markers)
            if len(cells) != len(paths):
                message = f"row {row} has {len(cells)} fields, the header has {len(paths)}"
                raw = [storable_text(cell) for cell in cells]
                yield ParsedRecord(row, None, [{"field": "_row", "message": message}], raw, header)
                continue
            bad = next((index for index, cell in enumerate(cells) if "\x00" in cell), None)
            if bad is not None:
                message = "the value contains a NUL character (\\u0000), which cannot be stored"
                raw = [storable_text(cell) for cell in cells]
                error = {"field": ".".join(paths[bad]), "message": message}
                yield ParsedRecord(row, None, [error], raw, header)
                continue
            yield ParsedRecord(row, _nest(paths, cells), header=header)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):  # a quoted value spanning many short lines
            raise PayloadTooLarge(
                f"a CSV value near line {reader.line_num} is longer than {max_record_bytes} characters"
            ) from None
        raise Malformed(
            f"the CSV cannot be parsed near line {reader.line_num}: {exc}", code="malformed_csv"
        ) from None
    if paths is None:
        raise InvalidBody("the CSV body is empty; a header row and at least one data row are expected")
