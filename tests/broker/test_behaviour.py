"""Dramatiq's broker contract, run against StubBroker and KafkaBroker alike (the ``broker`` fixture)."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ActorNotFound, QueueJoinTimeout, RateLimitExceeded
from dramatiq.middleware import SkipMessage, TimeLimitExceeded
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

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


# -- Dramatiq 2.x's contract, as users' tests written for StubBroker rely on it ---------------------------
# These call ``broker.join`` with its defaults: ``fail_fast`` is the broker's ``fail_fast_default`` (True),
# and a message that failed re-raises the actor's own exception.


def test_join_re_raises_the_actors_own_exception_by_default(broker, worker):
    # Given an actor that fails for good
    @dramatiq.actor(max_retries=0)
    def refuses() -> None:
        raise ValueError("refused")

    # When I send it and join its queue with join's defaults
    refuses.send()

    # Then join raises the actor's exception itself
    with pytest.raises(ValueError, match="refused"):
        broker.join("default", timeout=JOIN_MS)


def test_join_re_raises_time_limit_exceeded(broker, worker):
    # Given an actor that runs past its time limit
    @dramatiq.actor(time_limit=100, max_retries=0)
    def overruns() -> None:
        for _ in range(300):
            time.sleep(0.01)

    # When I send it, Then join raises TimeLimitExceeded
    overruns.send()
    with pytest.raises(TimeLimitExceeded):
        broker.join("default", timeout=JOIN_MS)


def test_join_raises_skip_message_for_a_message_older_than_its_max_age(broker, worker):
    # Given an actor whose messages may be at most 20 ms old, and a message of it 100 ms old
    ran: list[int] = []

    @dramatiq.actor(max_age=20)
    def perishable() -> None:
        ran.append(1)

    message = perishable.message()
    time.sleep(0.1)

    # When it is enqueued, Then it is skipped, not run, and join raises SkipMessage
    broker.enqueue(message)
    with pytest.raises(SkipMessage):
        broker.join("default", timeout=JOIN_MS)
    assert ran == []


def test_a_fresh_actor_on_a_running_worker_runs_its_first_message_within_its_max_age(broker, worker):
    # Given an actor declared while the worker runs, whose messages may be at most 5 s old
    ran: list[int] = []

    @dramatiq.actor(queue_name="fresh", max_age=5_000)
    def prompt() -> None:
        ran.append(1)

    # When I send it its first message
    prompt.send()
    broker.join("fresh", timeout=JOIN_MS)

    # Then it ran (its queue was live at once: the message was not skipped as too old)
    assert ran == [1]


def test_a_zero_backoff_retry_runs_again_without_a_delay(broker, worker):
    # Given a fresh actor that fails once, retried with no backoff at all
    attempts: list[float] = []

    @dramatiq.actor(queue_name="again", max_retries=1, min_backoff=0, max_backoff=0)
    def fails_once() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("once")

    # When I send it
    fails_once.send()
    broker.join("again", timeout=JOIN_MS)

    # Then it ran twice, and nothing failed for good
    assert len(attempts) == 2
    assert failed(broker, "again") == []


def test_an_actor_raising_retry_is_retried_after_its_delay_without_an_error_log(broker, worker, caplog):
    # Given an actor that asks to be retried in 200 ms once
    attempts: list[float] = []

    @dramatiq.actor(max_retries=3)
    def later_please() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise dramatiq.Retry("not yet", delay=200)

    # When I send it
    with caplog.at_level("INFO"):
        later_please.send()
        broker.join("default", timeout=JOIN_MS)

    # Then it ran again no earlier than the delay asked for, and nothing was logged as an error
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.2
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


def test_a_rate_limited_actor_is_retried_and_logged_at_debug_as_dramatiq_does(broker, worker, caplog):
    # Given an actor that exceeds a rate limit once
    attempts: list[int] = []

    @dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20)
    def limited() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RateLimitExceeded("too many")

    # When I send it
    with caplog.at_level("DEBUG", logger="dramatiq.worker"):
        limited.send()
        broker.join("default", timeout=JOIN_MS)

    # Then it was retried, and the worker logged the rate limit at DEBUG, not as a failure
    assert len(attempts) == 2
    rate_limited = [r for r in caplog.records if "Rate limit exceeded" in r.getMessage()]
    assert [r.levelname for r in rate_limited] == ["DEBUG"]
    assert not any("unhandled exception" in r.getMessage() for r in caplog.records)


def test_a_message_for_an_unknown_actor_is_rejected_to_the_failed_queue(broker, worker):
    # Given a queue with an actor, and a message for an actor nobody declared
    @dramatiq.actor
    def known() -> None:
        pass

    stray = dramatiq.Message(queue_name="default", actor_name="nobody", args=(), kwargs={}, options={})

    # When it is enqueued, Then join raises ActorNotFound and the message is on the failed queue
    broker.enqueue(stray)
    with pytest.raises(ActorNotFound):
        broker.join("default", timeout=JOIN_MS)
    assert failed(broker) == ["nobody"]


@pytest.mark.parametrize("eta", ["soon", None])
def test_a_message_whose_eta_is_not_a_number_still_runs(broker, worker, eta):
    # Given an actor, and a message of it whose eta is not a number (or null)
    ran: list[int] = []

    @dramatiq.actor
    def punctual() -> None:
        ran.append(1)

    message = punctual.message_with_options(eta=eta)

    # When it is enqueued
    broker.enqueue(message)
    broker.join("default", timeout=JOIN_MS)

    # Then the worker ran it
    assert ran == [1]


def test_a_delayed_message_without_an_eta_runs_at_once(broker, worker):
    # Given a message put on the delay queue with no eta at all
    ran: list[int] = []

    @dramatiq.actor
    def undated() -> None:
        ran.append(1)

    message = undated.message().copy(queue_name="default.DQ")

    # When it is enqueued, Then it runs
    broker.enqueue(message)
    broker.join("default", timeout=JOIN_MS)
    assert ran == [1]


def test_a_group_can_be_waited_for_and_its_results_read(broker, worker):
    # Given a results backend, and an actor that stores its results
    broker.add_middleware(Results(backend=StubBackend()))

    @dramatiq.actor(store_results=True)
    def square(n: int) -> int:
        return n * n

    # When a group of five runs and I wait for it
    jobs = dramatiq.group([square.message(n) for n in range(5)]).run()
    jobs.wait(timeout=JOIN_MS)

    # Then every result is there, in order
    assert list(jobs.get_results(block=True, timeout=JOIN_MS)) == [0, 1, 4, 9, 16]


def test_a_pipeline_result_can_be_read_from_its_last_stage(broker, worker):
    # Given a results backend and two actors that store their results
    broker.add_middleware(Results(backend=StubBackend()))

    @dramatiq.actor(store_results=True)
    def double(n: int) -> int:
        return 2 * n

    @dramatiq.actor(store_results=True)
    def increment(n: int) -> int:
        return n + 1

    # When a pipeline runs, Then its result is the last stage's
    chain = dramatiq.pipeline([double.message(20), increment.message()]).run()
    assert chain.get_result(block=True, timeout=JOIN_MS) == 41
