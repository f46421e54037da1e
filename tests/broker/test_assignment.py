"""What a consumer holds of its topic (its partitions, their state, the messages fetched): no Kafka."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from kafka.structs import OffsetAndMetadata, TopicPartition

from dramatiq_kafka_broker.assignment import Assignment

P0 = TopicPartition("t", 0)
P1 = TopicPartition("t", 1)


@dataclass
class _Message:
    partition: TopicPartition
    offset: int
    epoch: int


def _message_of(tp, record, epoch):
    """Every record is a message, but those whose value is ``b"junk"``."""
    return None if record.value == b"junk" else _Message(tp, record.offset, epoch)


def _records(*offsets):
    return [SimpleNamespace(offset=offset, value=b"m") for offset in offsets]


def _assignment(*partitions, commits=None):
    assignment: Assignment[_Message] = Assignment()
    assert assignment.assign(list(partitions), commits or {}) == {}
    return assignment


def _pop_all(assignment):
    messages = []
    while (message := assignment.pop()) is not None:
        messages.append(message)
    return messages


def _ack(assignment, message):
    return assignment.ack(message.partition, message.offset, message.epoch)


def test_the_commit_stops_at_the_first_unacked_offset_with_the_acked_ones_above_it_in_metadata():
    # Given offsets 0 to 4 of a partition handed out, of which 0, 1 and 3 are acked
    assignment = _assignment(P0)
    assignment.take({P0: _records(*range(5))}, _message_of)
    messages = _pop_all(assignment)
    for message in (messages[0], messages[1], messages[3]):
        assert _ack(assignment, message)

    # When the offsets to commit are collected
    assert assignment.dirty
    offsets = assignment.collect_commit()

    # Then the partition is committed at 2, with 3 kept in the metadata, and two messages are still out
    assert offsets == {P0: OffsetAndMetadata(2, "acked:1+1", -1)}
    assert not assignment.dirty
    assert assignment.outstanding() == 2


def test_a_partition_committed_where_it_is_has_nothing_to_commit_until_it_moves_on():
    # Given a partition whose two messages were acked, and whose commit went through
    assignment = _assignment(P0)
    assignment.take({P0: _records(0, 1)}, _message_of)
    for message in _pop_all(assignment):
        _ack(assignment, message)
    assignment.committed(assignment.collect_commit())

    # When the offsets to commit are asked for again, Then there are none
    assert assignment.offsets_to_commit() == {}

    # And a commit that failed is due again, with the same offsets
    assignment.take({P0: _records(2)}, _message_of)
    _ack(assignment, assignment.pop())
    offsets = assignment.collect_commit()
    assignment.commit_failed()
    assert assignment.dirty
    assert assignment.collect_commit() == offsets == {P0: OffsetAndMetadata(3, "", -1)}


def test_an_ack_of_an_earlier_ownership_of_the_partition_is_dropped():
    # Given a message handed out, then its partition revoked and assigned again after another owner committed
    assignment = _assignment(P0, commits={P0: OffsetAndMetadata(0, "", -1)})
    assignment.take({P0: _records(0)}, _message_of)
    stale = assignment.pop()
    assignment.revoke([P0])
    assignment.assign([P0], {P0: OffsetAndMetadata(1, "", -1)})

    # When the message is acked
    recorded = _ack(assignment, stale)

    # Then the ack is dropped: nothing to commit, and the partition starts afresh from the group's commit
    assert not recorded
    assert not assignment.dirty
    assert assignment.offsets_to_commit() == {}
    assignment.take({P0: _records(1)}, _message_of)
    fresh = assignment.pop()
    assert fresh.epoch != stale.epoch
    assert _ack(assignment, fresh)
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(2, "", -1)}


def test_an_ack_of_a_partition_no_longer_held_is_dropped():
    # Given a message handed out, then its partition revoked and not assigned again
    assignment = _assignment(P0, P1)
    assignment.take({P0: _records(0)}, _message_of)
    message = assignment.pop()
    assignment.revoke([P0])
    assignment.assign([P1], {})

    # When the message is acked, Then the ack is dropped and the partition is not committed
    assert not _ack(assignment, message)
    assert assignment.partitions == [P1]
    assert assignment.offsets_to_commit() == {}


def test_a_revoke_drops_the_buffered_messages_of_the_revoked_partitions_only():
    # Given offsets 0 to 4 of one partition fetched (0 and 1 handed out) and 0 to 1 of another
    assignment = _assignment(P0, P1)
    assignment.take({P0: _records(*range(5)), P1: _records(0, 1)}, _message_of)
    handed_out = [assignment.pop(), assignment.pop()]
    assert [m.offset for m in handed_out] == [0, 1]

    # When the first partition is revoked
    assignment.revoke([P0])

    # Then only the other partition's messages are left to hand out, and only they (and the two handed out
    # of the revoked one, which may yet be acked) are outstanding
    assert [(m.partition, m.offset) for m in _pop_all(assignment)] == [(P1, 0), (P1, 1)]
    assert assignment.partitions == [P1]
    assert assignment.outstanding() == 2


def test_a_partition_given_back_unchanged_carries_on_from_the_first_message_it_dropped():
    # Given offsets 0 to 4 fetched, 0 and 1 handed out, the commit point (0) committed, and the partition
    # revoked meanwhile
    assignment = _assignment(P0, commits={P0: OffsetAndMetadata(0, "", -1)})
    assignment.take({P0: _records(*range(5))}, _message_of)
    first, second = assignment.pop(), assignment.pop()
    assignment.committed(assignment.offsets_to_commit([P0]))
    assignment.revoke([P0])

    # When the first message is acked while the partition is away, and the partition comes back with the
    # group's commit unchanged
    assert _ack(assignment, first)
    seeks = assignment.assign([P0], {P0: OffsetAndMetadata(0, "", -1)})

    # Then it is fetched again from the first message not handed out, the ack made while away is committed,
    # and the message still in flight keeps counting
    assert seeks == {P0: 2}
    assert assignment.dirty
    assert assignment.outstanding() == 1
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(1, "", -1)}
    assert _ack(assignment, second)
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(2, "", -1)}


def test_a_partition_given_back_after_another_owner_committed_starts_afresh():
    # Given a partition with a message in flight, revoked after committing 0
    assignment = _assignment(P0, commits={P0: OffsetAndMetadata(0, "", -1)})
    assignment.take({P0: _records(0, 1)}, _message_of)
    assignment.pop()
    assignment.committed(assignment.offsets_to_commit([P0]))
    assignment.revoke([P0])

    # When it comes back, another owner having committed 2 meanwhile
    seeks = assignment.assign([P0], {P0: OffsetAndMetadata(2, "", -1)})

    # Then nothing of the old state is kept: no seek, nothing outstanding, nothing to commit
    assert seeks == {}
    assert assignment.outstanding() == 0
    assert assignment.offsets_to_commit() == {}


def test_offsets_the_previous_owner_acked_above_its_commit_are_skipped_and_committed():
    # Given a partition committed at 5 with 6 and 7 acked above it (commit metadata "acked:1+2")
    assignment = _assignment(P0, commits={P0: OffsetAndMetadata(5, "acked:1+2", -1)})

    # When offsets 5 to 8 are fetched
    assignment.take({P0: _records(5, 6, 7, 8)}, _message_of)

    # Then only 5 and 8 are handed out, and once they are acked the partition is committed past all four
    messages = _pop_all(assignment)
    assert [m.offset for m in messages] == [5, 8]
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(5, "acked:1+2", -1)}
    for message in messages:
        _ack(assignment, message)
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(9, "", -1)}


def test_a_record_that_is_not_a_message_counts_as_acked():
    # Given offsets 0 to 2 fetched, of which 1 is not a message
    assignment = _assignment(P0)
    records = _records(0, 1, 2)
    records[1].value = b"junk"

    # When they are taken
    assignment.take({P0: records}, _message_of)

    # Then 0 and 2 are handed out, and 1 is committed with them once they are acked
    messages = _pop_all(assignment)
    assert [m.offset for m in messages] == [0, 2]
    assert assignment.dirty
    assert assignment.outstanding() == 2
    for message in messages:
        _ack(assignment, message)
    assert assignment.offsets_to_commit() == {P0: OffsetAndMetadata(3, "", -1)}


def test_records_of_a_partition_not_held_are_left_out():
    # Given an assignment of one partition, When a batch has records of another, Then they are left out
    assignment = _assignment(P0)
    assignment.take({P1: _records(0)}, _message_of)
    assert assignment.pop() is None
    assert assignment.outstanding() == 0
