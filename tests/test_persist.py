"""Dedupe and persist on the real PostgreSQL: outcomes, idempotence, the unique key and its migration, and
the age report."""

from __future__ import annotations

import threading

import peewee
import pytest

from pipeline import migrations, settings
from pipeline.contract import OUTCOMES, Status
from pipeline.models import Submission
from pipeline.reports import age_distribution
from pipeline.validation import validate_record
from pipeline.worker import actors

persist_users = actors.persist_users

pytestmark = pytest.mark.postgres


def result(submission_id, data, *, batch_id=None, row=None, source="json"):
    """What ``validate_users`` hands to ``persist_users`` for one record."""
    user, errors = validate_record(data, source=source)
    return {"id": submission_id, "row": row, "batch_id": batch_id, "user": user, "errors": errors}


def chunk(batch_id, records, source="json"):
    return [
        result(f"{batch_id}.{n}", data, batch_id=batch_id, row=n, source=source)
        for n, data in enumerate(records, 1)
    ]


def outcomes(sql):
    """Every submission as ``{id: (status, user_id)}``."""
    return {i: (status, user_id) for i, status, user_id in sql("SELECT id, status, user_id FROM submissions")}


def user_ids(sql, name):
    return [row[0] for row in sql("SELECT id FROM users WHERE name = %s ORDER BY id", name)]


# --- outcomes ----------------------------------------------------------------------------------------------


def test_a_valid_user_is_stored_and_its_submission_points_at_it(sql):
    # When
    persist_users(
        [result("s1", {"name": " Ada  Lovelace ", "age": 36, "email": "ada@example.org", "x": [1]})]
    )
    # Then
    [(user_id, name, age, email, additional_info)] = sql(
        "SELECT id, name, age, email, additional_info FROM users"
    )
    assert (name, age, email, additional_info) == ("Ada Lovelace", 36, "ada@example.org", {"x": [1]})
    assert outcomes(sql) == {"s1": ("stored", user_id)}
    assert sql("SELECT errors FROM submissions") == [([],)]
    # ... and the submission is stamped once, created and updated at the same moment
    [(created_at, updated_at)] = sql("SELECT created_at, updated_at FROM submissions")
    assert created_at is not None and created_at == updated_at


def test_an_invalid_record_is_kept_with_every_error_and_no_user(sql):
    # When
    persist_users([result("s1", {"name": "", "age": "x", "email": "no"})])
    # Then
    assert sql("SELECT count(*) FROM users") == [(0,)]
    assert outcomes(sql) == {"s1": ("invalid", None)}
    [(errors,)] = sql("SELECT errors FROM submissions")
    assert [e["field"] for e in errors] == ["name", "age", "email"]


def test_a_batch_keeps_row_numbers_and_batch_id_for_every_outcome(sql):
    # When
    persist_users(chunk("b1", [{"name": "A", "age": 1}, {"name": "B"}, {"name": "A", "age": 1}]))
    # Then
    rows = sql("SELECT id, batch_id, row, status FROM submissions ORDER BY row")
    assert rows == [("b1.1", "b1", 1, "stored"), ("b1.2", "b1", 2, "invalid"), ("b1.3", "b1", 3, "duplicate")]


def test_within_a_chunk_the_first_of_identical_users_wins_and_the_others_point_at_it(sql):
    # Given three records with one key, the later two written differently but normalised alike
    records = [
        {"name": "Ann Lee", "age": 30},
        {"name": {"firstName": " Ann", "lastName": "Lee "}, "age": 30},
        {"name": "Ann   Lee", "age": 30, "email": "other@example.org"},
    ]
    # When
    persist_users(chunk("b1", records))
    # Then
    [winner] = user_ids(sql, "Ann Lee")
    assert outcomes(sql) == {
        "b1.1": ("stored", winner),
        "b1.2": ("duplicate", winner),
        "b1.3": ("duplicate", winner),
    }


def test_across_requests_a_later_identical_user_is_a_duplicate_of_the_stored_one(sql):
    # Given
    persist_users([result("first", {"name": "Bo", "age": 5})])
    # When
    persist_users([result("second", {"name": "Bo", "age": 5, "email": "bo@example.org"})])
    # Then
    [stored] = user_ids(sql, "Bo")
    assert outcomes(sql) == {"first": ("stored", stored), "second": ("duplicate", stored)}


def test_across_chunks_of_one_batch_duplicates_point_at_the_row_of_the_earlier_chunk(sql):
    # Given
    persist_users(chunk("b1", [{"name": "C", "age": 1}, {"name": "D", "age": 2}]))
    # When a later chunk repeats one user and adds another
    persist_users(
        [
            result("b1.3", {"name": "D", "age": 2}, batch_id="b1", row=3),
            result("b1.4", {"name": "E", "age": 3}, batch_id="b1", row=4),
        ]
    )
    # Then
    [d] = user_ids(sql, "D")
    [e] = user_ids(sql, "E")
    assert outcomes(sql)["b1.3"] == ("duplicate", d)
    assert outcomes(sql)["b1.4"] == ("stored", e)
    assert sql("SELECT count(*) FROM users") == [(3,)]


@pytest.mark.parametrize(
    "a, b, same",
    [
        ({"name": "Ada", "age": 36}, {"name": "Ada", "age": 37}, False),
        ({"name": "Ada", "age": 36}, {"name": "ada", "age": 36}, False),
        ({"name": "Ada", "age": 36, "email": "a@x.io"}, {"name": "Ada", "age": 36, "email": "b@x.io"}, True),
        ({"name": "Ada", "age": 36, "phoneNumber": "+1 415 555 0100"}, {"name": "Ada", "age": 36}, True),
    ],
)
def test_the_default_unique_key_is_name_and_age(sql, a, b, same):
    # When
    persist_users([result("a", a), result("b", b)])
    # Then
    statuses = sorted(status for status, _ in outcomes(sql).values())
    assert statuses == (["duplicate", "stored"] if same else ["stored", "stored"])


def test_an_address_keeps_the_fields_the_schema_does_not_know(sql):
    # Given a CSV row with the address columns of an ordinary export
    data = {
        "name": "Addy",
        "age": "30",
        "address": {"line1": "1 Rue X", "city": "Paris", "zip": "75001", "country": "FR", "note": ""},
    }
    # When
    persist_users([result("s1", data, source="csv")])
    # Then
    assert sql("SELECT address FROM users") == [(data["address"],)]
    assert outcomes(sql)["s1"][0] == "stored"


def test_names_that_look_like_sql_and_unicode_names_are_stored_literally(sql):
    # Given
    names = [
        "Robert'); DROP TABLE users;--",
        "Zoë Ångström",
        "李小龍",
        "🚀 Émoji 👩‍🚀",
        'O\'Brien "Bob" \\ %_',
    ]
    # When
    persist_users([result(f"s{i}", {"name": name, "age": 30}) for i, name in enumerate(names)])
    # Then
    assert sorted(row[0] for row in sql("SELECT name FROM users")) == sorted(names)


def test_a_large_chunk_is_stored_whole_despite_the_limit_of_parameters_per_statement(sql):
    # Given more rows than one INSERT can carry at 65,535 parameters
    records = [
        {"name": f"user {n}", "age": n % 150, "email": f"u{n}@example.org", "k": "v"} for n in range(12_000)
    ]
    # When
    counts = actors.persist_chunk(chunk("big", records))
    # Then
    assert counts["stored"] == 12_000
    assert sql("SELECT count(*), count(DISTINCT user_id) FROM submissions WHERE status = 'stored'") == [
        (12_000, 12_000)
    ]


# --- idempotence -------------------------------------------------------------------------------------------


def test_persisting_the_same_chunk_twice_changes_nothing(sql):
    # Given a chunk processed once
    results = chunk("b1", [{"name": "F", "age": 1}, {"name": "F", "age": 1}, {"name": "G"}])
    persist_users(results)
    before = (outcomes(sql), sql("SELECT id, name FROM users ORDER BY id"))
    # When it is delivered again
    persist_users(results)
    # Then stored stays stored (never becomes a duplicate of itself) and there is no second row
    assert (outcomes(sql), sql("SELECT id, name FROM users ORDER BY id")) == before
    assert sorted(status for status, _ in before[0].values()) == ["duplicate", "invalid", "stored"]


def test_a_redelivered_single_submission_stays_stored(sql):
    # Given
    persist_users([result("s1", {"name": "H", "age": 9})])
    # When
    persist_users([result("s1", {"name": "H", "age": 9})])
    # Then
    [h] = user_ids(sql, "H")
    assert outcomes(sql) == {"s1": ("stored", h)}


def test_a_failed_submission_is_replaced_by_its_real_outcome(sql):
    # Given a submission marked failed when its retries ran out
    reason = '[{"field": "_system", "message": "OperationalError: down"}]'
    sql("INSERT INTO submissions (id, status, errors) VALUES ('s1', 'failed', %s)", reason)
    # When its message is replayed and succeeds
    persist_users([result("s1", {"name": "I", "age": 9})])
    # Then
    [i] = user_ids(sql, "I")
    assert outcomes(sql) == {"s1": ("stored", i)}
    assert sql("SELECT errors FROM submissions") == [([],)]


def test_only_failed_outcomes_are_ever_overwritten(sql):
    # Given an invalid outcome
    persist_users([result("s1", {"name": "J"})])
    # When the same id arrives again with valid data (it cannot, but nothing must rewrite an outcome)
    persist_users([result("s1", {"name": "J", "age": 1})])
    # Then
    assert outcomes(sql) == {"s1": ("invalid", None)}
    assert sql("SELECT count(*) FROM users") == [(0,)]


def test_two_workers_storing_the_same_user_at_once_store_it_once(sql):
    # Given two chunks with the same user, persisted by two threads at the same moment
    barrier = threading.Barrier(2)
    problems = []

    def persist(batch_id):
        try:
            barrier.wait()
            persist_users(chunk(batch_id, [{"name": "Race", "age": 1}]))
        except Exception as error:  # reported below
            problems.append(error)

    threads = [threading.Thread(target=persist, args=(b,)) for b in ("b1", "b2")]
    # When
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one is stored and the other points at it
    assert problems == []
    [race] = user_ids(sql, "Race")
    assert sorted(outcomes(sql).values()) == [("duplicate", race), ("stored", race)]


# --- migrations and the unique key -------------------------------------------------------------------------


def unique_index_columns(sql):
    [(definition,)] = sql("SELECT indexdef FROM pg_indexes WHERE indexname = %s", migrations.UNIQUE_INDEX)
    return definition


def test_migrating_again_applies_nothing_and_every_migration_is_recorded(sql):
    # When
    applied = migrations.migrate(settings.UNIQUE_FIELDS)
    # Then
    assert applied == []
    recorded = [row[0] for row in sql("SELECT name FROM schema_migrations ORDER BY name")]
    assert recorded == [name for name, _ in migrations.MIGRATIONS]


def test_two_processes_migrating_at_once_take_turns(sql):
    # Given two threads (two connections) migrating together
    barrier = threading.Barrier(2)
    problems = []

    def run():
        try:
            barrier.wait()
            migrations.migrate(settings.UNIQUE_FIELDS)
        except Exception as error:  # reported below
            problems.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    # When
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then neither failed
    assert problems == []


def test_the_tables_have_the_contract_s_time_zones_and_defaults(sql):
    # When a row is written by something other than Peewee
    sql("INSERT INTO users (name, age) VALUES ('raw', 1)")
    sql("INSERT INTO submissions (id, status) VALUES ('raw', 'invalid')")
    # Then every time is a timestamptz and the JSON columns default to empty
    types = sql(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE column_name IN ('created_at', 'updated_at') AND table_schema = 'public' "
        "AND table_name IN ('users', 'submissions', 'batches')"
    )
    assert {t for _, _, t in types} == {"timestamp with time zone"} and len(types) == 4
    assert sql("SELECT additional_info, created_at IS NOT NULL FROM users") == [({}, True)]
    assert sql("SELECT errors, created_at IS NOT NULL, updated_at IS NOT NULL FROM submissions") == [
        ([], True, True)
    ]


def test_the_unique_index_is_on_the_configured_fields(sql):
    definition = unique_index_columns(sql)
    assert "UNIQUE" in definition and "(name, age)" in definition


def test_a_submission_status_is_one_of_the_outcomes(sql, clean_database):
    # Given every outcome stored, through the model
    with clean_database.connection_context():
        for status in OUTCOMES:
            Submission.create(id=f"s-{status}", status=status, errors=[])
        read_back = {s.id: s.status for s in Submission.select()}
    assert sql("SELECT id, status FROM submissions ORDER BY id") == sorted(
        (f"s-{status}", str(status)) for status in OUTCOMES
    )
    assert all(type(status) is Status for status in read_back.values())
    # When anything else is written, even the API's "queued", the database refuses it
    for other in (Status.QUEUED, "stored ", "bogus"):
        with pytest.raises(peewee.IntegrityError, match="submissions_status_check"):
            sql("INSERT INTO submissions (id, status) VALUES ('x', %s)", str(other))


@pytest.fixture
def unique_key(clean_database, monkeypatch):
    """Change ``UNIQUE_FIELDS`` and migrate; the default key is restored afterwards."""

    def change(fields):
        monkeypatch.setattr(settings, "UNIQUE_FIELDS", fields)
        migrations.migrate(fields)

    yield change
    with clean_database.connection_context():
        clean_database.execute_sql("TRUNCATE users, submissions, batches RESTART IDENTITY CASCADE")
    migrations.migrate(["name", "age"])


def test_changing_unique_fields_rebuilds_the_index_and_the_dedupe_follows(sql, unique_key):
    # Given the key becomes name, age and email
    unique_key(["name", "age", "email"])
    assert "(name, age, email)" in unique_index_columns(sql)
    # When users differing only by email arrive, and one without email twice
    persist_users(
        [
            result("a", {"name": "K", "age": 1, "email": "a@x.io"}),
            result("b", {"name": "K", "age": 1, "email": "b@x.io"}),
            result("c", {"name": "K", "age": 1}),
        ]
    )
    persist_users([result("d", {"name": "K", "age": 1})])
    # Then the emails make them distinct, and a missing email equals a missing email
    found = outcomes(sql)
    assert [found[i][0] for i in "abcd"] == ["stored", "stored", "stored", "duplicate"]
    assert found["d"][1] == found["c"][1]


def test_phone_number_is_a_possible_key_field_by_its_api_name(sql, unique_key):
    # When
    unique_key(["phoneNumber"])
    persist_users(
        [
            result("a", {"name": "L", "age": 1, "phoneNumber": "+1 415 555 0100"}),
            result("b", {"name": "M", "age": 2, "phoneNumber": "+14155550100"}),
        ]
    )
    # Then
    assert "(phone_number)" in unique_index_columns(sql)
    assert sorted(status for status, _ in outcomes(sql).values()) == ["duplicate", "stored"]


def test_narrowing_the_key_over_rows_it_would_collide_fails_and_keeps_the_old_index(sql, unique_key):
    # Given two users that differ only by email under a key that includes it
    unique_key(["name", "age", "email"])
    persist_users(
        [
            result("a", {"name": "N", "age": 1, "email": "a@x.io"}),
            result("b", {"name": "N", "age": 1, "email": "b@x.io"}),
        ]
    )
    # When the key is narrowed to name and age
    with pytest.raises(peewee.IntegrityError):
        migrations.migrate(["name", "age"])
    # Then the migration changed nothing
    assert "(name, age, email)" in unique_index_columns(sql)


def test_an_unknown_unique_field_is_refused(clean_database):
    with pytest.raises(ValueError, match="address"):
        migrations.migrate(["name", "address"])


# --- the age report ----------------------------------------------------------------------------------------


def test_the_age_report_counts_each_group_with_its_boundaries(sql):
    # Given users on every boundary
    ages = [0, 19, 20, 40, 41, 60, 61, 150]
    persist_users([result(f"s{a}", {"name": f"age {a}", "age": a}) for a in ages])
    # When
    report = age_distribution()
    # Then
    assert report["total"] == 8
    counts = {group["group"]: group["count"] for group in report["groups"]}
    assert counts == {"under 20": 2, "20 to 40": 2, "41 to 60": 2, "over 60": 2}
    assert [group["share"] for group in report["groups"]] == [0.25] * 4


def test_the_age_report_of_no_users_is_all_zero(clean_database):
    report = age_distribution()
    assert report["total"] == 0
    assert all(group["count"] == 0 and group["share"] == 0 for group in report["groups"])


def test_the_age_report_only_counts_stored_users(sql):
    # Given one stored user, one duplicate of it and one invalid record
    persist_users(
        [
            result("a", {"name": "O", "age": 70}),
            result("b", {"name": "O", "age": 70}),
            result("c", {"name": "P", "age": 200}),
        ]
    )
    # Then
    report = age_distribution()
    assert report["total"] == 1
    assert {g["group"]: g["count"] for g in report["groups"]}["over 60"] == 1
