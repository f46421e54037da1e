"""The operator tools against the real system: the page in headless Chromium, and the upload CLI.

``live_server`` runs the stack as the Procfile does: ``uvicorn`` serving ``web.app`` (with the page's
routes) and a ``dramatiq pipeline`` worker, on the real Kafka (topics of their own) and a PostgreSQL
database of their own, with ``API_TOKEN`` set so that the token path is exercised too.

Chromium is Debian's (``apt-get install chromium``) driven by Playwright from PyPI; Playwright's own browser
download is never used (it cannot be fetched here).  The screenshot is saved as
``tests/artifacts/operator-page.png``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import in_ci
from tests.livestack import Stack, new_stack

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "operator-page.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long a test waits for a batch of a few hundred records to complete, in milliseconds.
BATCH_WAIT_MS = 180_000


# ======================================================================================================
# The live stack: the harness's (tests/livestack.py), with a token
# ======================================================================================================


class LiveServer(Stack):
    """A running web + worker, and what a test needs to talk to them and to their database."""

    @property
    def token(self) -> str:
        return self.env["API_TOKEN"]

    def outcome_counts(self, batch_id: str) -> dict[str, int]:
        """``{status: count}`` of a batch's submissions, as the database holds them."""
        rows = self.sql(
            "SELECT status, count(*) FROM submissions WHERE batch_id = %s GROUP BY status", batch_id
        )
        return {str(status): int(str(count)) for status, count in rows}


@pytest.fixture(scope="module")
def live_server(kafka_bootstrap_servers: str, database_url: str) -> Iterator[LiveServer]:
    """The real web (with the page) and one worker process, on a database and topics of their own."""
    secret = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_PARTITIONS": "2",
        "WORKER_METRICS_PORT": "0",
        "BATCH_CHUNK_SIZE": "50",
        "API_TOKEN": f"token-{secret}",
        "ID_SECRET": f"secret-{secret}",
    }
    server = new_stack(kafka_bootstrap_servers, database_url, kind="ui", env=env, stack_class=LiveServer)
    try:
        server.start()
        yield server
    finally:
        server.close(delete_topics=True)


# ======================================================================================================
# The browser
# ======================================================================================================


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium under Playwright (skipped locally, failed in CI, when either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install playwright; never `playwright install`)"
        pytest.fail(message) if in_ci() else pytest.skip(message)
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if in_ci() else pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


#: Rows of ``users_csv`` invalid for their age alone (rows 7 to 29): more than one page of the page's table.
EXTRA_INVALID = 23


def users_csv(tag: str, generated: int = 240) -> str:
    """A CSV with nested headers: valid rows, invalid ones (rows 2, 5, 7..29), a duplicate of row 1."""
    lines = [
        "name.firstName,name.lastName,age,email,address.city",
        f"Ada,Lovelace-{tag},36,ada@example.org,London",
        f"Alan,Turing-{tag},abc,not-an-address,Wilmslow",  # invalid: age and email
        f"Grace,Hopper-{tag},85,,Arlington",
        f"Ada,Lovelace-{tag},36,,Paris",  # duplicate of row 1 (name and age)
        f"Edsger,Dijkstra-{tag}",  # invalid: 2 columns, the header has 5
        f'"Quoted, Name",O\'Brien-{tag},15,,"Dublin, IE"',
    ]
    lines += [f"Old{i},Timer-{tag},{151 + i},,Nowhere" for i in range(EXTRA_INVALID)]  # invalid: age > 150
    lines += [f"User{i},Generated-{tag},{i % 90 + 1},,City {i}" for i in range(generated)]
    return "\r\n".join(lines) + "\r\n"


#: What ``users_csv`` yields: 1 duplicate, 25 invalid; the rest stored.
EXPECTED_INVALID = 2 + EXTRA_INVALID
#: Rows per page of the page's table of invalid rows (``PAGE_SIZE`` in app.js).
PAGE_SIZE = 20
EXPECTED_DUPLICATE = 1


def test_a_csv_uploaded_through_the_page_is_followed_to_100_percent_and_its_counts_match_the_database(
    live_server: LiveServer, browser: object, tmp_path: Path
) -> None:
    # Given: a CSV of users, and the page open in Chromium
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "users.csv"
    path.write_text(users_csv(tag), encoding="utf-8")
    records = users_csv(tag).count("\r\n") - 1
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(live_server.url + "/")

    # When: the operator enters the token the page asks for, and uploads the file
    page.wait_for_selector("#auth:not([hidden])")
    page.fill("#token", live_server.token)
    page.click("#auth-form button[type=submit]")
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    page.wait_for_selector('#batch-progress-text[data-percent="100"]', timeout=BATCH_WAIT_MS)

    # Then: the bar is full, the state completed, and the counts shown are the database's
    batch_id = page.text_content("#batch-id") or ""
    shown = {
        status: int((page.text_content(f"#count-{status}") or "").replace(",", ""))
        for status in ("queued", "stored", "duplicate", "invalid", "failed")
    }
    in_database = live_server.outcome_counts(batch_id)
    assert page.text_content("#batch-state") == "completed"
    assert page.eval_on_selector("#batch-bar", "bar => bar.value === bar.max")
    assert f"{records:,} / {records:,} records (100 %)" == page.text_content("#batch-progress-text")
    assert shown["queued"] == 0
    assert {status: count for status, count in shown.items() if status != "queued" and count} == in_database
    assert sum(in_database.values()) == records
    assert in_database.get("invalid") == EXPECTED_INVALID
    assert in_database.get("duplicate") == EXPECTED_DUPLICATE

    # and the invalid rows are listed with their errors, by row number, a page at a time
    rows = page.locator("#items tbody tr")
    assert rows.count() == PAGE_SIZE
    assert rows.nth(0).locator("td").first.text_content() == "2"
    assert "age" in (rows.nth(0).text_content() or "") and "email" in (rows.nth(0).text_content() or "")
    assert rows.nth(1).locator("td").first.text_content() == "5"
    page.click("#items-next")
    page.wait_for_selector("#items-page:text('Page 2')")
    page.wait_for_function(
        f"document.querySelectorAll('#items tbody tr').length === {EXPECTED_INVALID - PAGE_SIZE}"
    )
    assert rows.nth(0).locator("td").first.text_content() == str(29 - (EXPECTED_INVALID - PAGE_SIZE) + 1)
    assert page.is_disabled("#items-next")
    page.click("#items-prev")
    page.wait_for_function(f"document.querySelectorAll('#items tbody tr').length === {PAGE_SIZE}")

    # and the age chart, the newest users and the health badges show the system as it is
    stored_users = int(str(live_server.sql("SELECT count(*) FROM users")[0][0]))
    page.wait_for_function(f"document.querySelector('#ages').dataset.total === '{stored_users}'")
    assert page.locator("#ages tbody tr").count() == 4
    newest_id = live_server.sql("SELECT max(id) FROM users")[0][0]
    page.wait_for_function(f"document.querySelector('#newest tbody td')?.textContent === '{newest_id}'")
    assert f"Generated-{tag}" in (page.text_content("#newest tbody tr") or "")
    page.wait_for_function("document.querySelector('#health-kafka').textContent === 'up'")
    assert page.text_content("#health-database") == "up"
    page.wait_for_function("/^\\d+ waiting$/.test(document.querySelector('#lag').textContent)")
    assert (page.text_content("#failed-messages") or "").isdigit()
    assert page.text_content("#replicas") == "in sync"  # (one Kafka node: always)
    assert script_errors == []
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # and a reload (the batch id is in the address) shows the batch again, the token kept for the tab
    page.reload()
    page.wait_for_selector('#batch-progress-text[data-percent="100"]')
    assert page.text_content("#batch-id") == batch_id
    assert page.is_hidden("#auth")
    assert script_errors == []
    page.close()


def test_the_upload_cli_follows_a_batch_to_the_end_and_reports_what_the_database_holds(
    live_server: LiveServer, tmp_path: Path
) -> None:
    # Given
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "users.csv"
    path.write_text(users_csv(tag, generated=120), encoding="utf-8")
    records = users_csv(tag, generated=120).count("\r\n") - 1

    # When
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "upload",
            str(path),
            "--url",
            live_server.url,
            "--token",
            live_server.token,
        ],
        cwd=ROOT,
        env=live_server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Then: exit 1 (there are invalid rows), both bars at their end, the summary is the database's
    assert result.returncode == 1, result.stderr
    assert f"{records} / {records} records" in result.stderr and "100 %" in result.stderr
    assert "HTTP Request" not in result.stderr  # httpx's line per request would bury the bars
    batch_id = result.stdout.split()[1].rstrip(":")
    in_database = live_server.outcome_counts(batch_id)
    for status in ("stored", "duplicate", "invalid", "failed"):
        assert f"  {status:<10} {in_database.get(status, 0):>9}" in result.stdout
    assert "row 2 (invalid): " in result.stdout and "row 5 (invalid): " in result.stdout


#: What ``crypto.randomUUID()`` makes, the page's key for a chosen file.
UUID_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_the_page_sends_a_file_again_under_its_key_and_a_file_chosen_again_under_a_new_one(
    live_server: LiveServer, browser: object, tmp_path: Path
) -> None:
    # Given the page with the token, a file chosen, and a first upload answered 503 before it reaches the
    # API (as while Kafka is away); every upload's Idempotency-Key is noted on its way out
    path = tmp_path / "users.csv"
    path.write_text(users_csv(uuid.uuid4().hex[:8], generated=5), encoding="utf-8")
    page = browser.new_page()  # type: ignore[attr-defined]
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    keys: list[str | None] = []

    def first_one_unavailable(route: Any, request: Any) -> None:
        keys.append(request.all_headers().get("idempotency-key"))
        if len(keys) > 1:
            route.continue_()
            return
        body = {"error": {"code": "queue_unavailable", "message": "the queue is unavailable"}}
        route.fulfill(status=503, headers={"Retry-After": "1"}, json=body)

    page.route("**/api/users", first_one_unavailable)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#auth:not([hidden])")
    page.fill("#token", live_server.token)
    page.click("#auth-form button[type=submit]")
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    page.wait_for_selector("#upload-status[data-kind=error]")
    assert "Press Upload again" in (page.text_content("#upload-status") or "")

    # When the operator presses Upload again, then once more, then chooses the file again and uploads it
    page.click("#upload-button")
    page.wait_for_selector("#upload-status[data-kind=ok]")
    first_batch = page.text_content("#batch-id")
    assert keys[1] == keys[0], "the upload pressed again was sent under another key"
    page.click("#upload-button")
    page.wait_for_selector("#upload-status:has-text('an earlier attempt had been accepted')")
    replayed_batch = page.text_content("#batch-id")
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    page.wait_for_function(f"document.querySelector('#batch-id').textContent !== '{first_batch}'")

    # Then the three uploads of the first choice carried one key, answered with one batch; the file
    # chosen again is a new upload, under a new key
    assert len(keys) == 4
    assert keys[0] is not None and UUID_KEY.fullmatch(keys[0])
    assert keys[1] == keys[2] == keys[0]
    assert replayed_batch == first_batch
    assert keys[3] is not None and UUID_KEY.fullmatch(keys[3]) and keys[3] != keys[0]
    assert script_errors == []
    page.close()


# ======================================================================================================
# The operator's view: recent batches, invalid rows as a file, throughput, failed messages
# ======================================================================================================


def open_with_token(browser: object, live_server: LiveServer) -> tuple[Any, list[str]]:
    """The page in a new tab, the token entered; and the list its script errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)  # type: ignore[attr-defined]
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(live_server.url + "/")
    page.wait_for_selector("#auth:not([hidden])")
    page.fill("#token", live_server.token)
    page.click("#auth-form button[type=submit]")
    return page, script_errors


def upload_on_page(page: Any, path: Path) -> str:
    """Upload ``path`` with the page's form; the batch id it was accepted as."""
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    page.wait_for_selector("#upload-status[data-kind=ok]")
    return page.text_content("#batch-id") or ""


def corrected(exported: str) -> str:
    """The invalid rows of ``users_csv`` set right (an age, no email, every column), markers kept."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(exported)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), restval="", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: v or "" for k, v in row.items() if k is not None}, "age": "40", "email": ""})
    return out.getvalue()


def test_a_batch_uploaded_on_the_page_is_listed_fills_its_bar_and_its_invalid_rows_corrected_upload_clean(
    live_server: LiveServer, browser: object, tmp_path: Path
) -> None:
    # Given the page with the token, and a CSV of users (25 invalid rows, 1 duplicate)
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / f"users-{tag}.csv"
    path.write_text(users_csv(tag, generated=60), encoding="utf-8")
    records = users_csv(tag, generated=60).count("\r\n") - 1
    page, script_errors = open_with_token(browser, live_server)

    page.evaluate("window.sameDocument = true")  # a reload would drop it

    # When it is uploaded on the page
    batch_id = upload_on_page(page, path)

    # Then the batch is in the list of recent batches, under its file's name, and its bar fills
    listed = f'#batches tr[data-batch-id="{batch_id}"]'
    page.wait_for_selector(listed, timeout=BATCH_WAIT_MS)
    assert path.name in (page.text_content(listed) or "")
    page.wait_for_selector(f'{listed} .stack[data-percent="100"]', timeout=BATCH_WAIT_MS)
    page.wait_for_selector(f'{listed}[data-state="completed"]')
    assert page.evaluate("window.sameDocument === true")
    in_database = live_server.outcome_counts(batch_id)
    stored = records - EXPECTED_INVALID - EXPECTED_DUPLICATE
    assert in_database == {"stored": stored, "invalid": EXPECTED_INVALID, "duplicate": EXPECTED_DUPLICATE}
    shown = page.text_content(f"{listed} .progress-col") or ""
    assert f"{EXPECTED_INVALID} invalid" in shown and "1 duplicate" in shown
    widths = page.eval_on_selector_all(
        f"{listed} .segment", "nodes => nodes.map(n => [n.dataset.status, parseFloat(n.style.width)])"
    )
    assert dict(widths)["invalid"] == pytest.approx(100 * EXPECTED_INVALID / records, abs=0.01)
    assert sum(width for _, width in widths) == pytest.approx(100, abs=0.01)

    # When its invalid rows are downloaded from the list
    with page.expect_download() as download:
        page.click(f"{listed} a.invalid-link")
    exported = Path(download.value.path()).read_text(encoding="utf-8")

    # Then the file holds every invalid row, in the uploader's columns, with its row number and errors
    lines = exported.splitlines()
    assert lines[0].startswith("_row,_errors,") and "name.firstName" in lines[0]
    assert len(lines) == 1 + EXPECTED_INVALID
    assert [line.split(",")[0] for line in lines[1:3]] == ["2", "5"]

    # When the file, corrected, is uploaded as it is
    fixed = tmp_path / f"fixed-{tag}.csv"
    fixed.write_text(corrected(exported), encoding="utf-8")
    fixed_batch = upload_on_page(page, fixed)

    # Then it is a clean batch: every row stored, none invalid
    fixed_row = f'#batches tr[data-batch-id="{fixed_batch}"]'
    page.wait_for_selector(f'{fixed_row} .stack[data-percent="100"]', timeout=BATCH_WAIT_MS)
    assert live_server.outcome_counts(fixed_batch) == {"stored": EXPECTED_INVALID}
    assert page.locator(f"{fixed_row} a.invalid-link").count() == 0

    # and the throughput chart counts what the database says reached an outcome in the last hour
    [(last_hour,)] = live_server.sql(
        "SELECT count(*) FROM submissions "
        "WHERE updated_at >= date_trunc('minute', now()) - interval '59 minutes'"
    )
    page.wait_for_function(
        f"Number(document.querySelector('#throughput-chart').dataset.total) >= {last_hour}", timeout=30_000
    )
    assert page.locator("#throughput-chart rect.bar-stored").count() >= 1
    assert re.fullmatch(r"[\d,]+ waiting", page.text_content("#throughput-lag") or "")
    assert script_errors == []
    page.screenshot(path=str(ARTIFACTS / "operator-page-batches.png"), full_page=True)
    page.close()


def test_a_failed_message_is_listed_on_the_page_and_replayed_from_it(
    live_server: LiveServer, browser: object, kafka_bootstrap_servers: str
) -> None:
    # Given a submission marked failed, and its message on the failed-message topic (as a worker leaves
    # them when the database stays away past the retries)
    import dramatiq

    from pipeline.contract import PERSIST_USERS, QUEUE
    from pipeline.validation import validate_record
    from tests.broker.conftest import make_kafka_broker

    tag = uuid.uuid4().hex[:8]
    submission_id = f"replayed-{tag}"
    reason = f"OperationalError: the database went away ({tag})"
    with psycopg2.connect(live_server.database_url) as connection, connection.cursor() as cursor:
        errors_json = json.dumps([{"field": "_system", "message": reason}])
        cursor.execute(
            "INSERT INTO submissions (id, status, errors) VALUES (%s, 'failed', %s)",
            (submission_id, errors_json),
        )
    user, errors = validate_record({"name": f"Replayed {tag}", "age": 33}, source="json")
    result = {"id": submission_id, "row": None, "batch_id": None, "user": user, "errors": errors}
    message = dramatiq.Message(
        queue_name=QUEUE, actor_name=PERSIST_USERS, args=([result],), kwargs={}, options={"retries": 5}
    )
    broker = make_kafka_broker(kafka_bootstrap_servers, live_server.topic_prefix)
    try:
        broker.declare_queue(QUEUE)
        broker.dead_letter_raw(QUEUE, message.encode(), reason, origin="users:0:1")
    finally:
        broker.close()
    page, script_errors = open_with_token(browser, live_server)
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)

    # When the operator lists the failed messages and replays them
    page.wait_for_function(
        f"document.querySelector('#failed tbody')?.textContent.includes('{tag}')", timeout=30_000
    )
    listed = int(page.get_attribute("#failed-card", "data-listed") or "0")
    row_text = page.text_content("#failed tbody") or ""
    page.click("#failed-replay")
    page.wait_for_selector("#failed-status[data-kind=ok]")

    # Then they asked first, replayed exactly what was listed, and the record got its real outcome
    assert "persist_users" in row_text and reason in row_text
    assert len(questions) == 1 and f"Replay the {listed} failed message" in questions[0]
    assert (page.text_content("#failed-status") or "").startswith(f"Replayed {listed}")
    for _ in range(120):
        [(status,)] = live_server.sql("SELECT status FROM submissions WHERE id = %s", submission_id)
        if status == "stored":
            break
        page.wait_for_timeout(500)
    assert status == "stored"
    page.wait_for_function("document.querySelector('#failed-card').dataset.listed === '0'", timeout=30_000)
    assert script_errors == []
    page.close()


def test_a_batch_still_running_is_listed_with_its_size_unknown_and_fills_once_registered(
    live_server: LiveServer, browser: object
) -> None:
    # Given the page open, and the first outcomes of a batch whose register_batch no worker has taken yet
    batch_id = f"inflight{uuid.uuid4().hex}"
    page, script_errors = open_with_token(browser, live_server)
    page.evaluate("window.sameDocument = true")
    with psycopg2.connect(live_server.database_url) as connection, connection.cursor() as cursor:
        for row, status in enumerate(["stored", "invalid", "stored"], 1):
            insert = (
                "INSERT INTO submissions (id, batch_id, row, status, errors) VALUES (%s, %s, %s, %s, '[]')"
            )
            cursor.execute(insert, (f"{batch_id}.{row}", batch_id, row, status))
    connection.close()
    listed = f'#batches tr[data-batch-id="{batch_id}"]'

    # When the list refreshes by itself
    page.wait_for_selector(f"{listed} .stack.unknown", timeout=30_000)

    # Then it is there, processing, its size unknown, its outcomes counted
    assert page.get_attribute(listed, "data-state") == "processing"
    assert page.text_content(f"{listed} td:nth-child(3)") == "…"
    assert "registering · 2 stored, 1 invalid" in (page.text_content(f"{listed} .progress-col") or "")

    # When a worker registers it with its last record's outcome
    with psycopg2.connect(live_server.database_url) as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO batches (id, count, source) VALUES (%s, 4, 'csv')", (batch_id,))
        insert = (
            "INSERT INTO submissions (id, batch_id, row, status, errors) VALUES (%s, %s, 4, 'stored', '[]')"
        )
        cursor.execute(insert, (f"{batch_id}.4", batch_id))
    connection.close()

    # Then the same row fills, without the page being reloaded
    page.wait_for_selector(f'{listed} .stack[data-percent="100"]', timeout=30_000)
    assert page.get_attribute(listed, "data-state") == "completed"
    assert page.locator(listed).count() == 1
    assert page.evaluate("window.sameDocument === true")
    assert script_errors == []
    page.close()


def test_an_ndjson_batch_s_invalid_records_download_as_ndjson_and_corrected_upload_clean(
    live_server: LiveServer, browser: object, tmp_path: Path
) -> None:
    # Given an NDJSON batch with two invalid records, uploaded on the page
    tag = uuid.uuid4().hex[:8]
    records = [
        {"name": f"Nd Valid {tag}", "age": 30},
        {"name": f"Nd Old {tag}", "age": 200, "phoneNumber": "+1 415 555 0100"},
        {"name": f"Nd Valid2 {tag}", "age": 31},
        {"name": f"Nd NoAge {tag}", "email": "=cmd|' /C calc'!A0"},
    ]
    path = tmp_path / f"users-{tag}.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    page, script_errors = open_with_token(browser, live_server)
    batch_id = upload_on_page(page, path)
    listed = f'#batches tr[data-batch-id="{batch_id}"]'
    page.wait_for_selector(f'{listed} .stack[data-percent="100"]', timeout=BATCH_WAIT_MS)

    # When its invalid records are downloaded from the list
    assert page.text_content(f"{listed} a.invalid-link") == "invalid.ndjson"
    with page.expect_download() as download:
        page.click(f"{listed} a.invalid-link")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()

    # Then each is the record as sent, with its row and errors
    exported = [json.loads(line) for line in lines]
    assert [record["_row"] for record in exported] == [2, 4]
    assert exported[0]["phoneNumber"] == "+1 415 555 0100" and exported[0]["_errors"]
    assert exported[1]["email"] == records[3]["email"]

    # When they are corrected and uploaded again as they are
    fixed = tmp_path / f"fixed-{tag}.ndjson"
    fixed.write_text(
        "".join(json.dumps({**r, "age": 40, "email": None}) + "\n" for r in exported), encoding="utf-8"
    )
    fixed_batch = upload_on_page(page, fixed)

    # Then both are stored
    page.wait_for_selector(f'#batches tr[data-batch-id="{fixed_batch}"] .stack[data-percent="100"]')
    assert live_server.outcome_counts(fixed_batch) == {"stored": 2}
    stored = live_server.sql("SELECT name, age FROM users WHERE name LIKE %s ORDER BY name", f"Nd % {tag}")
    assert stored == [
        (f"Nd NoAge {tag}", 40),
        (f"Nd Old {tag}", 40),
        (f"Nd Valid {tag}", 30),
        (f"Nd Valid2 {tag}", 31),
    ]
    assert script_errors == []
    page.close()
