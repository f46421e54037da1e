"""How fast Dramatiq brokers carry no-op messages: our KafkaBroker against the others, in one run.

    python -m bench.brokers [--messages 5000] [--repeat 3] [--threads 8] [--only NAME,NAME]

(``bench/run.sh`` starts the servers first.)  Every scenario enqueues ``--messages`` messages of a no-op
actor and waits until they have been processed; each is repeated ``--repeat`` times and the median is
reported.  Rates, in messages per second:

* **enqueue**: the messages over the time of the enqueue loop alone (``actor.send()`` N times, or one
  ``enqueue_many`` of N messages), while the worker already consumes them;
* **processed**: the messages over the time from the first enqueue until the actor has run N times;
* **e2e**: the messages over the time from the first enqueue until ``broker.join(queue)`` returns (that
  is, until the broker itself says that everything was acked); brokers without ``join``
  (dramatiq-kafka) report their ``processed`` time here.

In-process scenarios run a Dramatiq ``Worker`` of ``--threads`` threads in the benchmark's own process, as
the figures of ``shared/PERFORMANCE.md`` were taken; ``*-proc`` scenarios run the worker as a separate
``dramatiq`` process instead.  Topics, groups, Redis keys and RabbitMQ queues carry a fresh random prefix
and are deleted at the end.

dramatiq-kafka 0.1.9 pins kafka-python 2.0.2, so its scenario runs in a venv of its own
(``.local/bench-venv-dramatiq-kafka``, made by ``bench/setup.sh``) as a child process of this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Worker

ROOT = Path(__file__).resolve().parent.parent
DK_PYTHON = ROOT / ".local" / "bench-venv-dramatiq-kafka" / "bin" / "python"
#: Where each run's figures are saved as JSON (git ignores it).
RESULTS_DIR = ROOT / "bench" / "results"
#: Partitions of every Kafka topic of the run (our broker's default too).
PARTITIONS = 6
#: Longest wait for one round to be processed, in seconds, before it is reported as n/a.
ROUND_TIMEOUT_S = 180.0


# -- results ----------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One timed round: seconds from the first enqueue to each milestone."""

    enqueued: float
    processed: float
    joined: float | None


@dataclass
class Result:
    """A scenario's rounds, or why it could not run."""

    name: str
    label: str
    messages: int
    rounds: list[Round] = field(default_factory=list)
    error: str | None = None
    note: str = ""

    def median_rate(self, what: str) -> float | None:
        """Median messages/s of a milestone over the rounds (None when it was not measured)."""
        times = [getattr(r, what) for r in self.rounds]
        if not times or any(t is None for t in times):
            return None
        return self.messages / statistics.median(times)

    @property
    def e2e(self) -> float | None:
        """Median end-to-end rate: until ``join`` returned, or until processed where there is no join."""
        return self.median_rate("joined") or self.median_rate("processed")


class Counter:
    """Counts the actor's runs and wakes the benchmark when a target is reached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.count = 0
        self.target = 0

    def expect(self, target: int) -> None:
        with self._lock:
            self.count = 0
            self.target = target
            self._done.clear()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.target:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


# -- the in-process loop, shared by every Dramatiq broker ---------------------------------------------------
def _warm_up(send: Callable[[], Any], counter: Counter, join: Callable[[], None] | None) -> None:
    """Open connections, create topics and let consumer groups settle before anything is timed.

    A broker whose consumers start at the log's end (dramatiq-kafka) loses what is sent before its group
    has partitions, so this sends one message a second until one comes through.
    """
    counter.expect(1)
    deadline = time.monotonic() + 90
    sent = 0
    while time.monotonic() < deadline:
        send()
        sent += 1
        if counter.wait(2.0):
            break
    else:
        raise TimeoutError("no warm-up message came through in 90 s")
    if join is not None:
        join()
    else:
        time.sleep(1.0)


def run_rounds(
    result: Result,
    *,
    send: Callable[[], Any],
    send_all: Callable[[int], Any] | None,
    counter: Counter | None,
    join: Callable[[], None] | None,
    repeat: int,
) -> None:
    """Time ``repeat`` rounds; ``send_all(n)`` (the batched path) replaces a loop of ``send()`` when given."""
    n = result.messages
    for _ in range(repeat):
        if counter is not None:
            counter.expect(n)
        start = time.perf_counter()
        if send_all is not None:
            send_all(n)
        else:
            for _ in range(n):
                send()
        enqueued = time.perf_counter() - start
        processed = None
        if counter is not None:
            if not counter.wait(ROUND_TIMEOUT_S):
                raise TimeoutError(f"processed {counter.count} of {n} messages in {ROUND_TIMEOUT_S:.0f} s")
            processed = time.perf_counter() - start
        joined = None
        if join is not None:
            join()
            joined = time.perf_counter() - start
        result.rounds.append(Round(enqueued, processed if processed is not None else joined or 0.0, joined))


def run_dramatiq(
    result: Result,
    broker: dramatiq.Broker,
    queue: str,
    *,
    threads: int,
    repeat: int,
    batched: bool = False,
    joinable: bool = True,
    prefetch: int | None = None,
    senders: int = 1,
    scoped: bool = False,
) -> None:
    """The no-op actor on ``broker`` with an in-process Worker; ``batched`` uses ``broker.enqueue_many``,
    ``senders`` > 1 splits the ``actor.send()`` loop over that many threads (as a web server's would),
    ``scoped`` runs the plain ``actor.send()`` loop inside ``with broker.batch():``."""
    counter = Counter()
    actor = dramatiq.actor(broker=broker, queue_name=queue, actor_name="bench_noop", max_retries=0)(
        counter.hit
    )
    worker = Worker(broker, worker_threads=threads)
    if prefetch is not None:
        worker.queue_prefetch = prefetch  # read when the consumers start
    worker.start()
    try:
        join = (lambda: broker.join(queue, timeout=int(ROUND_TIMEOUT_S * 1000))) if joinable else None
        _warm_up(actor.send, counter, join)
        send_all = None
        if batched:

            def send_all(n: int) -> None:
                broker.enqueue_many([actor.message() for _ in range(n)])  # type: ignore[attr-defined]

        elif scoped:

            def send_all(n: int) -> None:
                with broker.batch():  # type: ignore[attr-defined]
                    for _ in range(n):
                        actor.send()

        elif senders > 1:

            def send_all(n: int) -> None:
                def loop(count: int) -> None:
                    for _ in range(count):
                        actor.send()

                shares = [n // senders + (1 if i < n % senders else 0) for i in range(senders)]
                threads_ = [threading.Thread(target=loop, args=(share,)) for share in shares]
                for thread in threads_:
                    thread.start()
                for thread in threads_:
                    thread.join()

        run_rounds(result, send=actor.send, send_all=send_all, counter=counter, join=join, repeat=repeat)
    finally:
        worker.stop()


# -- scenarios ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every scenario needs to know about the run."""

    messages: int
    repeat: int
    threads: int
    kafka: list[str]
    prefix: str  # fresh per run: "bench-<random>."
    redis_url: str
    rabbitmq_url: str
    dk_python: str


@dataclass
class Knobs:
    """Settings of our KafkaBroker to try (None keeps the broker's own default); see bench/kafka_knobs.py."""

    linger_ms: int | None = None  # producer
    prefetch: int | None = None  # the Worker's queue prefetch, which is also our consumer's max_poll_records
    commit_interval_ms: int | None = None
    poll_slice_ms: int | None = None  # dramatiq_kafka_broker.consumer.POLL_SLICE_MS
    pure_python_crc: bool = False  # kafka-python's own CRC-32C even when the crc32c package is installed
    confirm_delivery: bool | None = None  # False: enqueue does not wait for Kafka's ack


def scenario_ours(
    ctx: Context,
    result: Result,
    *,
    batched: bool,
    knobs: Knobs | None = None,
    senders: int = 1,
    scoped: bool = False,
) -> None:
    """Our KafkaBroker, configured from settings like the service's, with Dramatiq's default middleware."""
    import kafka.record.util as kafka_record_util

    from dramatiq_kafka_broker import consumer as ours
    from pipeline.broker import build_broker

    knobs = knobs or Knobs()
    overrides: dict[str, Any] = {}
    if knobs.linger_ms is not None:
        overrides["producer_options"] = {"linger_ms": knobs.linger_ms}
    if knobs.commit_interval_ms is not None:
        overrides["commit_interval_ms"] = knobs.commit_interval_ms
    if knobs.confirm_delivery is not None:
        overrides["confirm_delivery"] = knobs.confirm_delivery
    saved_slice = ours.POLL_SLICE_MS
    saved_crc = kafka_record_util.calc_crc32c.__defaults__
    if knobs.poll_slice_ms is not None:
        ours.POLL_SLICE_MS = knobs.poll_slice_ms
    if knobs.pure_python_crc:
        kafka_record_util.calc_crc32c.__defaults__ = (kafka_record_util.crc32c_py,)
    broker = build_broker(
        bootstrap_servers=ctx.kafka,
        topic_prefix=f"{ctx.prefix}{secrets.token_hex(2)}.",
        group_id="bench",
        middleware=None,
        partitions=PARTITIONS,
        **overrides,
    )
    try:
        run_dramatiq(
            result,
            broker,
            "batch" if batched else "send",
            threads=ctx.threads,
            repeat=ctx.repeat,
            batched=batched,
            prefetch=knobs.prefetch,
            senders=senders,
            scoped=scoped,
        )
    finally:
        broker.close()
        ours.POLL_SLICE_MS = saved_slice
        kafka_record_util.calc_crc32c.__defaults__ = saved_crc


def scenario_ours_proc(ctx: Context, result: Result, *, batched: bool) -> None:
    """Our KafkaBroker with the worker as a separate ``dramatiq`` process (1 process, ``--threads``)."""
    from bench.worker_app import ACTOR, QUEUE
    from pipeline.broker import build_broker

    prefix = f"{ctx.prefix}{'batch' if batched else 'send'}-proc."
    broker = build_broker(
        bootstrap_servers=ctx.kafka,
        topic_prefix=prefix,
        group_id="bench",
        middleware=None,
        partitions=PARTITIONS,
    )
    actor = dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ACTOR)(lambda: None)
    broker.ensure_topics(QUEUE)  # before the worker subscribes, so that its group gets partitions at once
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(ctx.kafka),
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_GROUP_ID": "bench",
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "WORKER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    dramatiq_bin = Path(sys.executable).parent / "dramatiq"
    argv = [str(dramatiq_bin), "bench.worker_app:broker", "--processes", "1", "--threads", str(ctx.threads)]
    log = RESULTS_DIR / f"{prefix.rstrip('.')}-worker.log"
    # (imported here: the dramatiq-kafka child runs this module in a venv without the test harness' needs)
    from tests.livestack import spawn, stop

    worker = spawn(log.stem, [*argv, "--path", str(ROOT)], env=env, logs=RESULTS_DIR)
    try:
        join = lambda: broker.join(QUEUE, timeout=int(ROUND_TIMEOUT_S * 1000))  # noqa: E731
        deadline = time.monotonic() + 90
        while True:  # warm up: the worker has started and its group has the partitions
            actor.send()
            try:
                broker.join(QUEUE, timeout=3000)
                break
            except dramatiq.errors.QueueJoinTimeout:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the dramatiq worker did not start (see {log.name})") from None
        send_all = None
        if batched:

            def send_all(n: int) -> None:
                broker.enqueue_many([actor.message() for _ in range(n)])

        run_rounds(result, send=actor.send, send_all=send_all, counter=None, join=join, repeat=ctx.repeat)
    finally:
        stop(worker, timeout=30)
        broker.close()


def scenario_stub(ctx: Context, result: Result) -> None:
    """Dramatiq's in-memory StubBroker: the ceiling of Dramatiq's own worker loop in one process."""
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    try:
        run_dramatiq(result, broker, "stub", threads=ctx.threads, repeat=ctx.repeat)
    finally:
        broker.close()


def scenario_redis(ctx: Context, result: Result, *, senders: int = 1) -> None:
    """Dramatiq's RedisBroker on the redis-server that ``bench/setup.sh`` started."""
    from dramatiq.brokers.redis import RedisBroker

    namespace = ctx.prefix.rstrip(".")
    broker = RedisBroker(url=ctx.redis_url, namespace=namespace)
    try:
        run_dramatiq(result, broker, "redis", threads=ctx.threads, repeat=ctx.repeat, senders=senders)
    finally:
        keys = list(broker.client.scan_iter(f"{namespace}:*"))
        if keys:
            broker.client.delete(*keys)
        broker.close()


def scenario_rabbitmq(ctx: Context, result: Result, *, confirm: bool) -> None:
    """Dramatiq's RabbitmqBroker; ``confirm`` waits for publisher confirms, as ours waits for Kafka's acks."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.common import dq_name, xq_name

    queue = ctx.prefix.replace("-", "_").replace(".", "_") + ("rabbitmq_confirm" if confirm else "rabbitmq")
    broker = RabbitmqBroker(url=ctx.rabbitmq_url, confirm_delivery=confirm)
    try:
        run_dramatiq(result, broker, queue, threads=ctx.threads, repeat=ctx.repeat)
    finally:
        try:
            for name in (queue, dq_name(queue), xq_name(queue)):
                broker.channel.queue_delete(name)
        finally:
            broker.close()


def scenario_raw(ctx: Context, result: Result, *, sync: bool) -> None:
    """kafka-python alone: produce N small records (acks=all, idempotent, as our producer), consume them
    with a group consumer that commits after every poll.  ``sync`` waits for each record's ack in turn."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"{ctx.prefix}raw-{'sync' if sync else 'batch'}"
    _create_topics(ctx, [topic])
    value = _sample_message_bytes()
    producer = KafkaProducer(bootstrap_servers=ctx.kafka, acks="all", enable_idempotence=True, linger_ms=2)
    counter = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=ctx.kafka,
            group_id=f"{ctx.prefix}raw",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=50)
                if batch:
                    consumer.commit()
                    for records in batch.values():
                        for _ in records:
                            counter.hit()
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            consumer.close(autocommit=False)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        if sync:

            def send() -> None:
                producer.send(topic, value).get(timeout=30)

            send_all = None
        else:

            def send() -> None:
                producer.send(topic, value)
                producer.flush()

            def send_all(n: int) -> None:
                for _ in range(n):
                    producer.send(topic, value)
                producer.flush()

        _warm_up(send, counter, None)
        run_rounds(result, send=send, send_all=send_all, counter=counter, join=None, repeat=ctx.repeat)
        if errors:
            raise errors[0]
    finally:
        stop.set()
        thread.join(10)
        producer.close()


def scenario_dramatiq_kafka(ctx: Context, result: Result) -> None:
    """dramatiq-kafka 0.1.9, run in its own venv (it pins kafka-python 2.0.2) as a child of this module."""
    if not Path(ctx.dk_python).exists():
        raise RuntimeError(f"{ctx.dk_python} is missing: run bench/setup.sh")
    topic = f"{ctx.prefix}dk"
    # Kafka here does not create topics on first use (auto.create.topics.enable=false), and dramatiq-kafka
    # cannot create them.
    _create_topics(ctx, [topic])
    command = [
        ctx.dk_python,
        "-m",
        "bench.brokers",
        "--child-dramatiq-kafka",
        "--kafka",
        ",".join(ctx.kafka),
        "--prefix",
        ctx.prefix,
        "--messages",
        str(ctx.messages),
        "--repeat",
        str(ctx.repeat),
        "--threads",
        str(ctx.threads),
    ]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=ROUND_TIMEOUT_S * (ctx.repeat + 1) + 120,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError("the dramatiq-kafka child did not finish in time") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"child exited {done.returncode}: {' | '.join(tail)}")
    child = json.loads(lines[-1])
    result.rounds = [Round(**r) for r in child["rounds"]]
    result.error = child["error"]
    result.note = child.get("note", "")


def child_dramatiq_kafka(args: argparse.Namespace) -> None:
    """Runs inside .local/bench-venv-dramatiq-kafka: prints the scenario's Result as one JSON line."""
    import dramatiq_kafka

    result = Result("dramatiq-kafka", "dramatiq-kafka 0.1.9, send", args.messages)
    topic = f"{args.prefix}dk"
    try:
        # Its consumer subscribes to the topic named at construction, and its producer writes to the topic
        # named like the message's queue: the queue is named like the topic.
        broker = dramatiq_kafka.KafkaBroker(
            bootstrap_servers=args.kafka, topic=topic, group_id=f"{args.prefix}dk"
        )
        run_dramatiq(result, broker, topic, threads=args.threads, repeat=args.repeat, joinable=False)
        result.note = "no join(): e2e is until processed"
    except Exception as e:  # reported in the table, not a crash of the whole run
        result.error = f"{type(e).__name__}: {e}"
    print(json.dumps(asdict(result)), flush=True)
    os._exit(0)  # its consumer is never closed and its threads would keep the process alive


# -- Kafka housekeeping (kafka-python 3, parent process only) ------------------------------------------------
def _admin(ctx: Context) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=ctx.kafka, client_id="bench")


def _create_topics(ctx: Context, topics: list[str]) -> None:
    from kafka.admin import NewTopic

    admin = _admin(ctx)
    try:
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
        admin.wait_for_topics(topics, timeout_ms=30_000)
    finally:
        admin.close()


def cleanup_kafka(ctx: Context) -> str:
    """Delete every topic and consumer group of this run; returns what was done, for the report."""
    # (not at the top: the dramatiq-kafka child, which imports this module, has no test harness)
    from tests.livestack import delete_topics_with_prefix

    return delete_topics_with_prefix(ctx.kafka, ctx.prefix, client_id="bench-brokers")


def _sample_message_bytes() -> bytes:
    """A record as large as an encoded no-op Dramatiq message, for the raw loop."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="send", actor_name="bench_noop", args=(), kwargs={}, options={}
    )
    return b"x" * len(message.encode())


# -- the report ---------------------------------------------------------------------------------------------
SCENARIOS: dict[str, tuple[str, Callable[[Context, Result], None]]] = {
    "ours-send": ("KafkaBroker, actor.send() loop", lambda c, r: scenario_ours(c, r, batched=False)),
    "ours-send-noconfirm": (
        "KafkaBroker, send(), confirm_delivery off",
        lambda c, r: scenario_ours(c, r, batched=False, knobs=Knobs(confirm_delivery=False)),
    ),
    "ours-batch": ("KafkaBroker, enqueue_many(N)", lambda c, r: scenario_ours(c, r, batched=True)),
    "ours-send-scoped": (
        "KafkaBroker, send() in broker.batch()",
        lambda c, r: scenario_ours(c, r, batched=False, scoped=True),
    ),
    "ours-send-8t": (
        "KafkaBroker, send() from 8 threads",
        lambda c, r: scenario_ours(c, r, batched=False, senders=8),
    ),
    "ours-send-proc": (
        "KafkaBroker, send(), worker process",
        lambda c, r: scenario_ours_proc(c, r, batched=False),
    ),
    "ours-batch-proc": (
        "KafkaBroker, enqueue_many, worker proc.",
        lambda c, r: scenario_ours_proc(c, r, batched=True),
    ),
    "dramatiq-kafka": ("dramatiq-kafka 0.1.9, send()", scenario_dramatiq_kafka),
    "redis": ("RedisBroker, send()", scenario_redis),
    "redis-8t": ("RedisBroker, send() from 8 threads", lambda c, r: scenario_redis(c, r, senders=8)),
    "rabbitmq": ("RabbitmqBroker, send()", lambda c, r: scenario_rabbitmq(c, r, confirm=False)),
    "rabbitmq-confirm": (
        "RabbitmqBroker confirm_delivery, send()",
        lambda c, r: scenario_rabbitmq(c, r, confirm=True),
    ),
    "stub": ("StubBroker, send()", scenario_stub),
    "raw-batch": ("raw kafka-python, N sends + flush", lambda c, r: scenario_raw(c, r, sync=False)),
    "raw-sync": ("raw kafka-python, send().get() each", lambda c, r: scenario_raw(c, r, sync=True)),
}
#: The references of the ratio columns, and the targets of the issue (ratio of e2e rates).
REFERENCES = [
    ("dramatiq-kafka", "dk", 2.0),
    ("redis", "Redis", 1.0),
    ("stub", "Stub", 0.5),
    ("raw-batch", "raw", 0.5),
]


def _fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def render(results: list[Result]) -> str:
    """The table: rates, then the e2e ratio of each row to each reference."""
    by_name = {r.name: r for r in results}
    header = ["scenario", "enqueue/s", "processed/s", "e2e/s"] + [f"vs {short}" for _, short, _ in REFERENCES]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, f"n/a ({r.error})"] + [""] * (len(header) - 2))
            continue
        row = [
            r.label,
            _fmt_rate(r.median_rate("enqueued")),
            _fmt_rate(r.median_rate("processed")),
            _fmt_rate(r.e2e),
        ]
        for ref, _, _ in REFERENCES:
            other = by_name.get(ref)
            if other is None or other.error or not other.e2e or not r.e2e:
                row.append("n/a")
            else:
                row.append(f"{r.e2e / other.e2e:.2f}x")
        rows.append(row)
    widths = [max(len(str(row[i])) for row in [header, *rows] if i < len(row)) for i in range(len(header))]
    widths[1] = min(widths[1], 12)
    lines = []
    for row in [header, *rows]:
        if len(row) > 1 and str(row[1]).startswith("n/a ("):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            cells = [f"{row[0]:<{widths[0]}}"] + [f"{c:>{widths[i + 1]}}" for i, c in enumerate(row[1:])]
            lines.append("  ".join(cells))
        if row is header:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def render_targets(results: list[Result]) -> str:
    """The issue's targets for our broker's rows, met or not."""
    by_name = {r.name: r for r in results}
    out = []
    for ours in ("ours-send", "ours-send-noconfirm", "ours-batch", "ours-send-proc", "ours-batch-proc"):
        mine = by_name.get(ours)
        if mine is None or mine.error or not mine.e2e:
            continue
        checks = []
        for ref, short, factor in REFERENCES:
            other = by_name.get(ref)
            if other is None or other.error or not other.e2e:
                checks.append(f">= {factor:g}x {short}: n/a")
                continue
            ratio = mine.e2e / other.e2e
            checks.append(f">= {factor:g}x {short}: {'met' if ratio >= factor else 'NOT met'} ({ratio:.2f}x)")
        out.append(f"{ours:<19} " + "; ".join(checks))
    return "\n".join(out)


def machine_facts(ctx: Context) -> list[str]:
    """What a reader needs to compare this run with another."""
    import importlib.metadata as md

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("dramatiq", "kafka-python", "redis", "pika"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package} -")
    try:
        import kafka.record.util as kafka_record_util

        crc = (
            "C (crc32c package)"
            if kafka_record_util.crc32c_c is not None
            else "pure Python (no crc32c package)"
        )
    except ImportError:
        crc = "?"
    return [
        f"machine: nproc {len(os.sched_getaffinity(0))}, {cpu}; load average {os.getloadavg()[0]:.2f}",
        f"python {platform.python_version()}; {', '.join(versions)}; "
        "dramatiq-kafka 0.1.9 (kafka-python 2.0.2, own venv)",
        f"kafka {','.join(ctx.kafka)} ({PARTITIONS} partitions per topic, CRC-32C {crc})",
        f"redis {ctx.redis_url}; rabbitmq {ctx.rabbitmq_url}",
        f"{ctx.messages:,} no-op messages per round, median of {ctx.repeat} rounds, "
        f"{ctx.threads} worker threads; prefix {ctx.prefix}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the table, save the figures under bench/results/."""
    parser = argparse.ArgumentParser(prog="python -m bench.brokers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per round (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per scenario; the median is reported")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--only", default="", help=f"comma list of scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--skip", default="", help="comma list of scenarios to leave out")
    parser.add_argument(
        "--kafka", default="", help="bootstrap servers (default: settings' KAFKA_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:15673/%2F")
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-dramatiq-kafka", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_dramatiq_kafka:
        child_dramatiq_kafka(args)
        return 0

    if not args.kafka:
        from pipeline import settings

        args.kafka = ",".join(settings.KAFKA_BOOTSTRAP_SERVERS)
    ctx = Context(
        messages=args.messages,
        repeat=args.repeat,
        threads=args.threads,
        kafka=[s for s in args.kafka.split(",") if s],
        prefix=args.prefix or f"bench-{secrets.token_hex(4)}.",
        redis_url=args.redis_url,
        rabbitmq_url=args.rabbitmq_url,
        dk_python=str(DK_PYTHON),
    )
    chosen = [s for s in (args.only.split(",") if args.only else SCENARIOS) if s]
    skipped = set(filter(None, args.skip.split(",")))
    unknown = [s for s in [*chosen, *skipped] if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    facts = machine_facts(ctx)
    print("\n".join(facts), flush=True)
    results = []
    try:
        for name in chosen:
            if name in skipped:
                continue
            label, run = SCENARIOS[name]
            result = Result(name, label, ctx.messages)
            print(f"... {name}", end="", flush=True)
            started = time.monotonic()
            try:
                run(ctx, result)
            except Exception as e:  # one broker failing must not hide the others' figures
                result.error = f"{type(e).__name__}: {e}"[:200]
            print(
                f" {time.monotonic() - started:.1f} s" + (f" ({result.error})" if result.error else ""),
                flush=True,
            )
            results.append(result)
    finally:
        try:
            print(cleanup_kafka(ctx))
        except Exception as e:
            print(f"cleanup of Kafka failed: {type(e).__name__}: {e}")

    print()
    print(render(results))
    print()
    print("targets (e2e):")
    print(render_targets(results))
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")
    saved = RESULTS_DIR / f"brokers-{time.strftime('%Y%m%dT%H%M%S')}.json"
    saved.write_text(json.dumps({"facts": facts, "results": [asdict(r) for r in results]}, indent=2))
    print(f"figures saved to {saved.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
