"""The upload CLI (``python -m pipeline upload``) against a stand-in of the API.

The stand-in (:class:`FakeApi`, behind an ``httpx.MockTransport``) answers ``POST /api/users`` and
``GET /api/batches/<id>`` as the contract says, so these tests need no Kafka nor PostgreSQL; the page's
browser test (``test_ui_browser.py``) runs the CLI against the real stack too.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import cli_upload
from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

CSV = (
    "name.firstName,name.lastName,age,email\n"
    "Ada,Lovelace,36,ada@example.org\n"
    "Alan,Turing,abc,not-an-address\n"
    "Grace,Hopper,85,grace@example.org\n"
    "Edsger,Dijkstra\n"
)


class FakeApi:
    """Answers like the API: 202 to an upload, then a batch that completes after ``polls_to_finish`` polls.

    ``outcomes`` maps each row number to ``(status, errors)``; rows are "processed" in order, a share of
    them per poll.  ``upload_answers`` are the answers to the first uploads, in order (an exception is
    raised after the body was read: the answer was lost); the uploads after them get ``upload_answer``, or
    a 202.  Everything the client sent is kept for the test to check.
    """

    def __init__(
        self,
        outcomes: dict[int, tuple[str, list[dict[str, str]]]],
        *,
        polls_to_finish: int = 3,
        token: str = "",
        upload_answer: httpx.Response | None = None,
        upload_answers: list[httpx.Response | Exception] | None = None,
        unavailable_polls: int = 0,
    ) -> None:
        self.outcomes = outcomes
        self.polls_to_finish = polls_to_finish
        self.token = token
        self.upload_answer = upload_answer
        self.upload_answers = list(upload_answers or [])
        self.uploads: list[tuple[str | None, bytes]] = []  # (Idempotency-Key, body) of each attempt
        self.unavailable_polls = unavailable_polls
        self.polls = 0
        self.body = b""
        self.upload_headers: httpx.Headers | None = None
        self.authorizations: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.authorizations.append(request.headers.get("authorization"))
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "a valid bearer token is required")
        if request.method == "POST" and request.url.path == "/api/users":
            self.upload_headers = request.headers
            self.body = request.read()  # drives the CLI's generator of chunks to its end
            self.uploads.append((request.headers.get("idempotency-key"), self.body))
            if self.upload_answers:
                answer = self.upload_answers.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                return answer
            if self.upload_answer is not None:
                return self.upload_answer
            return httpx.Response(202, json={"batch_id": "b-1", "count": len(self.outcomes)})
        if request.method == "GET" and request.url.path == "/api/batches/b-1":
            return self._batch(int(request.url.params.get("limit", "100")))
        return _error(404, "not_found", "no such route")

    def _batch(self, limit: int) -> httpx.Response:
        if self.unavailable_polls:
            self.unavailable_polls -= 1
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"error": {"code": "database_unavailable", "message": "down"}},
            )
        self.polls += 1
        total = len(self.outcomes)
        done_rows = sorted(self.outcomes)[
            : total * min(self.polls, self.polls_to_finish) // self.polls_to_finish
        ]
        counts = dict.fromkeys(cli_upload.OUTCOMES, 0)
        for row in done_rows:
            counts[self.outcomes[row][0]] += 1
        items = [
            {"id": f"b-1.{row}", "row": row, "status": self.outcomes[row][0], "errors": self.outcomes[row][1]}
            for row in done_rows
            if self.outcomes[row][0] in {"invalid", "failed"}
        ]
        return httpx.Response(
            200,
            json={
                "batch_id": "b-1",
                "state": "completed" if len(done_rows) == total else "processing",
                # The worker registers the count a little after the first records are processed.
                "count": total if self.polls > 1 else None,
                "counts": {"queued": total - len(done_rows), **counts},
                "items": items[:limit],
                "next_cursor": str(items[limit - 1]["row"]) if len(items) > limit else None,
            },
        )


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


MIXED_OUTCOMES = {
    1: ("stored", []),
    2: (
        "invalid",
        [
            {"field": "age", "message": "must be of integer type"},
            {"field": "email", "message": "not an email address"},
        ],
    ),
    3: ("duplicate", []),
    4: ("invalid", [{"field": "_row", "message": "the row has 2 columns, the header has 4"}]),
}


def run_upload(path: Path, api: FakeApi, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options.setdefault("poll_seconds", 0)
    code = cli_upload.upload(
        path, url="http://api.test", out=out, err=err, transport=httpx.MockTransport(api), **options
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_a_csv_with_invalid_rows_is_sent_whole_followed_to_the_end_and_exits_1(csv_file: Path) -> None:
    # Given
    api = FakeApi(MIXED_OUTCOMES)

    # When
    code, out, err = run_upload(csv_file, api)

    # Then: the file arrived byte for byte, as CSV, with its length announced
    assert api.body == csv_file.read_bytes()
    assert api.upload_headers is not None
    assert api.upload_headers["content-type"] == "text/csv"
    assert api.upload_headers["content-length"] == str(csv_file.stat().st_size)
    # both bars reached their end
    assert "sending" in err and f"100 %  {len(CSV)} B / {len(CSV)} B" in err
    assert "processing" in err and "100 %  4 / 4 records" in err
    # the summary counts every outcome, and the invalid rows come with each of their errors
    assert "batch b-1: completed, 4 records" in out
    assert "  stored             1" in out
    assert "  duplicate          1" in out
    assert "  invalid            2" in out
    assert "  failed             0" in out
    assert "row 2 (invalid): age: must be of integer type; email: not an email address" in out
    assert "row 4 (invalid): _row: the row has 2 columns, the header has 4" in out
    assert code == cli_upload.EXIT_REJECTED_RECORDS


def test_a_batch_where_every_record_is_stored_or_a_duplicate_exits_0(csv_file: Path) -> None:
    # Given
    api = FakeApi({1: ("stored", []), 2: ("stored", []), 3: ("duplicate", [])})

    # When
    code, out, _ = run_upload(csv_file, api)

    # Then
    assert code == cli_upload.EXIT_OK
    assert "invalid or failed rows" not in out


def test_a_failed_record_makes_the_exit_code_1(csv_file: Path) -> None:
    # Given
    api = FakeApi(
        {1: ("stored", []), 2: ("failed", [{"field": "_system", "message": "OperationalError: gone"}])}
    )

    # When
    code, out, _ = run_upload(csv_file, api)

    # Then
    assert code == cli_upload.EXIT_REJECTED_RECORDS
    assert "row 2 (failed): _system: OperationalError: gone" in out


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        ("users.json", '[{"name": "Ada", "age": 36}]', "application/json"),
        ("users.ndjson", '{"name": "Ada", "age": 36}\n', "application/x-ndjson"),
        ("users.JSONL", '{"name": "Ada", "age": 36}\n', "application/x-ndjson"),
    ],
)
def test_the_content_type_follows_the_file_name(
    tmp_path: Path, name: str, content: str, content_type: str
) -> None:
    # Given
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    api = FakeApi({1: ("stored", [])})

    # When
    code, _, _ = run_upload(path, api)

    # Then
    assert code == cli_upload.EXIT_OK
    assert api.upload_headers is not None and api.upload_headers["content-type"] == content_type


def test_a_file_name_without_a_known_ending_needs_format(tmp_path: Path) -> None:
    # Given
    path = tmp_path / "users.txt"
    path.write_text(CSV, encoding="utf-8")

    # When
    refused = run_upload(path, FakeApi(MIXED_OUTCOMES))
    accepted = run_upload(path, FakeApi(MIXED_OUTCOMES), fmt="csv")

    # Then
    assert refused[0] == cli_upload.EXIT_ERROR and "--format" in refused[2]
    assert accepted[0] == cli_upload.EXIT_REJECTED_RECORDS


def test_a_file_much_larger_than_one_chunk_is_streamed_in_chunks(tmp_path: Path) -> None:
    # Given: a CSV of several chunks
    path = tmp_path / "big.csv"
    path.write_text("name,age\n" + "".join(f"user{i},{i % 100}\n" for i in range(100_000)), encoding="utf-8")
    assert path.stat().st_size > 3 * cli_upload.CHUNK_BYTES
    chunk_sizes: list[int] = []

    class RecordChunks(httpx.BaseTransport):
        # A transport of its own: MockTransport reads the whole body before its handler sees it.
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            chunk_sizes.extend(len(chunk) for chunk in request.stream)  # type: ignore[union-attr]
            return httpx.Response(202, json={"batch_id": "b-1", "count": 100_000})

    # When
    out, err = io.StringIO(), io.StringIO()
    code = cli_upload.upload(
        path, url="http://api.test", wait=False, out=out, err=err, transport=RecordChunks()
    )

    # Then: no chunk is larger than CHUNK_BYTES, and they add up to the file
    assert code == cli_upload.EXIT_OK
    assert out.getvalue() == "b-1\n"
    assert len(chunk_sizes) > 3 and max(chunk_sizes) <= cli_upload.CHUNK_BYTES
    assert sum(chunk_sizes) == path.stat().st_size


def test_the_token_is_sent_as_a_bearer_token_on_every_request(csv_file: Path) -> None:
    # Given
    api = FakeApi(MIXED_OUTCOMES, token="s3cret")

    # When
    code, _, _ = run_upload(csv_file, api, token="s3cret")

    # Then
    assert code == cli_upload.EXIT_REJECTED_RECORDS
    assert len(api.authorizations) > 2
    assert set(api.authorizations) == {"Bearer s3cret"}


def test_a_refused_token_exits_2_with_the_apis_message(csv_file: Path) -> None:
    # Given
    api = FakeApi(MIXED_OUTCOMES, token="s3cret")

    # When
    code, out, err = run_upload(csv_file, api, token="wrong")

    # Then
    assert code == cli_upload.EXIT_ERROR
    assert "401 unauthorized: a valid bearer token is required" in err
    assert out == ""


def test_a_refused_upload_exits_2_with_the_apis_error(csv_file: Path) -> None:
    # Given
    api = FakeApi(
        MIXED_OUTCOMES, upload_answer=_error(413, "payload_too_large", "the body is larger than 10 bytes")
    )

    # When
    code, _, err = run_upload(csv_file, api)

    # Then: a refusal is final: not sent again
    assert code == cli_upload.EXIT_ERROR
    assert "413 payload_too_large: the body is larger than 10 bytes" in err
    assert len(api.uploads) == 1


def test_a_database_outage_while_polling_is_waited_out(csv_file: Path) -> None:
    # Given: the first polls are answered 503 with Retry-After
    api = FakeApi(MIXED_OUTCOMES, unavailable_polls=2)

    # When
    code, out, _ = run_upload(csv_file, api)

    # Then
    assert code == cli_upload.EXIT_REJECTED_RECORDS
    assert "batch b-1: completed" in out


def test_a_batch_that_does_not_complete_in_time_exits_2(csv_file: Path) -> None:
    # Given: a batch that needs many polls
    api = FakeApi(MIXED_OUTCOMES, polls_to_finish=1000)

    # When
    code, out, err = run_upload(csv_file, api, timeout=0, poll_seconds=0.01)

    # Then
    assert code == cli_upload.EXIT_ERROR
    assert "did not complete within 0 s" in err
    assert out == ""


#: What the API accepts as an ``Idempotency-Key``: 1 to 255 visible ASCII characters.
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _unavailable(retry_after: str | None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"code": "queue_unavailable", "message": "the queue is unavailable"}}
    return httpx.Response(503, headers=headers, json=body)


def test_each_run_sends_its_upload_with_an_idempotency_key_of_its_own(csv_file: Path) -> None:
    # Given the same file uploaded by two runs
    first, second = FakeApi(MIXED_OUTCOMES), FakeApi(MIXED_OUTCOMES)

    # When
    run_upload(csv_file, first)
    run_upload(csv_file, second)

    # Then: each run sent one key the API takes, and not the same one: a second run is a second upload
    [(first_key, _)], [(second_key, _)] = first.uploads, second.uploads
    assert first_key is not None and VALID_KEY.fullmatch(first_key)
    assert second_key is not None and VALID_KEY.fullmatch(second_key)
    assert first_key != second_key


@pytest.mark.parametrize(
    ("failures", "waits"),
    [
        # Kafka away: the API says when to come back (capped, so that a long Retry-After does not stall)
        ([_unavailable("2"), _unavailable("30")], [2.0, cli_upload.MAX_RETRY_WAIT_SECONDS]),
        # the answer lost after the whole body was sent; then that first attempt still in flight
        (
            [
                httpx.ReadError("connection reset"),
                httpx.Response(
                    409,
                    headers={"Retry-After": "1"},
                    json={"error": {"code": "idempotency_key_in_flight", "message": "in flight"}},
                ),
            ],
            [0.5, 1.0],
        ),
        # a proxy before the API that names no wait: the wait doubles
        ([httpx.Response(502), httpx.Response(504)], [0.5, 1.0]),
    ],
    ids=["503", "lost-answer-then-409", "gateway"],
)
def test_an_upload_that_was_not_accepted_is_sent_again_whole_with_the_same_key(
    csv_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    failures: list[httpx.Response | Exception],
    waits: list[float],
) -> None:
    # Given an API that takes the upload at the third attempt
    waited: list[float] = []
    monkeypatch.setattr(cli_upload, "_pause", waited.append)
    api = FakeApi(MIXED_OUTCOMES, upload_answers=failures)

    # When
    code, out, err = run_upload(csv_file, api)

    # Then: three attempts, each the whole file under one and the same key, so the API can tell them
    # apart from a new upload; and the batch was followed to its end
    assert [body for _, body in api.uploads] == [csv_file.read_bytes()] * 3
    keys = {key for key, _ in api.uploads}
    assert len(keys) == 1 and None not in keys
    assert waited == waits
    assert err.count("sending again in") == 2
    assert "batch b-1: completed" in out
    assert code == cli_upload.EXIT_REJECTED_RECORDS


def test_a_retry_answered_with_the_first_attempts_batch_says_so(
    csv_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a first attempt the API took, but whose answer was lost
    monkeypatch.setattr(cli_upload, "_pause", lambda seconds: None)
    replay = httpx.Response(
        202, headers={"Idempotent-Replayed": "true"}, json={"batch_id": "b-1", "count": 4}
    )
    api = FakeApi(MIXED_OUTCOMES, upload_answers=[httpx.ReadError("connection reset"), replay])

    # When
    code, out, err = run_upload(csv_file, api)

    # Then
    assert "accepted 4 records as batch b-1 (an earlier attempt had been accepted)" in err
    assert "batch b-1: completed" in out
    assert code == cli_upload.EXIT_REJECTED_RECORDS


def test_a_key_used_for_another_file_is_refused_without_a_retry(csv_file: Path) -> None:
    # Given an API that remembers the key with another body
    reused = _error(422, "idempotency_key_reused", "this key was used with another body")
    api = FakeApi(MIXED_OUTCOMES, upload_answer=reused)

    # When
    code, _, err = run_upload(csv_file, api, key="k-1")

    # Then: the key given is the key sent, and the refusal is final
    assert api.uploads == [("k-1", csv_file.read_bytes())]
    assert "422 idempotency_key_reused" in err
    assert code == cli_upload.EXIT_ERROR


def test_an_upload_given_up_on_names_its_key_and_a_run_with_it_sends_it(
    csv_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API that answers 503 to the first run's every attempt
    monkeypatch.setattr(cli_upload, "_pause", lambda seconds: None)
    down = FakeApi(MIXED_OUTCOMES, upload_answer=_unavailable("1"))
    code, _, err = run_upload(csv_file, down, retries=2)
    assert code == cli_upload.EXIT_ERROR and len(down.uploads) == 3
    key = down.uploads[0][0]
    assert f"(attempts: 3; to try again as the same upload: --key {key})" in err

    # When the operator runs it again with that key
    up = FakeApi(MIXED_OUTCOMES)
    code, out, _ = run_upload(csv_file, up, key=key)

    # Then the API is sent the first run's key
    assert [k for k, _ in up.uploads] == [key]
    assert code == cli_upload.EXIT_REJECTED_RECORDS and "batch b-1: completed" in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_line_exits_2_when_the_api_cannot_be_reached(
    csv_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: nothing listens on the port
    url = f"http://127.0.0.1:{_closed_port()}"
    waits: list[float] = []
    monkeypatch.setattr(cli_upload, "_pause", waits.append)

    # When
    code = main(["upload", str(csv_file), "--url", url, "--retries", "2", "--key", "run-7"])

    # Then: tried three times, waiting longer each time, then gave up naming the key to try again with
    assert code == cli_upload.EXIT_ERROR
    err = capsys.readouterr().err
    assert "the upload failed: ConnectError" in err
    assert waits == [0.5, 1.0]
    assert "(attempts: 3; to try again as the same upload: --key run-7)" in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # When
    code = main(["upload", str(tmp_path / "nope.csv"), "--url", "http://127.0.0.1:9"])

    # Then
    assert code == cli_upload.EXIT_ERROR
    assert "no such file" in capsys.readouterr().err


def test_python_dash_m_pipeline_lists_the_upload_command() -> None:
    # When
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "upload", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then
    assert result.returncode == 0, result.stderr
    assert "--url" in result.stdout and "--token" in result.stdout
    assert "--key" in result.stdout and "--retries" in result.stdout


def test_the_progress_bar_floors_so_that_100_percent_means_all() -> None:
    # Given
    stream = io.StringIO()
    bar = cli_upload.ProgressBar("x", 1000, stream=stream, describe=lambda d, t: f"{d}/{t}")

    # When
    bar.update(999)
    almost = bar.line()
    bar.update(1000)
    done = bar.line()

    # Then
    assert " 99 %" in almost
    assert "100 %" in done and "#" * cli_upload.ProgressBar.WIDTH in done


def test_the_summary_names_how_many_rows_it_left_out() -> None:
    # Given
    report = {
        "batch_id": "b-9",
        "state": "completed",
        "count": 30,
        "counts": {"queued": 0, "stored": 10, "duplicate": 0, "invalid": 20, "failed": 0},
        "items": [
            {"row": r, "status": "invalid", "errors": [{"field": "age", "message": "required field"}]}
            for r in range(1, 21)
        ],
    }
    out = io.StringIO()

    # When
    cli_upload.print_summary(report, out=out, shown_rows=3)

    # Then
    text = out.getvalue()
    assert "first 3 of 20 invalid or failed rows" in text
    assert text.count("required field") == 3
    assert "... and 17 more" in text
    assert json.dumps(report)  # the report stays plain data
