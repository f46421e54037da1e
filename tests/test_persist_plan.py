"""What persisting a chunk decides, without a database: which records to skip, which users to insert, and
the outcome of every record (``pipeline/persist_plan.py``; the SQL around it is tested in test_persist.py)."""

from __future__ import annotations

from pipeline import persist_plan
from pipeline.contract import Status

COLUMNS = ["name", "age"]


def valid(submission_id, name, age, **extra):
    user = {"name": name, "age": age, **extra}
    return {"id": submission_id, "row": None, "batch_id": None, "user": user, "errors": []}


def invalid(submission_id, *, row=None, batch_id=None):
    errors = [{"field": "age", "message": "required field"}]
    return {"id": submission_id, "row": row, "batch_id": batch_id, "user": None, "errors": errors}


def statuses(rows):
    return {row["id"]: (row["status"], row["user_id"]) for row in rows}


def test_records_that_already_have_an_outcome_are_skipped():
    # Given
    results = [valid("a", "Ann", 1), valid("b", "Bob", 2), invalid("c")]
    # When
    plan = persist_plan.plan(results, done={"a", "c"}, columns=COLUMNS)
    # Then
    assert [r["id"] for r in plan.todo] == ["b"]
    assert plan.skipped == 2
    assert plan.users == [{"name": "Bob", "age": 2}]


def test_the_first_record_of_a_key_in_the_chunk_is_the_one_inserted():
    # Given two records with one key, the second carrying more fields
    results = [valid("a", "Ann", 1), valid("b", "Ann", 1, email="ann@example.org"), valid("c", "Cy", 3)]
    # When
    plan = persist_plan.plan(results, done=set(), columns=COLUMNS)
    # Then
    assert plan.users == [{"name": "Ann", "age": 1}, {"name": "Cy", "age": 3}]
    assert plan.first[("Ann", 1)] is results[0]


def test_an_invalid_record_inserts_nothing_and_keeps_its_errors():
    # Given
    plan = persist_plan.plan([invalid("x", row=7, batch_id="b1")], done=set(), columns=COLUMNS)
    # When
    rows, counts = persist_plan.outcomes(plan, stored_ids={}, existing={})
    # Then
    assert plan.users == []
    assert rows == [
        {
            "id": "x",
            "batch_id": "b1",
            "row": 7,
            "status": Status.INVALID,
            "errors": [{"field": "age", "message": "required field"}],
            "user_id": None,
        }
    ]
    assert counts == {"stored": 0, "duplicate": 0, "invalid": 1, "skipped": 0}


def test_the_inserted_user_is_stored_and_later_records_of_its_key_are_its_duplicates():
    # Given
    plan = persist_plan.plan([valid("a", "Ann", 1), valid("b", "Ann", 1)], done=set(), columns=COLUMNS)
    # When the insert returned an id for the key
    rows, counts = persist_plan.outcomes(plan, stored_ids={("Ann", 1): 10}, existing={})
    # Then
    assert statuses(rows) == {"a": (Status.STORED, 10), "b": (Status.DUPLICATE, 10)}
    assert all(row["errors"] == [] for row in rows)
    assert counts == {"stored": 1, "duplicate": 1, "invalid": 0, "skipped": 0}


def test_a_key_already_stored_makes_every_record_a_duplicate_of_the_existing_user():
    # Given a key the insert skipped (on conflict), whose id the lookup found
    plan = persist_plan.plan([valid("a", "Ann", 1), valid("b", "Ann", 1)], done={"z"}, columns=COLUMNS)
    assert plan.missing(stored_ids={}) == [("Ann", 1)]
    # When
    rows, counts = persist_plan.outcomes(plan, stored_ids={}, existing={("Ann", 1): 3})
    # Then
    assert statuses(rows) == {"a": (Status.DUPLICATE, 3), "b": (Status.DUPLICATE, 3)}
    assert counts["duplicate"] == 2


def test_only_the_keys_that_were_not_inserted_are_looked_up():
    # Given
    plan = persist_plan.plan([valid("a", "Ann", 1), valid("b", "Bob", 2)], done=set(), columns=COLUMNS)
    # Then
    assert plan.missing(stored_ids={("Ann", 1): 1}) == [("Bob", 2)]
    assert plan.missing(stored_ids={("Ann", 1): 1, ("Bob", 2): 2}) == []


def test_a_missing_key_column_counts_as_null():
    # Given users without an email, keyed on name and email
    results = [valid("a", "Ann", 1), valid("b", "Ann", 2)]
    # When
    plan = persist_plan.plan(results, done=set(), columns=["name", "email"])
    # Then both share the key ("Ann", None): the second duplicates the first
    assert list(plan.first) == [("Ann", None)]
    rows, _ = persist_plan.outcomes(plan, stored_ids={("Ann", None): 5}, existing={})
    assert statuses(rows) == {"a": (Status.STORED, 5), "b": (Status.DUPLICATE, 5)}


def test_the_skipped_count_is_reported_with_the_outcomes():
    # Given
    plan = persist_plan.plan([valid("a", "Ann", 1), invalid("b")], done={"a"}, columns=COLUMNS)
    # When
    rows, counts = persist_plan.outcomes(plan, stored_ids={}, existing={})
    # Then
    assert [row["id"] for row in rows] == ["b"]
    assert counts == {"stored": 0, "duplicate": 0, "invalid": 1, "skipped": 1}
