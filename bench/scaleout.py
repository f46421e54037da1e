"""Scale-out: throughput over worker hosts, and how quiet the group stays while hosts come and go.

    python -m bench.scaleout                       # the curve (1, 2, 4, 6, 8 hosts) and the events
    python -m bench.scaleout --only curve --hosts 1,2,4 --rows 20000
    python -m bench.scaleout --only events --rounds 5
    python -m bench.scaleout --only soak --soak-minutes 10 --soak-hosts 4
    python -m bench.scaleout --only groups --rows 20000 --rounds 2   # 4 hosts: classic vs share group

A *host* is the Procfile's worker line run with one process (``dramatiq pipeline --processes 1``, so one
group member per host) in a CPU cgroup of its own capped at ``--cap`` of a core (``tests.livestack.CpuCap``,
a 10 ms CFS period), talking to Kafka and PostgreSQL on loopback as a remote host would over the network.
One web (``uvicorn web.app:app``, uncapped), this checkout's Kafka and PostgreSQL (``source .local/env``),
a database and a topic prefix of the run's own, dropped at the end.

**Curve** (``--only curve``): for each N of ``--hosts``, hosts are added until N run and the group has
settled; then a CSV of ``--rows`` rows (``BATCH_CHUNK_SIZE`` records a message) is posted and timed from
the upload to its last outcome (rows/s), and single posts at ``--rate`` per second for ``--seconds`` give
request -> row latency (each row's ``users.created_at`` against its request's due time: p50, p99). Each
point also records the CPU the hosts used (``cpuacct``) and how often their cap held them back, and the
machine's CPU (``/proc/stat``): where the curve bends, these say whether the hosts, or the machine, ran out.
The cap of the speed-up that a consumer group allows is ``P / ceil(P / N)`` for P partitions.

**Events** (``--only events``): two hosts store a large batch; in each round a third host joins, 12 s later
the oldest host leaves by SIGTERM, 12 s later another is SIGKILLed (then the round restores two hosts).
For each event: the longest stretch in which no host stored anything (distinct ``users.created_at``, one
per storing transaction) in the 8 s before the event, and in the ``--after`` seconds from it.

**Group types** (``--only groups``): on a queue of ``--group-partitions`` (2) partitions, ``--group-hosts``
(4) hosts in a classic consumer group (where hosts beyond the partitions idle), then the same hosts in a
share group (``KAFKA_GROUP_TYPE=share``, KIP-932: every host reads every partition), each on a stack of its
own: the curve's point for that many hosts (rows/s of a CSV, single posts' latency, CPU) and their ratio;
then, in the share group, ``--rounds`` rounds of the events above (a host joins, one leaves, one crashes)
and the longest stretches without a store around each.

**Soak** (``--only soak``): single posts at ``--rate`` for ``--soak-minutes`` on ``--soak-hosts`` hosts; the
resident memory, threads and open file descriptors of the web and of each worker process every 10 s, the
backlog (posts due but not stored), and at the end whether every accepted post was stored once.

Figures go to ``bench/results/scaleout-<time>.json`` and the curve to a PNG beside it
(``--plot docs/scaleout.png`` writes it there).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import pipeline_data as data
from bench.pipeline_load import open_loop
from pipeline import settings
from tests.livestack import CpuCap, Stack, cpu_caps_problem, new_stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
#: Seconds to wait for a batch's or a load's last outcome before giving up on it.
COMMIT_TIMEOUT_S = 900.0
#: Seconds with no change of assignment after which a group counts as settled.
SETTLE_QUIET_S = 3.0
#: Seconds between the events of one round (a join, then a leave, then a kill).
EVENT_SPACING_S = 12.0
#: Seconds before an event whose longest stretch is its baseline.
BEFORE_S = 8.0
#: Seconds between two samples of the soak.
SOAK_SAMPLE_S = 10.0


@dataclass
class Host:
    """One capped worker host."""

    name: str
    cap: CpuCap
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)


@dataclass
class Run:
    """The run's stack, hosts and options."""

    options: argparse.Namespace
    stack: Stack
    tag: str
    hosts: list[Host] = field(default_factory=list)
    retired: list[Host] = field(default_factory=list)
    counter: int = 0

    @property
    def users_topic(self) -> str:
        return f"{self.stack.topic_prefix}users"


def _say(text: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- hosts -----------------------------------------------------------------------------------------------
def add_host(run: Run) -> Host:
    """Start one more capped host."""
    run.counter += 1
    cap = CpuCap(f"bup-{run.tag}-h{run.counter}", run.options.cap)
    index = len(run.stack.workers)
    process = run.stack.start_worker(processes=1, threads=run.options.threads, cap=cap)
    host = Host(f"h{run.counter}", cap, process, run.stack.logs / f"worker{index}.log")
    run.hosts.append(host)
    return host


def remove_host(run: Run, host: Host, sig: int) -> None:
    """Stop ``host`` with ``sig`` (SIGTERM: a graceful leave; SIGKILL: a crash), without waiting."""
    run.hosts.remove(host)
    run.retired.append(host)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(host.process.pid, sig)


def reap(run: Run) -> None:
    """Wait for the retired hosts to end and remove their cgroups."""
    for host in run.retired:
        Stack.stop(host.process)
        host.cap.remove()
    run.retired.clear()


def _assignments(host: Host, topic: str) -> int:
    """How often the host's consumer of ``topic`` was given its partitions (a consumer group's or a share
    group's assignment, as each logs it)."""
    try:
        text = host.log.read_text(errors="replace")
    except OSError:
        return 0
    return text.count(f"Partitions assigned to {topic}:") + text.count(f" assigned {topic}: ")


def settle(run: Run, timeout: float = 90.0) -> float:
    """Wait until every host has been assigned its share of the queue and none moved for a while; the
    seconds it took."""
    started = time.monotonic()
    last: tuple[int, ...] = ()
    changed = time.monotonic()
    while time.monotonic() - started < timeout:
        seen = tuple(_assignments(h, run.users_topic) for h in run.hosts)
        if seen != last:
            last, changed = seen, time.monotonic()
        if all(seen) and time.monotonic() - changed >= SETTLE_QUIET_S:
            return time.monotonic() - started
        for host in run.hosts:
            if host.process.poll() is not None:
                raise RuntimeError(f"host {host.name} exited with {host.process.returncode}; see {host.log}")
        time.sleep(0.25)
    raise RuntimeError(f"the group did not settle in {timeout:.0f} s ({last}); see {run.stack.logs}")


# -- machine figures -------------------------------------------------------------------------------------
def _machine_ticks() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@contextlib.contextmanager
def cpu_figures(run: Run, into: dict[str, Any]) -> Iterator[None]:
    """CPU of the machine (share of all cores busy) and of the hosts while the block runs."""
    busy0, total0 = _machine_ticks()
    hosts = list(run.hosts)
    used0 = [h.cap.cpu_seconds() for h in hosts]
    throttled0 = [h.cap.throttled() for h in hosts]
    started = time.monotonic()
    yield
    seconds = time.monotonic() - started
    busy1, total1 = _machine_ticks()
    into["machine_busy"] = (busy1 - busy0) / max(1, total1 - total0)
    into["host_cores"] = [round((h.cap.cpu_seconds() - u) / seconds, 3) for h, u in zip(hosts, used0)]
    into["host_throttled_s"] = [round(h.cap.throttled()[1] - t[1], 2) for h, t in zip(hosts, throttled0)]


# -- database --------------------------------------------------------------------------------------------
def _scalar(run: Run, query: str, *params: Any) -> Any:
    rows = run.stack.sql(query, *params)
    return rows[0][0] if rows else None


def wait_batch(run: Run, batch_id: str, count: int) -> float:
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while time.monotonic() < deadline:
        if _scalar(run, "SELECT count(*) FROM submissions WHERE batch_id = %s", batch_id) >= count:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"batch {batch_id} not done in {COMMIT_TIMEOUT_S:.0f} s; see {run.stack.logs}")


def post_batch(run: Run, rows: int, tag: str) -> tuple[str, float]:
    """Upload a CSV of ``rows`` rows; its batch id and the monotonic time the upload started."""
    body = data.csv_body(tag, rows)
    started = time.monotonic()
    response = httpx.post(
        run.stack.url + "/api/users", content=body, headers={"content-type": "text/csv"}, timeout=600
    )
    if response.status_code != 202:
        raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")
    return str(response.json()["batch_id"]), started


def store_times(run: Run, since_epoch: float) -> list[float]:
    """Distinct ``users.created_at`` since ``since_epoch`` (one per storing transaction), in epoch seconds."""
    rows = run.stack.sql(
        "SELECT DISTINCT extract(epoch FROM created_at)::float8 FROM users "
        "WHERE created_at >= to_timestamp(%s) ORDER BY 1",
        since_epoch,
    )
    return [r[0] for r in rows]


def longest_stretch(times: list[float], start: float, end: float) -> float:
    """The longest time in ``[start, end]`` with no store, counting from the last store before ``start``
    (a stretch under way at ``start`` counts in full) to the first after ``end``."""
    before = [t for t in times if t < start]
    inside = [t for t in times if start <= t <= end]
    after = [t for t in times if t > end]
    points = ([before[-1]] if before else [start]) + inside + ([after[0]] if after else [end])
    return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


# -- the group coordinator's own account ----------------------------------------------------------------
_KAFKA_LOG_LINE = re.compile(r"^\[(\S+ \S+)\] INFO \[GroupCoordinator[^]]*\] (.*)$")


def kafka_server_log() -> Path | None:
    """This checkout's Kafka node 1's log (``./run.local.sh services up``), when it runs here."""
    path = ROOT / ".local" / "kafka" / "node-1" / "logs" / "server.log"
    return path if path.exists() else None


def rebalances(prefix: str) -> list[dict[str, Any]]:
    """Every rebalance of the run's groups as Kafka's group coordinator logged it: from "Preparing to
    rebalance" to "Stabilized", with its reason; what the clients cannot tell (who the group waited for)."""
    path = kafka_server_log()
    if path is None:
        return []
    opened: dict[str, tuple[float, str]] = {}
    found = []
    with path.open(errors="replace") as log:
        for line in log:
            if prefix not in line:
                continue
            match = _KAFKA_LOG_LINE.match(line)
            if not match:
                continue
            at = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            text = match.group(2)
            group = re.search(r"group (\S+)", text)
            if group is None:
                continue
            name = group.group(1)
            if text.startswith("Preparing to rebalance") and name not in opened:
                reason = re.search(r"\(reason: (.*)\)", text)
                opened[name] = (at, reason.group(1)[:160] if reason else "?")
            elif text.startswith("Stabilized group") and name in opened:
                started, reason = opened.pop(name)
                found.append({"group": name, "at": started, "seconds": at - started, "reason": reason})
    return found


# -- the curve -------------------------------------------------------------------------------------------
def measure_point(run: Run, hosts: int) -> dict[str, Any]:
    opts = run.options
    while len(run.hosts) < hosts:
        add_host(run)
    settled = settle(run)
    # Warm-up: every host's connections open, its first messages handled, before any clock starts.
    warm_id, _ = post_batch(run, 200 * hosts, f"{run.tag}w{hosts}")
    wait_batch(run, warm_id, 200 * hosts)
    point: dict[str, Any] = {"hosts": hosts, "settle_s": round(settled, 1)}
    partitions = opts.partitions
    point["cap"] = partitions / math.ceil(partitions / hosts)
    with cpu_figures(run, point):
        batch_id, started = post_batch(run, opts.rows, f"{run.tag}c{hosts}")
        done = wait_batch(run, batch_id, opts.rows)
    point["rows_per_s"] = opts.rows / (done - started)
    point["batch_s"] = done - started
    point["statuses"] = dict(
        run.stack.sql("SELECT status, count(*) FROM submissions WHERE batch_id = %s GROUP BY 1", batch_id)
    )
    point.update(single_latency(run, f"{run.tag}s{hosts}"))
    return point


def single_latency(run: Run, tag: str) -> dict[str, Any]:
    """Single posts at ``--rate``: request -> row p50 and p99, from each request's due time."""
    opts = run.options
    count = round(opts.rate * opts.seconds)
    offset = time.time() - time.monotonic()
    result = open_loop(run.stack.url, data.json_bodies(tag, count), rate=opts.rate)
    started_epoch = result.started + offset
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    pattern = f"% Bench{tag}n%"
    while time.monotonic() < deadline:
        rows = run.stack.sql(
            "SELECT name, extract(epoch FROM created_at)::float8 FROM users WHERE name LIKE %s", pattern
        )
        if len(rows) >= result.accepted:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"single posts {tag}: {len(rows)} of {result.accepted} stored")
    latencies = sorted(
        created - (started_epoch + int(re.search(r"n(\d+)$", name).group(1)) / opts.rate)  # type: ignore[union-attr]
        for name, created in rows
    )

    def at(share: float) -> float:
        return latencies[max(0, math.ceil(share * len(latencies)) - 1)]

    return {"single_p50_s": at(0.5), "single_p99_s": at(0.99), "single_errors": dict(result.errors)}


def curve(run: Run) -> list[dict[str, Any]]:
    points = []
    for hosts in run.options.hosts:
        _say(f"curve: {hosts} host(s)")
        point = measure_point(run, hosts)
        points.append(point)
        _say(
            f"  {hosts} hosts: {point['rows_per_s']:.0f} rows/s; "
            f"singles p50 {point['single_p50_s'] * 1000:.0f} "
            f"ms p99 {point['single_p99_s'] * 1000:.0f} ms; machine {point['machine_busy']:.0%} busy; "
            f"hosts {point['host_cores']} cores, throttled {point['host_throttled_s']} s"
        )
    base = points[0]["rows_per_s"] / points[0]["cap"]  # one host: its cap is 1
    for point in points:
        point["speedup"] = point["rows_per_s"] / base
        point["of_cap"] = point["speedup"] / point["cap"]
    return points


# -- events ----------------------------------------------------------------------------------------------
def events(run: Run) -> list[dict[str, Any]]:
    """Rounds of join, graceful leave and crash under a steady load; the longest stretches around each."""
    opts = run.options
    rounds: list[dict[str, Any]] = []
    for number in range(1, opts.rounds + 1):
        while len(run.hosts) < 2:
            add_host(run)
        settle(run)
        # Enough work for the whole round at two or three hosts' pace.
        batch_id, _ = post_batch(run, opts.event_rows, f"{run.tag}e{number}")
        time.sleep(EVENT_SPACING_S)
        marks: dict[str, float] = {}
        marks["join"] = time.time()
        add_host(run)
        time.sleep(EVENT_SPACING_S)
        marks["leave"] = time.time()
        remove_host(run, run.hosts[0], signal.SIGTERM)
        time.sleep(EVENT_SPACING_S)
        marks["kill"] = time.time()
        remove_host(run, run.hosts[0], signal.SIGKILL)
        time.sleep(opts.after + 2)
        times = store_times(run, marks["join"] - BEFORE_S - 5)
        # A join's and a leave's window ends where the next event starts; a crash's runs the session
        # timeout out, and the takeover after it.
        spans = {"join": EVENT_SPACING_S, "leave": EVENT_SPACING_S, "kill": opts.after}
        result: dict[str, Any] = {"round": number, "marks": marks, "stores": times}
        for event, at in marks.items():
            result[f"{event}_before"] = longest_stretch(times, at - BEFORE_S, at)
            result[f"{event}_after"] = longest_stretch(times, at, min(at + spans[event], time.time()))
        rounds.append(result)
        _say(
            f"round {number}: "
            + "; ".join(
                f"{e} before {result[e + '_before']:.2f} s after {result[e + '_after']:.2f} s" for e in marks
            )
        )
        # Drain the batch before the next round, with two hosts again.
        reap(run)
        while len(run.hosts) < 2:
            add_host(run)
        wait_batch(run, batch_id, opts.event_rows)
        left = _scalar(
            run,
            "SELECT count(*) FROM submissions WHERE batch_id = %s AND created_at > to_timestamp(%s)",
            batch_id,
            marks["kill"] + opts.after,
        )
        result["rows_after_window"] = left
    return rounds


def summarize_events(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for event in ("join", "leave", "kill"):
        before = [r[f"{event}_before"] for r in rounds]
        after = [r[f"{event}_after"] for r in rounds]
        out[event] = {
            "before_p50": statistics.median(before),
            "before_max": max(before),
            "after_p50": statistics.median(after),
            "after_max": max(after),
            "added_max": max(r[f"{event}_after"] - r[f"{event}_before"] for r in rounds),
        }
    return out


# -- group types -----------------------------------------------------------------------------------------
def group_types(options: argparse.Namespace) -> dict[str, Any]:
    """The same hosts on a queue of few partitions in a consumer group, then in a share group; and, in the
    share group, hosts joining and leaving.  Each group type on a stack of its own (topics, database)."""
    partitions, hosts = options.group_partitions, options.group_hosts
    found: dict[str, Any] = {"partitions": partitions, "hosts": hosts}
    for group_type in ("classic", "share"):
        _say(f"groups: {hosts} hosts in a {group_type} group on {partitions} partitions")
        opts = argparse.Namespace(**{**vars(options), "partitions": partitions})
        env = {**_stack_env(opts), "KAFKA_GROUP_TYPE": group_type}
        stack = new_stack(
            ",".join(settings.KAFKA_BOOTSTRAP_SERVERS), settings.DATABASE_URL, kind="scale", env=env
        )
        run = Run(options=opts, stack=stack, tag=uuid.uuid4().hex[:6])
        try:
            stack.start_web()
            stack.wait_ready()
            _say(f"  logs in {stack.logs}")
            point = measure_point(run, hosts)
            found[group_type] = point
            _say(
                f"  {group_type}: {point['rows_per_s']:.0f} rows/s; hosts {point['host_cores']} cores; "
                f"singles p50 {point['single_p50_s'] * 1000:.0f} ms p99 {point['single_p99_s'] * 1000:.0f} ms"
            )
            if group_type == "share" and options.rounds:
                for host in list(run.hosts):
                    remove_host(run, host, signal.SIGTERM)
                reap(run)
                found["share_events"] = events(run)
                found["share_events_summary"] = summarize_events(found["share_events"])
        finally:
            for host in list(run.hosts):
                remove_host(run, host, signal.SIGTERM)
            reap(run)
            stack.close(delete_topics=True)
    found["ratio"] = found["share"]["rows_per_s"] / found["classic"]["rows_per_s"]
    return found


def render_group_types(found: dict[str, Any]) -> str:
    lines = [
        f"| {found['hosts']} hosts, {found['partitions']} partitions | rows/s | request->row p50 / p99 "
        "| hosts' CPU (cores each) | machine busy |",
        "|---|---:|---|---|---:|",
    ]
    for group_type in ("classic", "share"):
        p = found[group_type]
        lines.append(
            f"| {group_type} group | {p['rows_per_s']:.0f} | "
            f"{p['single_p50_s'] * 1000:.0f} / {p['single_p99_s'] * 1000:.0f} ms | "
            f"{' '.join(f'{c:.2f}' for c in p['host_cores'])} | {p['machine_busy']:.0%} |"
        )
    lines.append(f"\nshare / classic: {found['ratio']:.2f}x")
    if "share_events_summary" in found:
        lines.append("\nIn the share group:\n")
        lines.append(render_events(found["share_events_summary"], len(found["share_events"])))
    return "\n".join(lines)


def _stack_env(options: argparse.Namespace) -> dict[str, str]:
    """The environment of a run's web and hosts."""
    return {
        "KAFKA_PARTITIONS": str(options.partitions),
        "BATCH_CHUNK_SIZE": str(options.chunk),
        "WORKER_METRICS_PORT": "0",
        "WORKER_PROCESSES": "1",
        **dict(pair.split("=", 1) for pair in options.env),
    }


# -- soak ------------------------------------------------------------------------------------------------
def _proc_figures(pid: int) -> dict[str, int]:
    """Resident memory (KiB), threads and open file descriptors of a process."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _worker_process(host: Host) -> int:
    """The pid of the host's Dramatiq worker process (the main process forks it; ``exec`` kept the pid)."""
    forked = _children(host.process.pid)
    return forked[0] if forked else host.process.pid


def soak(run: Run) -> dict[str, Any]:
    """Single posts at ``--rate`` for ``--soak-minutes`` on ``--soak-hosts`` hosts: memory, threads, file
    descriptors of the web and each worker process, and the backlog, every ``SOAK_SAMPLE_S`` seconds."""
    import threading

    opts = run.options
    while len(run.hosts) < opts.soak_hosts:
        add_host(run)
    settle(run)
    warm_id, _ = post_batch(run, 1000, f"{run.tag}sw")
    wait_batch(run, warm_id, 1000)
    assert run.stack.web is not None
    processes = {"web": run.stack.web.pid} | {h.name: _worker_process(h) for h in run.hosts}
    tag = f"{run.tag}k"
    count = round(opts.rate * opts.soak_minutes * 60)
    result: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: result.update(
            load=open_loop(run.stack.url, data.json_bodies(tag, count), rate=opts.rate)
        )
    )
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    load.start()
    pattern = f"% Bench{tag}n%"
    while load.is_alive():
        sample: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
        for name, pid in processes.items():
            sample[name] = _proc_figures(pid)
        stored = _scalar(run, "SELECT count(*) FROM users WHERE name LIKE %s", pattern)
        due = min(count, int((time.monotonic() - started) * opts.rate))
        sample["backlog"] = max(0, due - stored)
        samples.append(sample)
        _say(
            f"soak {sample['t']:.0f} s: backlog {sample['backlog']}; "
            f"web {sample['web']['rss_kib'] // 1024} MiB; "
            + " ".join(f"{h.name} {sample[h.name]['rss_kib'] // 1024} MiB" for h in run.hosts)
        )
        time.sleep(SOAK_SAMPLE_S)
    load.join()
    accepted = result["load"].accepted
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while _scalar(run, "SELECT count(*) FROM users WHERE name LIKE %s", pattern) < accepted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    statuses = dict(
        run.stack.sql(
            "SELECT s.status, count(*) FROM submissions s JOIN users u ON u.id = s.user_id "
            "WHERE u.name LIKE %s GROUP BY 1",
            pattern,
        )
    )
    stored = _scalar(run, "SELECT count(*) FROM users WHERE name LIKE %s", pattern)
    warm = [x for x in samples if x["t"] >= opts.soak_warmup_s] or samples
    growth = {}
    for name in processes:
        first, last = warm[0][name], warm[-1][name]
        growth[name] = {
            "rss_mib": (round(first["rss_kib"] / 1024, 1), round(last["rss_kib"] / 1024, 1)),
            "rss_growth": round(last["rss_kib"] / first["rss_kib"] - 1, 3),
            "threads": (min(x[name]["threads"] for x in warm), max(x[name]["threads"] for x in warm)),
            "fds": (min(x[name]["fds"] for x in warm), max(x[name]["fds"] for x in warm)),
        }
    return {
        "sent": result["load"].sent,
        "accepted": accepted,
        "errors": dict(result["load"].errors),
        "stored": stored,
        "lost": accepted - stored,
        "statuses": statuses,
        "backlog_max": max(x["backlog"] for x in warm),
        "growth": growth,
        "samples": samples,
    }


def render_soak(soak_result: dict[str, Any], options: argparse.Namespace) -> str:
    lines = [
        f"{options.soak_minutes:g} min at {options.rate:g} posts/s on {options.soak_hosts} hosts: "
        f"{soak_result['accepted']:,} accepted, {soak_result['stored']:,} stored, "
        f"lost {soak_result['lost']}, "
        f"outcomes {soak_result['statuses']}, errors {soak_result['errors']}, largest backlog "
        f"{soak_result['backlog_max']} posts",
        "",
        f"| process | RSS after {options.soak_warmup_s:g} s -> at the end | growth | threads (min-max) "
        "| open fds (min-max) |",
        "|---|---|---:|---|---|",
    ]
    for name, g in soak_result["growth"].items():
        lines.append(
            f"| {name} | {g['rss_mib'][0]} -> {g['rss_mib'][1]} MiB | {g['rss_growth']:+.1%} | "
            f"{g['threads'][0]}-{g['threads'][1]} | {g['fds'][0]}-{g['fds'][1]} |"
        )
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------------------------
def render_curve(points: list[dict[str, Any]], partitions: int) -> str:
    lines = [
        f"| hosts | rows/s | speed-up | group's cap (P={partitions}) | of cap | request->row p50 / p99 "
        "| hosts' CPU (cores each) | throttled s | machine busy |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['hosts']} | {p['rows_per_s']:.0f} | {p['speedup']:.2f}x | {p['cap']:.2f}x | "
            f"{p['of_cap']:.0%} | {p['single_p50_s'] * 1000:.0f} / {p['single_p99_s'] * 1000:.0f} ms | "
            f"{' '.join(f'{c:.2f}' for c in p['host_cores'])} | "
            f"{' '.join(f'{t:.1f}' for t in p['host_throttled_s'])} | {p['machine_busy']:.0%} |"
        )
    return "\n".join(lines)


def render_events(summary: dict[str, dict[str, float]], rounds: int) -> str:
    lines = [
        f"| event ({rounds} rounds) | longest stretch before, p50 / max | after, p50 / max | most added |",
        "|---|---|---|---:|",
    ]
    for event, s in summary.items():
        lines.append(
            f"| {event} | {s['before_p50']:.2f} / {s['before_max']:.2f} s | "
            f"{s['after_p50']:.2f} / {s['after_max']:.2f} s | {s['added_max']:+.2f} s |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path, facts: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = [p["hosts"] for p in points]
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(hosts, [p["rows_per_s"] for p in points], "o-", label="CSV batch, rows/s")
    base = points[0]["rows_per_s"] / points[0]["hosts"]
    ax.plot(hosts, [base * p["cap"] for p in points], "--", color="grey", label="group's cap: P / ceil(P/N)")
    ax2 = ax.twinx()
    ax2.plot(hosts, [p["machine_busy"] * 100 for p in points], "s:", color="tab:red", label="machine busy %")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("machine CPU busy, %")
    ax.set_xlabel("worker hosts (one process, capped)")
    ax.set_ylabel("rows per second")
    ax.set_xticks(hosts)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("Throughput over hosts")
    lat.plot(hosts, [p["single_p50_s"] * 1000 for p in points], "o-", label="p50")
    lat.plot(hosts, [p["single_p99_s"] * 1000 for p in points], "o-", label="p99")
    lat.set_xlabel("worker hosts")
    lat.set_ylabel("ms")
    lat.set_xticks(hosts)
    lat.set_title("Single posts at a fixed rate: request -> row")
    lat.legend(fontsize=8)
    fig.suptitle(facts, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def combine(paths: list[Path]) -> dict[int, list[dict[str, Any]]]:
    """The curves of several runs (their JSON files), by partition count: for each N, the run whose rows/s
    is the median of the runs' (so that one point's figures stay those of one run)."""
    by_partitions: dict[int, list[list[dict[str, Any]]]] = {}
    for path in paths:
        result = json.loads(path.read_text())
        if "curve" in result:
            by_partitions.setdefault(int(result["options"]["partitions"]), []).append(result["curve"])
    combined = {}
    for partitions, curves in by_partitions.items():
        points = []
        for hosts in sorted({p["hosts"] for curve in curves for p in curve}):
            runs = sorted(
                (p for curve in curves for p in curve if p["hosts"] == hosts), key=lambda p: p["rows_per_s"]
            )
            points.append({**runs[len(runs) // 2], "runs": [round(p["rows_per_s"]) for p in runs]})
        base = points[0]["rows_per_s"] / points[0]["cap"]
        for point in points:
            point["speedup"] = point["rows_per_s"] / base
            point["of_cap"] = point["speedup"] / point["cap"]
        combined[partitions] = points
    return combined


def plot_report(curves: dict[int, list[dict[str, Any]]], path: Path) -> None:
    """One PNG of several partition counts' median curves: rows/s against the group's cap, and latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for partitions, points in sorted(curves.items()):
        hosts = [p["hosts"] for p in points]
        line = ax.plot(hosts, [p["rows_per_s"] for p in points], "o-", label=f"{partitions} partitions")[0]
        base = points[0]["rows_per_s"]
        ax.plot(
            hosts,
            [base * p["cap"] for p in points],
            "--",
            color=line.get_color(),
            alpha=0.5,
            label="its cap, P / ceil(P / N) x 1 host",
        )
        lat.plot(
            hosts, [p["single_p99_s"] * 1000 for p in points], "o-", label=f"p99, {partitions} partitions"
        )
        lat.plot(
            hosts,
            [p["single_p50_s"] * 1000 for p in points],
            "o:",
            color=lat.lines[-1].get_color(),
            label=f"p50, {partitions} partitions",
        )
    busy = curves[max(curves)]
    ax2 = ax.twinx()
    ax2.plot(
        [p["hosts"] for p in busy],
        [p["machine_busy"] * 100 for p in busy],
        "s:",
        color="tab:red",
        label=f"machine busy % ({max(curves)} partitions)",
    )
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("machine CPU busy, % of 2 cores")
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("worker hosts (one process each, capped at 0.2 core)")
    ax.set_ylabel("CSV rows stored per second")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Throughput over hosts (median of the runs)")
    lat.set_yscale("log")
    lat.set_xlabel("worker hosts")
    lat.set_ylabel("request -> row, ms (log)")
    lat.set_title("Single posts at 50/s")
    lat.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def facts(options: argparse.Namespace) -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"hosts capped at "
        f"{options.cap:g} core, {options.threads} threads; {options.partitions} partitions; "
        f"BATCH_CHUNK_SIZE {options.chunk}; CSV {options.rows:,} rows; singles {options.rate:g}/s; "
        f"load before {load[0]:.2f}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,2,4,6,8", help="host counts of the curve (1,2,4,6,8)")
    parser.add_argument("--cap", type=float, default=0.2, help="cores per host (0.2)")
    parser.add_argument("--threads", type=int, default=settings.WORKER_THREADS, help="threads per host")
    parser.add_argument("--partitions", type=int, default=settings.KAFKA_PARTITIONS, help="partitions")
    parser.add_argument("--chunk", type=int, default=100, help="records per batch message (100)")
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the curve's CSV (40,000)")
    parser.add_argument("--rate", type=float, default=50.0, help="single posts per second (50)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of single posts (10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of join/leave/kill (5)")
    parser.add_argument("--event-rows", type=int, default=100_000, help="rows of each event round's batch")
    parser.add_argument("--after", type=float, default=14.0, help="seconds measured after a crash (14)")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="length of the soak (10)")
    parser.add_argument("--soak-hosts", type=int, default=4, help="hosts during the soak (4)")
    parser.add_argument("--soak-warmup-s", type=float, default=60.0, help="soak seconds before the baseline")
    parser.add_argument("--group-partitions", type=int, default=2, help="partitions of --only groups (2)")
    parser.add_argument("--group-hosts", type=int, default=4, help="hosts of --only groups (4)")
    parser.add_argument(
        "--only", default="curve,events", help="curve, events, groups, soak (comma-separated)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for web and hosts")
    parser.add_argument("--plot", type=Path, help="also write the curve's PNG here")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="run nothing: the median curve of these runs' JSON files"
    )
    options = parser.parse_args(argv)
    options.hosts = [int(n) for n in options.hosts.split(",")]
    options.only = set(options.only.split(","))
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    if options.report:
        for partitions, points in sorted(combine(options.report).items()):
            print(
                f"P={partitions}, the median of {len(points[0]['runs'])} runs for each N (all runs' rows/s: "
                + "; ".join(f"{p['hosts']}: {p['runs']}" for p in points)
                + ")"
            )
            print(render_curve(points, partitions))
        if options.plot:
            plot_report(combine(options.report), options.plot)
        return 0
    problem = cpu_caps_problem()
    if problem:
        print(f"bench.scaleout needs CPU caps: {problem}", file=sys.stderr)
        return 2
    header = facts(options)
    print(header, flush=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if options.only == {"groups"}:
        # Stacks of its own, one per group type.
        found = {"facts": header, "options": {k: str(v) for k, v in vars(options).items()}}
        try:
            found["groups"] = group_types(options)
            print(render_group_types(found["groups"]), flush=True)
        finally:
            path = RESULTS_DIR / f"scaleout-groups-{stamp}.json"
            path.write_text(json.dumps(found, indent=1, default=str))
            _say(f"figures: {path}")
        return 0
    env = _stack_env(options)
    stack = new_stack(
        ",".join(settings.KAFKA_BOOTSTRAP_SERVERS), settings.DATABASE_URL, kind="scale", env=env
    )
    run = Run(options=options, stack=stack, tag=uuid.uuid4().hex[:6])
    results: dict[str, Any] = {"facts": header, "options": {k: str(v) for k, v in vars(options).items()}}
    try:
        stack.start_web()
        stack.wait_ready()
        _say(f"logs in {stack.logs}")
        if "curve" in options.only:
            results["curve"] = curve(run)
            print(render_curve(results["curve"], options.partitions), flush=True)
            png = RESULTS_DIR / f"scaleout-{stamp}.png"
            plot(results["curve"], png, header)
            if options.plot:
                plot(results["curve"], options.plot, header)
            _say(f"plot: {png}")
            for host in list(run.hosts):
                remove_host(run, host, signal.SIGTERM)
            reap(run)
        if "events" in options.only:
            results["events"] = events(run)
            results["events_summary"] = summarize_events(results["events"])
            print(render_events(results["events_summary"], options.rounds), flush=True)
        if "soak" in options.only:
            results["soak"] = soak(run)
            print(render_soak(results["soak"], options), flush=True)
        moves = rebalances(stack.topic_prefix)
        results["rebalances"] = moves
        if moves:
            slow = max(moves, key=lambda m: m["seconds"])
            _say(
                f"{len(moves)} rebalances; the longest {slow['seconds']:.1f} s "
                f"({slow['group']}: {slow['reason']})"
            )
    finally:
        for host in list(run.hosts):
            remove_host(run, host, signal.SIGTERM)
        reap(run)
        stack.close(delete_topics=True)
        path = RESULTS_DIR / f"scaleout-{stamp}.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        _say(f"figures: {path}; postgres {urlsplit(settings.DATABASE_URL).netloc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
