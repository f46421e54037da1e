"""``GET /api/reports/throughput`` on the real PostgreSQL: outcomes per interval over the last hour, from the
per-minute counters that the triggers of migration 0006 keep."""

from __future__ import annotations

import datetime
import itertools

import pytest

from tests.web_support import assert_error

pytestmark = pytest.mark.postgres


def outcomes_at(sql, statuses: list[str], at: str, prefix: str) -> None:
    """Submissions reaching ``statuses`` at the SQL time ``at``, in one statement (as a worker writes)."""
    values = ", ".join(["(%s, %s, '[]', " + at + ", " + at + ")"] * len(statuses))
    params = [value for n, status in enumerate(statuses) for value in (f"{prefix}{n}", status)]
    sql(f"INSERT INTO submissions (id, status, errors, created_at, updated_at) VALUES {values}", *params)


def test_outcomes_are_counted_in_the_minute_they_happened_over_the_last_hour_only(sql, web_client):
    # Given outcomes now, 30 minutes ago, and 3 hours ago (out of the window)
    outcomes_at(sql, ["stored", "stored", "invalid", "duplicate"], "now()", "a")
    outcomes_at(sql, ["stored", "failed"], "now() - interval '30 minutes'", "b")
    outcomes_at(sql, ["stored"] * 5, "now() - interval '3 hours'", "c")
    # When
    response = web_client.get("/api/reports/throughput")
    # Then
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["interval_seconds"] == 60
    assert body["totals"] == {"stored": 3, "duplicate": 1, "invalid": 1, "failed": 1}
    series = body["series"]
    assert len(series) in (60, 61)  # every minute of the hour, the current one included
    assert series[-1]["stored"] + series[-2]["stored"] >= 2  # (now: this minute, or the last at a turn)
    starts = [datetime.datetime.fromisoformat(point["start"]) for point in series]
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    [(thirty_ago,)] = sql("SELECT date_trunc('minute', now() - interval '30 minutes')")
    [point] = [p for p in series if datetime.datetime.fromisoformat(p["start"]) == thirty_ago]
    assert (point["stored"], point["failed"]) == (1, 1)
    assert body["lag"] is None  # the StubBroker cannot tell


def test_a_replayed_failure_counts_again_under_its_new_outcome(sql, web_client):
    # Given a failed submission, replayed later as stored (the workers' upsert)
    outcomes_at(sql, ["failed"], "now() - interval '10 minutes'", "r")
    sql(
        "INSERT INTO submissions (id, status, errors) VALUES ('r0', 'stored', '[]') "
        "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, updated_at = now() "
        "WHERE submissions.status = 'failed'"
    )
    # When
    totals = web_client.get("/api/reports/throughput").json()["totals"]
    # Then
    assert totals == {"stored": 1, "duplicate": 0, "invalid": 0, "failed": 1}


def test_larger_intervals_sum_the_same_outcomes_into_fewer_buckets(sql, web_client):
    # Given
    outcomes_at(sql, ["stored"] * 3, "now() - interval '20 minutes'", "s")
    outcomes_at(sql, ["invalid"] * 2, "now() - interval '50 minutes'", "t")
    # When
    by_minute = web_client.get("/api/reports/throughput").json()
    by_five = web_client.get("/api/reports/throughput?interval=300").json()
    by_hour = web_client.get("/api/reports/throughput?interval=3600").json()
    # Then
    assert by_five["totals"] == by_minute["totals"] == by_hour["totals"]
    assert by_five["totals"]["stored"] == 3 and by_five["totals"]["invalid"] == 2
    assert 12 <= len(by_five["series"]) <= 13 and 1 <= len(by_hour["series"]) <= 2
    for point in by_five["series"]:
        assert datetime.datetime.fromisoformat(point["start"]).minute % 5 == 0


def test_the_ring_of_minutes_keeps_at_most_two_hours_whatever_is_written(sql):
    # Given outcomes every 10 minutes over four hours
    for minutes in range(0, 240, 10):
        outcomes_at(sql, ["stored"], f"now() - interval '{minutes} minutes'", f"m{minutes}-")
    # Then
    [(rows, oldest)] = sql("SELECT count(*), min(minute) FROM outcome_minutes")
    [(now,)] = sql("SELECT now()")
    assert rows <= 12 and now - oldest < datetime.timedelta(hours=2)


@pytest.mark.parametrize("interval", ["0", "59", "61", "90", "3660", "7200", "-60", "1e2", "x", "9" * 30])
def test_an_interval_that_is_not_whole_minutes_up_to_an_hour_is_400(sql, web_client, interval):
    response = web_client.get("/api/reports/throughput", params={"interval": interval})
    assert_error(response, 400, "invalid_parameter")
