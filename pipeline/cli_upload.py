"""``python -m pipeline upload FILE.csv|FILE.json|FILE.ndjson``: send a file of users and follow its batch.

The command talks to the web API over HTTP only (it never imports ``web``):

1. streams the file to ``POST /api/users`` with the content type its name calls for, drawing a progress
   bar of the bytes sent (the file is read in chunks, never whole); the upload carries an
   ``Idempotency-Key`` made for this file on this run, and is sent again with that same key when the
   connection fails or the API answers that it cannot take it now (``503``, ``409`` in flight...), so a
   retry is the same upload: the API answers it with the first attempt's batch, never a second batch;
2. polls ``GET /api/batches/<id>`` and draws a bar of the records processed until the batch is
   ``completed``;
3. prints the count of each outcome and the first invalid (or failed) rows with their errors.

Progress goes to standard error, the summary to standard output.  Exit codes: 0 when every record was
stored or found a duplicate, 1 when any record is invalid or failed, 2 when the API cannot be reached or
refuses the upload (or the batch does not complete within ``--timeout``), 130 when interrupted.  When the
upload is given up on, the message names its key: ``--key`` with it makes a later run the same upload.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx

from pipeline import settings
from pipeline.contract import OUTCOMES, REJECTED

EXIT_OK = 0
EXIT_REJECTED_RECORDS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: Content type of each batch format, and the format of each file name ending.
FORMATS = {"csv": "text/csv", "json": "application/json", "ndjson": "application/x-ndjson"}
SUFFIXES = {".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}
#: Bytes read from the file for each chunk of the upload.
CHUNK_BYTES = 256 * 1024
#: Seconds to wait for the 202: the API answers only once every record is durable in Kafka, which for a
#: large file takes a while after its last byte arrived.
RESPONSE_TIMEOUT_SECONDS = 600.0
#: Seconds between two polls of the batch.
DEFAULT_POLL_SECONDS = 0.5
#: Longest wait between polls when the API answers 503 with ``Retry-After``, in seconds.
MAX_RETRY_WAIT_SECONDS = 5.0
#: Invalid rows printed at the end unless ``--show`` says otherwise.
DEFAULT_SHOWN_ROWS = 10
#: The header that makes a resent upload the same submission as the first attempt.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Answers after which the upload is sent again: the API (or a proxy before it) cannot take it now, or an
#: earlier attempt with the same key is still being answered (409).  Safe only because of the key.
RETRIED_STATUSES = frozenset({409, 429, 502, 503, 504})
#: Attempts after the first one, unless ``--retries`` says otherwise.
DEFAULT_RETRIES = 5
#: Wait before the first retry when the API names none (``Retry-After``), doubled for each further one.
FIRST_RETRY_WAIT_SECONDS = 0.5


class UploadError(Exception):
    """The API could not be reached, or answered with an error: the command exits with ``EXIT_ERROR``."""


class ProgressBar:
    """A one-line progress bar on a text stream (standard error), with no dependency.

    On a terminal the line is redrawn in place (``\\r``) at most every ``interval`` seconds; elsewhere (a
    log, a pipe) a full line is written at most every ``quiet_interval`` seconds, so logs stay short.  The
    last state is always drawn by :meth:`close`.

    Parameters:
      label(str): Printed before the bar.
      total(int | None): The amount that makes 100 %; None draws a count only.
      stream(TextIO): Where to draw.
      describe(callable): Turns (done, total) into the text after the percentage.
    """

    WIDTH = 30

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO,
        describe: Callable[[int, int | None], str],
        interval: float = 0.1,
        quiet_interval: float = 5.0,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream
        self.describe = describe
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = interval if self.interactive else quiet_interval
        self._drawn_at: float | None = None

    def update(self, done: int, total: int | None = None) -> None:
        """Record progress; redraw when the last drawing is old enough."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._draw()
            self._drawn_at = now

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw()
        if self.interactive:
            self.stream.write("\n")
        self.stream.flush()

    def line(self) -> str:
        """The bar as text, e.g. ``sending   [#######...]  45 %  1.2 MiB / 2.7 MiB``."""
        if self.total is None:
            return f"{self.label:<10} {self.describe(self.done, None)}"
        # Floor, so that 100 % means all of it, never "almost".
        percent = 100 if self.total <= 0 else min(100, self.done * 100 // self.total)
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return f"{self.label:<10} [{bar}] {percent:3d} %  {self.describe(self.done, self.total)}"

    def _draw(self) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + self.line())  # \x1b[2K clears the line: the text may shrink
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _bytes_text(done: int, total: int | None) -> str:
    return _size(done) if total is None else f"{_size(done)} / {_size(total)}"


def _records_text(done: int, total: int | None) -> str:
    return f"{done} records processed" if total is None else f"{done} / {total} records"


def file_format(path: Path, explicit: str | None = None) -> str:
    """``csv``, ``json`` or ``ndjson``: the one asked for, else the one the file name ends with."""
    if explicit:
        return explicit
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UploadError(f"cannot tell the format of {path.name!r} from its name; pass --format")
    return fmt


def _chunks(path: Path, bar: ProgressBar) -> Iterator[bytes]:
    """The file in chunks of ``CHUNK_BYTES``, advancing ``bar`` as each one is handed to the connection."""
    sent = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            bar.update(sent)


def _error_text(response: httpx.Response) -> str:
    """The API's ``{"error": {"code", "message"}}`` as one line, or the start of whatever else came."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason_phrase}: {response.text[:200]}"


def new_idempotency_key() -> str:
    """A key for one file on one run: random, so that two runs, or two files, are never one submission."""
    return str(uuid.uuid4())


def _pause(seconds: float) -> None:
    """Sleep before a retry (a function of its own, so that tests need not wait)."""
    time.sleep(seconds)


def _post_once(
    client: httpx.Client, path: Path, headers: dict[str, str], err: TextIO
) -> httpx.Response | httpx.TransportError:
    """One attempt, the file streamed from its first byte; a failed connection is returned, not raised."""
    bar = ProgressBar("sending", path.stat().st_size, stream=err, describe=_bytes_text)
    try:
        return client.post("/api/users", content=_chunks(path, bar), headers=headers)
    except httpx.TransportError as exc:
        return exc
    except httpx.HTTPError as exc:
        raise UploadError(f"the upload failed: {type(exc).__name__}: {exc}") from None
    finally:
        bar.close()


def _retry_wait(outcome: httpx.Response | httpx.TransportError, retry: int) -> float | None:
    """Seconds to wait before sending the upload again, or None when this answer is final."""
    if isinstance(outcome, httpx.Response):
        if outcome.status_code not in RETRIED_STATUSES:
            return None
        retry_after = outcome.headers.get("retry-after", "")
        if retry_after.isdigit():
            return min(float(retry_after), MAX_RETRY_WAIT_SECONDS)
    return min(FIRST_RETRY_WAIT_SECONDS * 2**retry, MAX_RETRY_WAIT_SECONDS)


def _failure_text(outcome: httpx.Response | httpx.TransportError) -> str:
    if isinstance(outcome, httpx.TransportError):
        return f"the upload failed: {type(outcome).__name__}: {outcome}"
    return f"the API refused the file: {_error_text(outcome)}"


def send_file(
    client: httpx.Client,
    path: Path,
    fmt: str,
    *,
    err: TextIO,
    key: str,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """Stream the file to ``POST /api/users`` until it is accepted; returns the 202 answer
    ``{"batch_id", "count", "replayed"}``.

    Every attempt carries the same ``key``: an attempt the API took although its answer was lost (or was a
    503 while the batch in fact reached Kafka) is answered, on the next attempt, with that first batch.
    """
    headers = {
        "Content-Type": FORMATS[fmt],
        # Announced, so that the API can refuse an oversized file before it is sent (and no chunked encoding).
        "Content-Length": str(path.stat().st_size),
        "Accept": "application/json",
        IDEMPOTENCY_HEADER: key,
    }
    for retry in range(retries + 1):
        outcome = _post_once(client, path, headers, err)
        if isinstance(outcome, httpx.Response) and outcome.status_code == 202:
            return _accepted(outcome)
        wait = _retry_wait(outcome, retry)
        if wait is None:
            raise UploadError(_failure_text(outcome))
        if retry == retries:
            raise UploadError(
                f"{_failure_text(outcome)} (attempts: {retries + 1}; to try again as the same upload: "
                f"--key {key})"
            )
        err.write(f"{_failure_text(outcome)}; sending again in {wait:g} s as the same upload\n")
        _pause(wait)
    raise AssertionError("unreachable")


def _accepted(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return {"batch_id": str(answer["batch_id"]), "count": int(answer["count"]), "replayed": replayed}
    except (ValueError, KeyError, TypeError):
        raise UploadError(f"unexpected answer to the upload: {response.text[:200]}") from None


def _get_batch(client: httpx.Client, batch_id: str, limit: int) -> dict[str, Any] | float:
    """The batch report, or the seconds to wait before asking again (the API answered 503)."""
    try:
        response = client.get(f"/api/batches/{batch_id}", params={"limit": limit})
    except httpx.TransportError as exc:
        raise UploadError(f"cannot follow the batch: {type(exc).__name__}: {exc}") from None
    if response.status_code == 503:
        retry_after = response.headers.get("retry-after", "")
        return min(float(retry_after), MAX_RETRY_WAIT_SECONDS) if retry_after.isdigit() else 1.0
    if response.status_code != 200:
        raise UploadError(f"cannot follow the batch: {_error_text(response)}")
    report: dict[str, Any] = response.json()
    return report


def _processed(report: dict[str, Any]) -> int:
    counts = report.get("counts") or {}
    return sum(int(counts.get(outcome) or 0) for outcome in OUTCOMES)


def follow_batch(
    client: httpx.Client,
    batch_id: str,
    expected: int,
    *,
    err: TextIO,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    timeout: float | None = None,
    shown_rows: int = DEFAULT_SHOWN_ROWS,
) -> dict[str, Any]:
    """Poll the batch until it is ``completed``; returns the final report (its first ``shown_rows`` items)."""
    bar = ProgressBar("processing", expected, stream=err, describe=_records_text)
    deadline = None if timeout is None else time.monotonic() + timeout
    last: dict[str, Any] = {}
    try:
        while True:
            # limit=1 while polling: only the counts matter until the end.
            answer = _get_batch(client, batch_id, limit=1)
            if isinstance(answer, dict):
                last = answer
                # The worker registers the batch's count; until then the 202's count is the total.
                bar.update(_processed(answer), answer.get("count") or expected)
                if answer.get("state") == "completed":
                    break
                wait = poll_seconds
            else:
                wait = answer
            if deadline is not None and time.monotonic() + wait > deadline:
                raise UploadError(f"the batch did not complete within {timeout:g} s; it goes on")
            time.sleep(wait)
    finally:
        bar.close()
    final = _get_batch(client, batch_id, limit=max(1, shown_rows))
    if not isinstance(final, dict):
        return last  # completed but the database just went away: the counts are known, the rows not
    return final


def _rejected(counts: dict[str, Any]) -> int:
    """Records of the batch that are ``invalid`` or ``failed``."""
    return sum(int(counts.get(outcome) or 0) for outcome in REJECTED)


def print_summary(report: dict[str, Any], *, out: TextIO, shown_rows: int) -> None:
    """The counts per outcome, then the first invalid/failed rows with each of their errors."""
    counts = report.get("counts") or {}
    total = report.get("count")
    out.write(f"batch {report.get('batch_id')}: {report.get('state')}, {total} records\n")
    for outcome in OUTCOMES:
        out.write(f"  {outcome:<10} {int(counts.get(outcome) or 0):>9}\n")
    rejected = _rejected(counts)
    items = (report.get("items") or [])[:shown_rows]
    if not rejected or not items:
        return
    out.write(f"first {len(items)} of {rejected} invalid or failed rows:\n")
    for item in items:
        errors = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in item.get("errors") or [])
        out.write(f"  row {item.get('row')} ({item.get('status')}): {errors or 'no detail'}\n")
    if rejected > len(items):
        out.write(f"  ... and {rejected - len(items)} more: GET /api/batches/{report.get('batch_id')}\n")


def upload(
    path: Path,
    *,
    url: str,
    token: str = "",
    fmt: str | None = None,
    wait: bool = True,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    timeout: float | None = None,
    shown_rows: int = DEFAULT_SHOWN_ROWS,
    key: str | None = None,
    retries: int = DEFAULT_RETRIES,
    out: TextIO | None = None,
    err: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Upload ``path``, follow its batch and print the summary; returns the exit code.

    ``key`` is the upload's ``Idempotency-Key`` (a new random one when None); ``out`` and ``err`` default
    to the standard streams of the moment; ``transport`` replaces the network (tests give an
    ``httpx.MockTransport``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client_timeout = httpx.Timeout(30.0, read=RESPONSE_TIMEOUT_SECONDS)
    try:
        if not path.is_file():
            raise UploadError(f"no such file: {path}")
        chosen = file_format(path, fmt)
        with httpx.Client(
            base_url=url, headers=headers, timeout=client_timeout, transport=transport
        ) as client:
            accepted = send_file(
                client, path, chosen, err=err, key=key or new_idempotency_key(), retries=retries
            )
            again = " (an earlier attempt had been accepted)" if accepted["replayed"] else ""
            err.write(f"accepted {accepted['count']} records as batch {accepted['batch_id']}{again}\n")
            if not wait:
                out.write(f"{accepted['batch_id']}\n")
                return EXIT_OK
            report = follow_batch(
                client,
                accepted["batch_id"],
                accepted["count"],
                err=err,
                poll_seconds=poll_seconds,
                timeout=timeout,
                shown_rows=shown_rows,
            )
    except UploadError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("\ninterrupted (a batch already accepted is processed all the same)\n")
        return EXIT_INTERRUPTED
    print_summary(report, out=out, shown_rows=shown_rows)
    rejected = _rejected(report.get("counts") or {})
    return EXIT_REJECTED_RECORDS if rejected else EXIT_OK


def register(subparsers: Any) -> None:
    """Add the ``upload`` command to the CLI."""
    parser = subparsers.add_parser(
        "upload",
        help="send a CSV/JSON/NDJSON file of users to the API and follow its batch",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("file", type=Path, help="a .csv, .json (array) or .ndjson/.jsonl file")
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{settings.PORT}",
        help="base URL of the API (default: %(default)s)",
    )
    parser.add_argument("--token", default=settings.API_TOKEN, help="bearer token (default: API_TOKEN)")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), help="the file's format, when its name does not say"
    )
    parser.add_argument("--no-wait", action="store_true", help="print the batch id once accepted and exit")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the batch to complete (default: no limit)",
    )
    parser.add_argument(
        "--show", type=int, default=DEFAULT_SHOWN_ROWS, help="invalid rows to print (default: %(default)s)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="times to send the upload again after a 503 or a failed connection (default: %(default)s)",
    )
    parser.add_argument(
        "--key",
        help="the upload's Idempotency-Key (default: a new random one); a failed run prints its key, "
        "so that a later run with it is the same upload",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out ``upload`` from parsed arguments; returns the exit code."""
    # httpx logs every request at INFO: a line per poll would bury the bar (LOG_LEVEL=DEBUG shows them).
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return upload(
        args.file,
        url=args.url,
        token=args.token,
        fmt=args.format,
        wait=not args.no_wait,
        timeout=args.timeout,
        shown_rows=max(0, args.show),
        key=args.key,
        retries=max(0, args.retries),
    )
