"""What a share consumer holds (``share/state.py``): bookkeeping only, so no Kafka here."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from kafka.structs import TopicPartition

from dramatiq_kafka_broker.share.protocol import ACCEPT, GAP, REJECT, RELEASE, RENEW
from dramatiq_kafka_broker.share.state import AckBatch, AcquiredRange, ShareAssignment, ack_batches

TP0 = TopicPartition("q", 0)
TP1 = TopicPartition("q", 1)


@dataclass
class _Message:
    partition: TopicPartition
    offset: int
    delivery_count: int


def _records(*offsets: int) -> dict[int, SimpleNamespace]:
    return {o: SimpleNamespace(offset=o, value=b"x") for o in offsets}


def _message_of(tp, record, count):
    return _Message(tp, record.offset, count)


def test_consecutive_offsets_of_one_type_make_one_batch():
    # Given acknowledgements with a run, a change of type and a hole
    acks = {5: ACCEPT, 3: ACCEPT, 4: ACCEPT, 6: RELEASE, 9: ACCEPT}
    # Then they make the fewest batches, in offset order
    assert ack_batches(acks) == [AckBatch(3, 5, ACCEPT), AckBatch(6, 6, RELEASE), AckBatch(9, 9, ACCEPT)]


def test_only_acquired_offsets_are_held_and_handed_out_even_when_the_batch_holds_more():
    # Given a fetch whose record batch holds offsets 0..9, of which this member acquired 2..4 and 7
    state: ShareAssignment[_Message] = ShareAssignment()
    acquired = [AcquiredRange(2, 4, 1), AcquiredRange(7, 7, 3)]
    # When the state takes it
    state.take(TP0, acquired, _records(*range(10)), _message_of, now=0.0)
    # Then only those are handed out, with their delivery counts, and held
    handed = []
    while (message := state.pop()) is not None:
        handed.append((message.offset, message.delivery_count))
    assert handed == [(2, 1), (3, 1), (4, 1), (7, 3)]
    assert state.outstanding() == 4
    assert not state.is_held(TP0, 5)


def test_an_acquired_offset_without_a_record_is_acknowledged_as_a_gap():
    # Given an acquired range whose middle offset has no record (a transaction marker's)
    state: ShareAssignment[_Message] = ShareAssignment()
    state.take(TP0, [AcquiredRange(0, 2, 1)], _records(0, 2), _message_of, now=0.0)
    # Then the gap is owed at once, and the two records are held
    assert state.collect_acks([TP0]) == {TP0: [AckBatch(1, 1, GAP)]}
    assert state.outstanding() == 2


def test_an_outcome_is_owed_once_and_only_for_a_held_record():
    state: ShareAssignment[_Message] = ShareAssignment()
    state.take(TP0, [AcquiredRange(0, 1, 1)], _records(0, 1), _message_of, now=0.0)
    # When the first is accepted twice and an unknown offset is accepted
    assert state.acknowledge(TP0, 0, ACCEPT) is True
    assert state.acknowledge(TP0, 0, ACCEPT) is False
    assert state.acknowledge(TP0, 9, ACCEPT) is False
    # Then one acknowledgement is owed, and the other record is still held
    assert state.collect_acks([TP0, TP1]) == {TP0: [AckBatch(0, 0, ACCEPT)]}
    assert state.collect_acks([TP0]) == {}
    assert state.outstanding() == 1


def test_closing_releases_what_was_fetched_and_not_handed_out():
    state: ShareAssignment[_Message] = ShareAssignment()
    state.take(TP0, [AcquiredRange(0, 3, 1)], _records(0, 1, 2, 3), _message_of, now=0.0)
    running = state.pop()
    assert running is not None
    # When the consumer releases what it did not hand out
    assert state.release_unhanded() == 3
    # Then those three are owed as RELEASE, and the running one is still held
    assert state.collect_acks([TP0]) == {TP0: [AckBatch(1, 3, RELEASE)]}
    assert state.is_held(TP0, 0)
    assert state.pop() is None


def test_locks_held_for_long_are_due_for_renewal_and_renewed():
    state: ShareAssignment[_Message] = ShareAssignment()
    state.take(TP0, [AcquiredRange(0, 1, 1)], _records(0, 1), _message_of, now=0.0)
    state.take(TP1, [AcquiredRange(5, 5, 1)], _records(5), _message_of, now=10.0)
    # Then at 16 s, with renewals due after 15 s, the first partition's two are due, not the later one
    due = state.due_for_renewal(16.0, 15.0)
    assert due == {TP0: [AckBatch(0, 1, RENEW)]}
    # ...and once renewed at 16 s, they are not due at 24 s (nor the later one), and all are at 31 s
    state.renewed(due, 16.0)
    assert state.due_for_renewal(24.0, 15.0) == {}
    assert set(state.due_for_renewal(31.0, 15.0)) == {TP0, TP1}


def test_a_lost_session_forgets_what_was_held_and_owed_of_its_partitions():
    state: ShareAssignment[_Message] = ShareAssignment()
    state.assign([TP0])
    state.take(TP0, [AcquiredRange(0, 1, 1)], _records(0, 1), _message_of, now=0.0)
    state.take(TP1, [AcquiredRange(0, 0, 1)], _records(0), _message_of, now=0.0)
    state.acknowledge(TP0, 1, REJECT)
    # Then both partitions are wanted in the sessions (one assigned, one with a record held)
    assert state.wanted() == {TP0, TP1}
    # When the session of the first is lost
    state.drop([TP0])
    # Then nothing of it is held, owed or handed out; the other is untouched
    assert not state.has_acks() and not state.is_held(TP0, 0)
    assert [m.partition for m in iter(state.pop, None)] == [TP1]
    assert state.outstanding() == 1
    # ...and a partition no longer assigned with nothing held leaves the sessions
    state.acknowledge(TP1, 0, ACCEPT)
    state.collect_acks([TP1])
    state.assign([])
    assert state.wanted() == set()
