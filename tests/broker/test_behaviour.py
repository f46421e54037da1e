"""Dramatiq's broker contract, run against StubBroker and KafkaBroker alike (the ``broker`` fixture)."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import TimeLimitExceeded

JOIN_MS = 60_000


def join(broker: dramatiq.Broker, queue: str = "default") -> None:
    broker.join(queue, timeout=JOIN_MS, fail_fast=False)


def failed(broker: dramatiq.Broker, queue: str = "default") -> list[str]:
    """Names of the actors whose messages ended on the failed-message queue."""
    if isinstance(broker, StubBroker):
        return [m.actor_name for m in broker.dead_letters_by_queue[queue]]
    return [f.message.actor_name for f in broker.admin.failed_messages(queue) if f.message]


def test_actors_run_every_message_sent(broker, worker):
    # Given an actor that records its argument
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def record(n: int) -> None:
        with lock:
            seen.append(n)

    # When I send it 50 messages
    for n in range(50):
        record.send(n)
    join(broker)

    # Then each ran exactly once
    assert sorted(seen) == list(range(50))


def test_a_failing_actor_is_retried_until_it_succeeds(broker, worker):
    # Given an actor that fails twice, then succeeds
    attempts: list[int] = []

    @dramatiq.actor(max_retries=5, min_backoff=10, max_backoff=50)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    # When I send it once
    flaky.send()
    join(broker)

    # Then it ran three times and nothing failed for good
    assert len(attempts) == 3
    assert failed(broker) == []


def test_an_actor_that_keeps_failing_ends_on_the_failed_queue_after_max_retries(broker, worker):
    # Given an actor that always fails, allowed two retries
    attempts: list[int] = []

    @dramatiq.actor(max_retries=2, min_backoff=10, max_backoff=20)
    def broken() -> None:
        attempts.append(1)
        raise RuntimeError("always broken")

    # When I send it
    broken.send()
    join(broker)

    # Then it ran 1 + 2 times and its message is on the failed queue
    assert len(attempts) == 3
    assert failed(broker) == ["broken"]


def test_retry_when_decides_which_failures_are_retried(broker, worker):
    # Given an actor retried only while the failure is a TimeoutError
    attempts: list[str] = []

    def only_timeouts(retries: int, exception: Exception) -> bool:
        return isinstance(exception, TimeoutError) and retries < 5

    @dramatiq.actor(retry_when=only_timeouts, min_backoff=10, max_backoff=20)
    def sometimes() -> None:
        attempts.append("x")
        raise TimeoutError("slow") if len(attempts) < 2 else ValueError("bad")

    # When I send it
    sometimes.send()
    join(broker)

    # Then the TimeoutError was retried, the ValueError was not
    assert attempts == ["x", "x"]
    assert failed(broker) == ["sometimes"]


def test_throws_skips_retries_for_expected_errors(broker, worker):
    # Given an actor that declares ValueError as expected
    attempts: list[int] = []

    @dramatiq.actor(throws=(ValueError,), max_retries=5)
    def strict() -> None:
        attempts.append(1)
        raise ValueError("no")

    # When I send it
    strict.send()
    join(broker)

    # Then it ran once and failed for good
    assert attempts == [1]
    assert failed(broker) == ["strict"]


def test_delayed_messages_run_no_earlier_than_their_delay(broker, worker):
    # Given an actor that records when it runs
    ran_at: list[float] = []

    @dramatiq.actor
    def later() -> None:
        ran_at.append(time.time())

    # When I send it with a 700 ms delay
    sent_at = time.time()
    later.send_with_options(delay=700)
    join(broker)

    # Then it ran once, not before its eta
    assert len(ran_at) == 1
    assert ran_at[0] - sent_at >= 0.7


def test_pipelines_pass_each_result_to_the_next_actor(broker, worker):
    # Given two actors chained in a pipeline
    results: list[int] = []

    @dramatiq.actor
    def add(x: int, y: int) -> int:
        return x + y

    @dramatiq.actor
    def keep(total: int) -> None:
        results.append(total)

    # When I run add(1, 2) | add(3) | keep
    dramatiq.pipeline([add.message(1, 2), add.message(3), keep.message()]).run()
    join(broker)

    # Then the last actor saw the sum
    assert results == [6]


def test_groups_run_every_member_and_then_their_callback(broker, worker):
    # Given an actor and a completion callback... group completion needs a result backend, so the
    # observable here is that every member of the group runs.
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor
    def member(n: int) -> None:
        with lock:
            seen.append(n)

    # When I run a group of five
    dramatiq.group([member.message(n) for n in range(5)]).run()
    join(broker)

    # Then all five ran
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_time_limits_stop_an_actor_that_runs_too_long(broker, worker):
    # Given an actor with a 200 ms time limit that tries to run for 5 s
    outcome: list[str] = []

    @dramatiq.actor(time_limit=200, max_retries=0)
    def slow() -> None:
        try:
            for _ in range(500):
                time.sleep(0.01)
            outcome.append("finished")
        except TimeLimitExceeded:
            outcome.append("stopped")
            raise

    # When I send it
    slow.send()
    join(broker)

    # Then it was stopped and failed
    assert outcome == ["stopped"]
    assert failed(broker) == ["slow"]


def test_join_times_out_when_nothing_consumes_the_queue(broker):
    # Given a message on a queue that no worker consumes
    @dramatiq.actor
    def idle() -> None:
        pass

    idle.send()

    # When I join it with a short timeout, Then it raises QueueJoinTimeout
    with pytest.raises(QueueJoinTimeout):
        broker.join("default", timeout=500)


def test_flush_drops_pending_messages(broker):
    # Given five messages waiting on a queue
    seen: list[int] = []

    @dramatiq.actor
    def dropped(n: int) -> None:
        seen.append(n)

    for n in range(5):
        dropped.send(n)

    # When I flush the queue and only then start a worker
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        dropped.send(99)
        join(broker)
    finally:
        worker.stop()

    # Then only the message sent after the flush ran
    assert seen == [99]
