"""The consumer's per-partition bookkeeping and the acked offsets it keeps in commit metadata; no Kafka."""

from __future__ import annotations

import pytest

from dramatiq_kafka_broker.offsets import MAX_COMMIT_METADATA, PartitionState, decode_acked, encode_acked


@pytest.mark.parametrize(
    "acked",
    [set(), {11}, {11, 12, 13, 20}, set(range(101, 5000, 2))],
)
def test_acked_offsets_survive_the_round_trip_through_commit_metadata(acked):
    # Given offsets acked above a commit point of 10
    # When they are encoded into commit metadata and decoded again
    decoded = decode_acked(10, encode_acked(10, acked))

    # Then what fits comes back exactly, and what does not fit is left out (to be redelivered)
    assert decoded <= acked
    if len(acked) < 100:
        assert decoded == acked
    else:
        assert len(encode_acked(10, acked)) <= 4000 + len("acked:")


def test_acked_offsets_are_kept_as_ranges_relative_to_the_commit_point():
    # Given offsets 11, 12, 13 and 20 acked above a commit point of 10
    # When they are encoded, Then two base-36 ranges relative to 10 are written
    assert encode_acked(10, {11, 12, 13, 20}) == "acked:1+3,a+1"


@pytest.mark.parametrize(
    "metadata",
    ["", None, "something else", "acked:zz", "acked:1+?", "acked:+", "acked:-5+2", "acked:1+-2", "acked:,"],
)
def test_metadata_that_is_not_ours_or_is_corrupt_skips_nothing(metadata):
    # Given commit metadata another client wrote, or a corrupt one
    # When it is decoded, Then no offset is skipped (at worst, messages are delivered again)
    assert decode_acked(10, metadata) == set()


def test_the_commit_point_stops_at_the_first_gap():
    # Given offsets 5 to 9 handed out, of which 5, 6 and 8 were acked
    state = PartitionState(epoch=1)
    state.pending.extend(range(5, 10))
    state.position = 10
    state.acked.update({5, 6, 8})

    # When the commit point is asked for, Then it is the first offset not acked, with 8 kept above it
    assert state.commit_point() == 7
    assert state.acked == {8}
    assert encode_acked(7, state.acked) == "acked:1+1"


def test_the_commit_point_is_the_position_once_everything_fetched_was_acked():
    # Given offsets 0 to 2 handed out and all acked
    state = PartitionState(epoch=1)
    state.pending.extend(range(3))
    state.position = 3
    state.acked.update(range(3))

    # When the commit point is asked for, Then it is the next offset to fetch, with nothing above it
    assert state.commit_point() == 3
    assert not state.pending and not state.acked


def test_forgetting_from_an_offset_drops_what_was_fetched_after_it():
    # Given offsets 0 to 5 fetched, 1 and 4 acked
    state = PartitionState(epoch=2)
    state.pending.extend(range(6))
    state.position = 6
    state.acked.update({1, 4})

    # When the partition forgets from 3 (its messages from there were not handed out)
    state.forget_from(3)

    # Then fetching starts again at 3, and only what came before is still tracked
    assert state.position == 3
    assert list(state.pending) == [0, 1, 2]
    assert state.acked == {1}
    assert state.commit_point() == 0


def test_encoded_metadata_never_exceeds_kafkas_limit():
    # Given every other offset of 20,000 acked (10,000 separate ranges)
    acked = set(range(1, 40_000, 2))
    # When encoded, Then the metadata fits Kafka's default limit
    assert len(encode_acked(0, acked)) <= MAX_COMMIT_METADATA + len("acked:")
