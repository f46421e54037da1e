"""The shape of an invalid-rows file (``GET /api/batches/<id>/invalid.csv`` / ``.ndjson``), shared by the
export (``web/invalid_rows.py``) and the batch parsers (``web/parsing.py``), so that a file downloaded,
corrected and posted again as it is reads as the uploader's own records.

* Two marker fields, :data:`ROW` (the record's row in its batch) and :data:`ERRORS` (every error of the
  record), are added to each record: the first two columns of a CSV file, the first two keys of an NDJSON
  object.  A batch whose CSV header holds both (or an object holding both keys) drops them on upload.
* CSV injection (OWASP): a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return as a formula.  The export writes such a cell with a single quote in front
  (``+1 415 555`` -> ``'+1 415 555``), and a cell starting with a quote gets one more (``'x`` -> ``''x``),
  so that the escaping can be undone exactly: a CSV whose header carries the markers has one leading quote
  removed from each cell (and header cell) that starts with a quote followed by one of those characters or
  by another quote.  Nothing else is changed, and CSV files without the markers are read as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Marker field: the row (1-based) of the record in the batch it comes from.
ROW = "_row"
#: Marker field: every error of the record, ``field: message`` joined by ``"; "`` (a list in NDJSON).
ERRORS = "_errors"
#: Marker field of an NDJSON record that was not a JSON object: its text as it was received.
RAW = "_raw"
#: First characters that make a spreadsheet evaluate a cell (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The quote put in front of such a cell (and in front of a cell already starting with a quote).
QUOTE = "'"
_ESCAPED = (*FORMULA_STARTS, QUOTE)


def escape_cell(value: str) -> str:
    """``value`` as the export writes it: with a leading quote when it starts with a formula character or a
    quote (:func:`unescape_cell` undoes it)."""
    return QUOTE + value if value.startswith(_ESCAPED) else value


def unescape_cell(cell: str) -> str:
    """The value of a cell of an exported file: one leading quote less when :func:`escape_cell` put it there
    (a quote followed by a formula character or a quote); any other cell as it is."""
    if len(cell) > 1 and cell[0] == QUOTE and cell[1] in _ESCAPED:
        return cell[1:]
    return cell


def marker_columns(header: Sequence[str]) -> tuple[int, ...]:
    """The indexes of the marker columns of a CSV header, when it carries both; ``()`` otherwise."""
    found = tuple(index for index, cell in enumerate(header) if cell.strip() in (ROW, ERRORS))
    names = {header[index].strip() for index in found}
    return found if names == {ROW, ERRORS} else ()


def without_markers(cells: list[str], markers: tuple[int, ...]) -> list[str]:
    """The cells of a row of an exported CSV (header included): marker columns dropped, cells unescaped."""
    if not markers:
        return cells
    dropped = set(markers)
    return [unescape_cell(cell) for index, cell in enumerate(cells) if index not in dropped]


def drop_marker_keys(value: dict[str, object]) -> dict[str, object]:
    """A JSON record of an exported NDJSON file without its marker keys (when it holds both)."""
    if ROW in value and ERRORS in value:
        value.pop(ROW)
        value.pop(ERRORS)
    return value
