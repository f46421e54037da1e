"""Ids: time-ordered, URL-safe, and only verifiable with the secret and kind they were issued with."""

from __future__ import annotations

import re

from web.ids import BATCH, ID_LENGTH, SUBMISSION, IdSigner, parse_submission_id, record_id, timestamp_ms

signer = IdSigner("test-secret")


def test_an_issued_id_verifies_with_its_kind_and_secret_only():
    # Given
    submission_id = signer.new_submission_id()
    # When / Then
    assert signer.verify(submission_id, SUBMISSION)
    assert not signer.verify(submission_id, BATCH)
    assert not IdSigner("another-secret").verify(submission_id, SUBMISSION)


def test_ids_are_url_safe_and_of_fixed_length():
    # Given
    ids = [signer.new_batch_id() for _ in range(50)]
    # Then
    assert all(len(i) == ID_LENGTH and re.fullmatch(r"[0-9a-z]+", i) for i in ids)
    assert len(set(ids)) == 50


def test_ids_sort_in_the_order_of_their_timestamps():
    # Given
    ids = [signer.new_id(SUBMISSION, now_ms=t) for t in (5, 1_000, 1_700_000_000_000, 1_700_000_000_001)]
    # When
    shuffled = [ids[2], ids[0], ids[3], ids[1]]
    # Then
    assert sorted(shuffled) == ids
    assert [timestamp_ms(i) for i in ids] == [5, 1_000, 1_700_000_000_000, 1_700_000_000_001]


def test_an_id_with_any_character_changed_does_not_verify():
    # Given
    original = signer.new_submission_id()
    # When
    forged = [
        original[:i] + ("0" if original[i] != "0" else "1") + original[i + 1 :] for i in range(len(original))
    ]
    # Then
    assert not any(signer.verify(f, SUBMISSION) for f in forged)


def test_made_up_and_malformed_ids_do_not_verify():
    for value in ["", "abc", "0" * ID_LENGTH, "z" * ID_LENGTH, "U" * ID_LENGTH, "é" * ID_LENGTH, "../" * 12]:
        assert not signer.verify(value, SUBMISSION)
        assert parse_submission_id(signer, value) is None


def test_a_record_id_is_its_batch_id_and_row():
    # Given
    batch_id = signer.new_batch_id()
    # When
    ref = parse_submission_id(signer, record_id(batch_id, 42))
    # Then
    assert ref is not None and (ref.batch_id, ref.row, ref.id) == (batch_id, 42, f"{batch_id}.42")


def test_a_record_id_needs_a_real_batch_id_and_a_canonical_row():
    # Given
    batch_id = signer.new_batch_id()
    submission_id = signer.new_submission_id()
    # Then
    for value in [
        f"{batch_id}.0",
        f"{batch_id}.007",
        f"{batch_id}.+7",
        f"{batch_id}.",
        f"{batch_id}.1.2",
        f"{batch_id}.٣",
        f"{submission_id}.1",
        f"{batch_id}.99999999999",
    ]:
        assert parse_submission_id(signer, value) is None, value


def test_a_single_submission_id_parses_without_batch():
    # Given
    submission_id = signer.new_submission_id()
    # When
    ref = parse_submission_id(signer, submission_id)
    # Then
    assert ref is not None and ref.batch_id is None and ref.row is None
    assert parse_submission_id(signer, signer.new_batch_id()) is None
