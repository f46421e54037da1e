"""End-to-end benchmark of the user pipeline: users per second from the HTTP
request to the committed row, for single posts and for CSV batches, and the API's latency at a fixed
request rate, each beside its baseline measured in the same run.

    python -m bench.pipeline [--quick] [--large] [--profile]

What runs (the web and worker processes as the Procfile runs them, on the real Kafka and PostgreSQL of
``./run.local.sh services up``, with a topic prefix and a database of their own, dropped at the end):

* ``web``: ``uvicorn web.app:app --workers 1 --proxy-headers ...``;
* ``worker``: ``dramatiq pipeline --processes 2 --threads 8``;
* baseline (a), ``bare``: ``uvicorn bench.pipeline_bare:app`` with the same options, a Starlette endpoint
  that parses the body and answers 202 without Kafka.

Measurements (each repeated ``--repeat`` times, interleaved with its baseline; medians, and the median of
the per-round ratios):

1. single posts: N ``POST /api/user`` (default 2,000), 32 in flight (asyncio; see ``pipeline_load`` for why
   not httpx by default), until every outcome is a row of ``submissions``; against the bare endpoint's
   202s per second with the same load; and the same posts each with an ``Idempotency-Key`` of its own,
   against those without (which of the two goes first alternates from round to round);
2. latency: ``POST /api/user`` p50/p99 at a fixed rate (200/s for 10 s, open loop, from each request's
   due time), ours and the bare endpoint's;
3. batches: a CSV of 50,000 rows (``--large``: 200,000 too) posted as ``text/csv``, from the start of the
   upload until its last outcome is committed; against baseline (b), a raw psycopg2 ``execute_values`` of
   the same rows into the same table (``ON CONFLICT DO NOTHING``, 1,000 rows a commit), and the ceiling
   "Cerberus (``validate_record``) + that insert, one process, no Kafka".

Every record is valid and new (names carry a fresh tag), so every outcome is ``stored``; the run checks it.
Each phase also records the CPU seconds of each component (``pipeline_cpu``): on two cores that, not the
clock, says what bounds the throughput.  With ``--profile`` it then records one more round of single posts
and one batch under py-spy (web and workers) and prints where their CPU went.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg2

from bench import pipeline_data as data
from bench.pipeline_cpu import Components, listener, snapshot
from bench.pipeline_load import JSON, LoadResult, closed_loop, open_loop
from pipeline import settings
from tests.livestack import Stack, create_database, delete_topics_with_prefix, drop_database, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
#: The per-record cost targets: ours over the baseline, at least.
SINGLE_TARGET = 0.2
#: A post with an ``Idempotency-Key`` over one without: within 10 %.
KEYED_TARGET = 0.9
BATCH_TARGET = 0.3
#: Seconds to wait for a phase's last outcome before giving up on it.
COMMIT_TIMEOUT_S = 600.0


@dataclass
class Options:
    """What to measure, from the command line."""

    singles: int
    concurrency: int
    rate: float
    seconds: float
    batch_rows: list[int]
    repeat: int
    batch_repeat: int
    web_workers: int
    processes: int
    threads: int
    profile: bool
    keep: bool
    client: str
    only: set[str]


@dataclass
class Context:
    """The running system of one benchmark run."""

    run: str
    options: Options
    stack: Stack
    bare_url: str
    server_url: str
    database_name: str
    kafka: list[str]
    rows: data.Rows
    components: Components
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def tag(self, what: str) -> str:
        """A fresh tag for the names of one measurement."""
        return f"{self.run}{what}{uuid.uuid4().hex[:4]}"


# -- helpers -------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextlib.contextmanager
def _cpu(ctx: Context, into: dict[str, Any]) -> Iterator[None]:
    """Record the CPU seconds per component spent inside the block into ``into["cpu"]``."""
    before = snapshot()
    started = time.monotonic()
    yield
    into["cpu"] = ctx.components.between(before, snapshot())
    into["wall"] = time.monotonic() - started


def _wait_http(url: str, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} did not answer 200 within {timeout} s")


def _procfile_web(app: str, port: int, workers: int) -> list[str]:
    # The Procfile's web line, on loopback: uvicorn web.app:app --host 0.0.0.0 --port $PORT
    # --workers ${WEB_CONCURRENCY:-1} --proxy-headers --forwarded-allow-ips='*'
    return [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--proxy-headers", "--forwarded-allow-ips", "*",
    ]  # fmt: skip


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


# -- start and stop ------------------------------------------------------------------------------------
def start(options: Options) -> Context:
    """Create the database and topics' prefix, migrate, start bare + web + workers, warm them up."""
    run = uuid.uuid4().hex[:8]
    server_url = settings.DATABASE_URL
    database_name = f"bup_bench_{run}"
    database_url = create_database(server_url, database_name)
    logs = RESULTS_DIR / f"pipeline-{run}"
    logs.mkdir(parents=True, exist_ok=True)
    web_port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(settings.KAFKA_BOOTSTRAP_SERVERS),
        "KAFKA_TOPIC_PREFIX": f"bench{run}.",
        "PORT": str(web_port),
        # On unless turned off (0), as in production, on a port of its own so that runs do not collide.
        "WORKER_METRICS_PORT": str(free_port()) if settings.WORKER_METRICS_PORT else "0",
    }
    env.pop("API_TOKEN", None)
    subprocess.run([sys.executable, "-m", "pipeline", "migrate"], cwd=ROOT, env=env, check=True)
    stack = Stack(url=f"http://127.0.0.1:{web_port}", env=env, database_url=database_url, logs=logs)
    stack.web = stack._spawn("web", _procfile_web("web.app:app", web_port, options.web_workers))
    worker = stack.start_worker(processes=options.processes, threads=options.threads)  # worker0.log
    bare = stack._spawn("bare", _procfile_web("bench.pipeline_bare:app", bare_port, options.web_workers))
    stack.workers.append(bare)  # stopped with the workers
    components = Components(
        roots={"web": stack.web.pid, "workers": worker.pid, "bare": bare.pid, "bench": os.getpid()}
    )
    for name, address in (
        ("kafka", settings.KAFKA_BOOTSTRAP_SERVERS[0]),
        ("postgres", urlsplit(server_url).netloc.rsplit("@", 1)[-1]),
    ):
        pid = listener(int(address.rsplit(":", 1)[1])) if ":" in address else None
        if pid is not None:
            components.roots[name] = pid
    ctx = Context(
        run=run,
        options=options,
        stack=stack,
        bare_url=f"http://127.0.0.1:{bare_port}",
        server_url=server_url,
        database_name=database_name,
        kafka=settings.KAFKA_BOOTSTRAP_SERVERS,
        rows=data.Rows(database_url),
        components=components,
    )
    stack.wait_ready()
    _wait_http(ctx.bare_url, "/healthz")
    return ctx


def warm_up(ctx: Context) -> None:
    """Open every connection, create the topics, let the consumer group settle, before any clock starts."""
    opts = ctx.options
    closed_loop(
        ctx.bare_url, data.json_bodies(ctx.tag("wb"), 300), concurrency=opts.concurrency, client=opts.client
    )
    before = ctx.rows.singles()
    result = closed_loop(
        ctx.stack.url, data.json_bodies(ctx.tag("ws"), 200), concurrency=opts.concurrency, client=opts.client
    )
    if result.accepted == 0:
        raise RuntimeError(f"the web accepted none of the warm-up posts: {dict(result.errors)}")
    if ctx.rows.wait_until(ctx.rows.singles, before + result.accepted, timeout=120) is None:
        raise RuntimeError(f"the warm-up posts were not processed; see {ctx.stack.logs}")
    post_batch(ctx, 2_000, ctx.tag("wc"))
    _wait_assignments(ctx)


def _wait_assignments(ctx: Context, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
    """Wait until every worker process holds partitions of the users topic and none has moved for a while:
    a rebalance in the middle of a measurement would stall it for seconds."""
    log = ctx.stack.logs / "worker0.log"
    marker = f"Partitions assigned to bench{ctx.run}.users:"
    deadline = time.monotonic() + timeout
    last_seen, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen = log.read_text(errors="replace").count(marker)
        if seen != last_seen:
            last_seen, last_change = seen, time.monotonic()
        if seen >= ctx.options.processes and time.monotonic() - last_change >= quiet_s:
            return
        time.sleep(0.5)
    ctx.notes.append(f"the consumer group had not settled after {timeout:.0f} s ({last_seen} assignments)")


def stop(ctx: Context) -> None:
    """Stop every process, drop the database and delete this run's topics and consumer groups."""
    ctx.rows.close()
    for process in [*ctx.stack.workers, ctx.stack.web]:
        if process is not None:
            Stack.stop(process)
    if not ctx.options.keep:
        drop_database(ctx.server_url, ctx.database_name)
        with contextlib.suppress(Exception):
            delete_topics_with_prefix(ctx.kafka, f"bench{ctx.run}.", client_id="bench-pipeline")


# -- measurements --------------------------------------------------------------------------------------
def bare_posts(ctx: Context, count: int) -> dict[str, Any]:
    """Baseline (a): ``count`` posts to the bare endpoint, closed loop."""
    out: dict[str, Any] = {}
    with _cpu(ctx, out):
        result = closed_loop(
            ctx.bare_url,
            data.json_bodies(ctx.tag("b"), count),
            concurrency=ctx.options.concurrency,
            client=ctx.options.client,
        )
    return {**out, **_load_figures(result), "rate": result.rate}


def single_posts(ctx: Context, count: int, *, keyed: bool = False) -> dict[str, Any]:
    """``count`` posts to the real web, closed loop, until every outcome is committed; ``keyed``: each
    with an ``Idempotency-Key`` of its own (made before the clock starts)."""
    out: dict[str, Any] = {}
    tag = ctx.tag("k" if keyed else "s")
    bodies = data.json_bodies(tag, count)
    headers = [{**JSON, "idempotency-key": uuid.uuid4().hex} for _ in bodies] if keyed else None
    before = ctx.rows.singles()
    with _cpu(ctx, out):
        result = closed_loop(
            ctx.stack.url,
            bodies,
            concurrency=ctx.options.concurrency,
            client=ctx.options.client,
            headers=headers,
        )
        done = ctx.rows.wait_until(ctx.rows.singles, before + result.accepted, timeout=COMMIT_TIMEOUT_S)
    if done is None:
        raise RuntimeError(f"single posts: not every outcome was committed; see {ctx.stack.logs}")
    stored = ctx.rows.count("SELECT count(*) FROM users WHERE name LIKE %s", f"% Bench{tag}n%")
    return {
        **out,
        **_load_figures(result),
        "accept_rate": result.rate,
        "rate": result.accepted / (done - result.started),
        "stored": stored,
    }


def _load_figures(result: LoadResult) -> dict[str, Any]:
    return {
        "sent": result.sent,
        "accepted": result.accepted,
        "errors": dict(result.errors),
        "p50": result.percentile(0.50),
        "p99": result.percentile(0.99),
        "seconds": result.seconds,
    }


def fixed_rate(ctx: Context, url: str, *, pipeline: bool) -> dict[str, Any]:
    """Open loop at ``--rate`` for ``--seconds``; for the pipeline, also how long the outcomes lag."""
    opts = ctx.options
    count = round(opts.rate * opts.seconds)
    out: dict[str, Any] = {}
    before = ctx.rows.singles() if pipeline else 0
    with _cpu(ctx, out):
        result = open_loop(url, data.json_bodies(ctx.tag("r"), count), rate=opts.rate, client=opts.client)
    out.update(_load_figures(result))
    out["achieved_rate"] = result.rate
    if pipeline:
        done = ctx.rows.wait_until(ctx.rows.singles, before + result.accepted, timeout=COMMIT_TIMEOUT_S)
        out["commit_lag"] = (done - result.finished) if done is not None else None
    return out


def post_batch(ctx: Context, count: int, tag: str) -> dict[str, Any]:
    """Upload a CSV of ``count`` rows and wait for its last outcome."""
    body = data.csv_body(tag, count)
    out: dict[str, Any] = {"bytes": len(body)}
    with _cpu(ctx, out):
        started = time.monotonic()
        response = httpx.post(
            ctx.stack.url + "/api/users", content=body, headers={"content-type": "text/csv"}, timeout=600
        )
        accepted = time.monotonic()
        if response.status_code != 202:
            raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")
        batch_id = response.json()["batch_id"]
        done = ctx.rows.wait_until(
            lambda: ctx.rows.of_batch(batch_id), count, timeout=COMMIT_TIMEOUT_S, interval=0.05
        )
    if done is None:
        raise RuntimeError(f"batch {batch_id}: not every outcome was committed; see {ctx.stack.logs}")
    statuses = ctx.rows.statuses("batch_id = %s", batch_id)
    return {
        **out,
        "rate": count / (done - started),
        "accept_seconds": accepted - started,
        "seconds": done - started,
        "statuses": statuses,
    }


def raw_insert(ctx: Context, count: int) -> dict[str, Any]:
    """Baseline (b): the same kind of rows (fresh names), bulk inserted with psycopg2 alone."""
    users = data.user_rows(ctx.tag("i"), count)
    out: dict[str, Any] = {}
    # Connected before the CPU snapshot and closed after it, so that its backend's CPU is counted.
    with contextlib.closing(psycopg2.connect(ctx.stack.database_url)) as connection, _cpu(ctx, out):
        seconds, inserted = data.raw_insert(connection, users)
    return {**out, "rate": count / seconds, "seconds": seconds, "inserted": inserted}


def validate_and_insert(ctx: Context, count: int) -> dict[str, Any]:
    """The ceiling without Kafka: Cerberus + the raw insert in this one process."""
    records = data.csv_records(ctx.tag("v"), count)
    out: dict[str, Any] = {}
    with contextlib.closing(psycopg2.connect(ctx.stack.database_url)) as connection, _cpu(ctx, out):
        seconds, inserted = data.validate_and_insert(connection, records)
    return {**out, "rate": count / seconds, "seconds": seconds, "inserted": inserted}


def _rounds(name: str, times: int, measure: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for index in range(times):
        result = measure()
        _say(f"  {name} round {index + 1}/{times}: {_summary(result)}")
        found.append(result)
    return found


def _summary(result: dict[str, Any]) -> str:
    parts = [f"{_rate(result['rate'])}" if "rate" in result else ""]
    if "accept_rate" in result:
        parts.append(f"202s {_rate(result['accept_rate'])}")
    if "p50" in result:
        parts.append(f"p50 {_ms(result['p50'])} p99 {_ms(result['p99'])}")
    if "commit_lag" in result and result["commit_lag"] is not None:
        parts.append(f"last commit {result['commit_lag']:.2f} s after the last 202")
    if "accept_seconds" in result:
        parts.append(f"202 after {result['accept_seconds']:.1f} s, done after {result['seconds']:.1f} s")
    if result.get("errors"):
        parts.append(f"errors {result['errors']}")
    if "cpu" in result:
        cpu = result["cpu"]
        parts.append(
            "cpu s: "
            + " ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        )
    return "; ".join(p for p in parts if p)


def measure(ctx: Context) -> None:
    """Every measurement, interleaved with its baseline round by round."""
    opts, res = ctx.options, ctx.results
    res["bare"], res["singles"], res["bare_rate"], res["singles_rate"] = [], [], [], []
    res["singles_keyed"] = []
    for count in opts.batch_rows:
        res[f"raw_{count}"], res[f"ceiling_{count}"], res[f"batch_{count}"] = [], [], []
    if "singles" in opts.only:
        _say(f"single posts: {opts.singles:,} posts, {opts.concurrency} in flight, {opts.repeat} rounds")
    for index in range(opts.repeat if "singles" in opts.only else 0):
        res["bare"] += _rounds(f"bare #{index + 1}", 1, lambda: bare_posts(ctx, opts.singles))
        # Alternated, so that what grows during the run (tables, Kafka's log) weighs on both alike.
        for keyed in (False, True) if index % 2 == 0 else (True, False):
            res["singles_keyed" if keyed else "singles"] += _rounds(
                f"ours{' with keys' if keyed else ''} #{index + 1}",
                1,
                lambda keyed=keyed: single_posts(ctx, opts.singles, keyed=keyed),
            )

    if "latency" in opts.only:
        _say(f"latency: {opts.rate:g} req/s for {opts.seconds:g} s, open loop, {opts.repeat} rounds")
    for index in range(opts.repeat if "latency" in opts.only else 0):
        res["bare_rate"] += _rounds(
            f"bare #{index + 1}", 1, lambda: fixed_rate(ctx, ctx.bare_url, pipeline=False)
        )
        res["singles_rate"] += _rounds(
            f"ours #{index + 1}", 1, lambda: fixed_rate(ctx, ctx.stack.url, pipeline=True)
        )

    for count in opts.batch_rows if "batches" in opts.only else []:
        times = opts.batch_repeat if count == opts.batch_rows[0] else 1
        _say(f"batches: CSV of {count:,} rows, {times} rounds")
        raw, ceiling, ours = [], [], []
        for index in range(times):
            raw += _rounds(f"raw insert #{index + 1}", 1, lambda: raw_insert(ctx, count))
            ceiling += _rounds(f"validate+insert #{index + 1}", 1, lambda: validate_and_insert(ctx, count))
            ours += _rounds(f"ours #{index + 1}", 1, lambda: post_batch(ctx, count, ctx.tag("c")))
        res[f"raw_{count}"], res[f"ceiling_{count}"], res[f"batch_{count}"] = raw, ceiling, ours


# -- profiling -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _py_spy(ctx: Context, phase: str) -> Iterator[list[Path]]:
    """py-spy on the web and on the worker processes while the block runs (raw format, per thread).

    ``--gil``: only samples of the thread holding the GIL, i.e. where the Python CPU time goes (threads
    waiting for Kafka, PostgreSQL or a lock are left out)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    out_dir = RESULTS_DIR / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {"web": ctx.stack.web.pid, "workers": ctx.stack.workers[0].pid}  # type: ignore[union-attr]
    recorders, files = [], []
    for name, pid in targets.items():
        path = out_dir / f"pipeline-{ctx.run}-{phase}-{name}.txt"
        files.append(path)
        recorders.append(
            subprocess.Popen(
                [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--threads", "--gil",
                 "--format", "raw", "--rate", "100", "--nonblocking", "-o", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches
    try:
        yield files
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()


def profile(ctx: Context) -> None:
    """One more round of each measurement of ``--only`` under py-spy; prints where the CPU went."""
    _say("profiling (py-spy, not counted in the table)")
    phases: dict[str, Callable[[], Any]] = {
        "singles": lambda: single_posts(ctx, ctx.options.singles),
        "singles-keyed": lambda: single_posts(ctx, ctx.options.singles, keyed=True),
        "latency": lambda: fixed_rate(ctx, ctx.stack.url, pipeline=True),
        "batches": lambda: post_batch(ctx, ctx.options.batch_rows[0], ctx.tag("p")),
    }
    paths: list[Path] = []
    for phase, run in phases.items():
        if phase.split("-")[0] in ctx.options.only:
            with _py_spy(ctx, phase) as files:
                run()
            paths += files
    for path in paths:
        print(f"\n--- {path.relative_to(ROOT)} ---", flush=True)
        subprocess.run([sys.executable, "-m", "bench.pyspy_summary", str(path), "--top", "14"], cwd=ROOT)


# -- report --------------------------------------------------------------------------------------------
def _med(rounds: list[dict[str, Any]], key: str) -> float:
    return _median([r[key] for r in rounds if r.get(key) is not None])


def _cpu_per_1000(rounds: list[dict[str, Any]], users: int) -> str:
    keys = ("web", "bare", "workers", "kafka", "postgres", "bench", "other", "machine")
    parts = []
    for key in keys:
        value = _median([r["cpu"].get(key, 0.0) for r in rounds]) / users * 1000
        if value >= 0.005:
            parts.append(f"{key} {value:.2f}")
    return " ".join(parts)


def _ratio(ours: list[dict[str, Any]], base: list[dict[str, Any]], key: str, base_key: str = "") -> float:
    """The median of round-by-round ratios: a round and its baseline's ran side by side in time, so the
    drift of a shared machine's load cancels out better than in the ratio of two medians."""
    pairs = zip(ours, base, strict=False)
    return _median([o[key] / b[base_key or key] for o, b in pairs if o.get(key) and b.get(base_key or key)])


def _rates(rounds: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['rate']:,.0f}" for r in rounds)


def render(ctx: Context) -> str:
    """The table, with ratios and targets."""
    res, opts = ctx.results, ctx.options
    lines = []
    header = f"{'measurement':<44} {'ours':>12} {'baseline':>30} {'ratio':>7}  target"
    lines += [header, "-" * len(header)]

    def row(what: str, ours: str, base: str, ratio: float | None, target: str = "") -> None:
        ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(f"{what:<44} {ours:>12} {base:>30} {ratio_text:>7}  {target}")

    def verdict(ratio: float, goal: float) -> str:
        return f">= {goal:g}x {'met' if ratio >= goal else 'NOT met'}"

    if res["singles"]:
        ours, bare = _med(res["singles"], "rate"), _med(res["bare"], "rate")
        ratio = _ratio(res["singles"], res["bare"], "rate")
        row(f"single posts, {opts.singles:,} users: 202 -> row", _rate(ours), f"bare 202s: {_rate(bare)}",
            ratio, verdict(ratio, SINGLE_TARGET))  # fmt: skip
        accepted = _med(res["singles"], "accept_rate")
        row("  of which 202 answers alone", _rate(accepted), f"bare 202s: {_rate(bare)}",
            _ratio(res["singles"], res["bare"], "accept_rate", "rate"))  # fmt: skip
        row(f"  latency under that load ({opts.concurrency} in flight) p50",
            _ms(_med(res["singles"], "p50")), f"bare: {_ms(_med(res['bare'], 'p50'))}",
            _ratio(res["singles"], res["bare"], "p50"))  # fmt: skip
    if res["singles_keyed"]:
        keyed, plain = res["singles_keyed"], res["singles"]
        ratio = _ratio(keyed, plain, "rate")
        row("  each with an Idempotency-Key: 202 -> row", _rate(_med(keyed, "rate")),
            f"without: {_rate(_med(plain, 'rate'))}", ratio, verdict(ratio, KEYED_TARGET))  # fmt: skip
        row("    of which 202 answers alone", _rate(_med(keyed, "accept_rate")),
            f"without: {_rate(_med(plain, 'accept_rate'))}", _ratio(keyed, plain, "accept_rate"))  # fmt: skip
        row("    latency under that load p50", _ms(_med(keyed, "p50")),
            f"without: {_ms(_med(plain, 'p50'))}", _ratio(keyed, plain, "p50"))  # fmt: skip
    if res["singles_rate"]:
        for share in ("p50", "p99"):
            o, b = _med(res["singles_rate"], share), _med(res["bare_rate"], share)
            row(f"POST /api/user {share} at {opts.rate:g} req/s (open loop)", _ms(o), f"bare: {_ms(b)}",
                _ratio(res["singles_rate"], res["bare_rate"], share))  # fmt: skip
        lag = _med(res["singles_rate"], "commit_lag")
        row("  last row committed after the last 202", f"{lag:.2f} s", "", None)
    for count in [n for n in opts.batch_rows if res[f"batch_{n}"]]:
        batch, raw, ceiling = res[f"batch_{count}"], res[f"raw_{count}"], res[f"ceiling_{count}"]
        b, r, c = _med(batch, "rate"), _med(raw, "rate"), _med(ceiling, "rate")
        ratio = _ratio(batch, raw, "rate")
        row(f"batch, CSV of {count:,}: upload -> last row", _rate(b), f"raw insert: {_rate(r)}", ratio,
            verdict(ratio, BATCH_TARGET))  # fmt: skip
        row("  against the ceiling (one process, no Kafka)", _rate(b), f"validate+insert: {_rate(c)}",
            _ratio(batch, ceiling, "rate"))  # fmt: skip
        row("  upload -> 202 (all chunks in Kafka)", f"{_med(batch, 'accept_seconds'):.1f} s",
            f"done after {_med(batch, 'seconds'):.1f} s", None)  # fmt: skip
    lines.append(
        "(ratio: the median of the per-round ratios; each round of ours ran right after its baseline's)"
    )

    lines.append("")
    lines.append("CPU seconds per 1,000 users (median of rounds; 'other' = the rest of the machine):")
    if res["singles"]:
        lines.append(f"  single posts: {_cpu_per_1000(res['singles'], opts.singles)}")
        lines.append(f"  bare 202s:    {_cpu_per_1000(res['bare'], opts.singles)}")
    if res["singles_keyed"]:
        lines.append(f"  with keys:    {_cpu_per_1000(res['singles_keyed'], opts.singles)}")
    for count in [n for n in opts.batch_rows if res[f"batch_{n}"]]:
        lines.append(f"  batch {count:,}: {_cpu_per_1000(res[f'batch_{count}'], count)}")
        lines.append(f"  raw insert:   {_cpu_per_1000(res[f'raw_{count}'], count)}")
        lines.append(f"  validate+insert: {_cpu_per_1000(res[f'ceiling_{count}'], count)}")

    lines.append("")
    lines.append("rounds (users/s):")
    for key, label in (("singles", "single posts"), ("singles_keyed", "with keys"), ("bare", "bare 202s")):
        lines.append(f"  {label}: {_rates(res[key])}")
    for count in [n for n in opts.batch_rows if res[f"batch_{n}"]]:
        for prefix, label in (("batch", "batch"), ("raw", "raw insert"), ("ceiling", "validate+insert")):
            rounds = res[f"{prefix}_{count}"]
            lines.append(f"  {label} {count:,}: {_rates(rounds)}")
    problems = _problems(ctx)
    if problems or ctx.notes:
        lines.append("")
        lines += [f"NOTE: {p}" for p in [*problems, *ctx.notes]]
    return "\n".join(lines)


def _problems(ctx: Context) -> list[str]:
    """Anything that makes a figure suspect: errors, outcomes other than stored."""
    found = []
    for key in ("singles", "singles_keyed", "bare", "singles_rate", "bare_rate"):
        for r in ctx.results.get(key, []):
            if r.get("errors"):
                found.append(f"{key}: answers other than 202: {r['errors']}")
    for r in ctx.results.get("singles", []) + ctx.results.get("singles_keyed", []):
        if r["stored"] != r["accepted"]:
            found.append(f"single posts: {r['stored']} users stored of {r['accepted']} accepted")
    for count in ctx.options.batch_rows:
        for r in ctx.results.get(f"batch_{count}", []):
            if r["statuses"] != {"stored": count}:
                found.append(f"batch of {count}: outcomes {r['statuses']}")
        for key in (f"raw_{count}", f"ceiling_{count}"):
            for r in ctx.results.get(key, []):
                if r["inserted"] != count:
                    found.append(f"{key}: {r['inserted']} rows inserted of {count}")
    return found


def machine_facts(options: Options) -> list[str]:
    """What a reader needs to compare this run with another."""
    import importlib.metadata as md

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{p} {md.version(p)}"
        for p in ("dramatiq", "kafka-python", "starlette", "uvicorn", "httpx", "cerberus")
    )
    load = os.getloadavg()
    return [
        f"machine: nproc {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), {cpu}; "
        f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)",
        f"python {platform.python_version()}; {versions}",
        f"kafka {','.join(settings.KAFKA_BOOTSTRAP_SERVERS)} ({settings.KAFKA_PARTITIONS} partitions); "
        f"postgres {urlsplit(settings.DATABASE_URL).netloc}",
        f"web: uvicorn --workers {options.web_workers}; worker: dramatiq pipeline --processes "
        f"{options.processes} --threads {options.threads}; BATCH_CHUNK_SIZE {settings.BATCH_CHUNK_SIZE}; "
        f"LOG_LEVEL {settings.LOG_LEVEL}",
        f"load ({options.client} client): {options.singles:,} single posts, {options.concurrency} in flight; "
        f"{options.rate:g} req/s for {options.seconds:g} s; "
        f"CSV of {', '.join(f'{n:,}' for n in options.batch_rows)} rows; "
        f"{options.repeat} rounds ({options.batch_repeat} for the first batch size), medians",
    ]


# -- main ----------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small loads, one batch round: under a minute")
    parser.add_argument("--large", action="store_true", help="also a CSV of 200,000 rows (one round)")
    parser.add_argument("--singles", type=int, help="single posts per round (default 2,000; quick 1,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--rate", type=float, default=200.0, help="fixed request rate, per second (200)")
    parser.add_argument("--seconds", type=float, help="duration of the fixed-rate load (default 10; quick 5)")
    parser.add_argument("--batch-rows", type=int, help="rows of the CSV batch (default 50,000; quick 10,000)")
    parser.add_argument("--repeat", type=int, help="rounds of each measurement (default 3; quick 2)")
    parser.add_argument(
        "--batch-repeat", type=int, help="rounds of the batch measurement (default 3; quick 1)"
    )
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn --workers (WEB_CONCURRENCY, 1)")
    parser.add_argument("--processes", type=int, default=settings.WORKER_PROCESSES, help="worker processes")
    parser.add_argument(
        "--threads", type=int, default=settings.WORKER_THREADS, help="threads per worker process"
    )
    parser.add_argument("--profile", action="store_true", help="then profile one round of each with py-spy")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator: raw asyncio HTTP/1.1 (default) or httpx.AsyncClient (~60x its CPU a request)",
    )
    parser.add_argument(
        "--only", default="singles,latency,batches", help="measurements to run (default: all three)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and topics (to look at them)")
    args = parser.parse_args(argv)
    quick = args.quick
    batch_rows = [args.batch_rows or (10_000 if quick else 50_000)]
    if args.large:
        batch_rows.append(200_000)
    return Options(
        singles=args.singles or (1_000 if quick else 2_000),
        concurrency=args.concurrency,
        rate=args.rate,
        seconds=args.seconds or (5.0 if quick else 10.0),
        batch_rows=batch_rows,
        repeat=args.repeat or (2 if quick else 3),
        batch_repeat=args.batch_repeat or (1 if quick else 3),
        web_workers=args.web_workers,
        processes=args.processes,
        threads=args.threads,
        profile=args.profile,
        keep=args.keep,
        client=args.client,
        only=set(args.only.split(",")),
    )


def main(argv: list[str] | None = None) -> int:
    """Run everything, print the table; the figures also go to ``bench/results/pipeline-<time>.json``."""
    options = parse(argv)
    facts = machine_facts(options)
    for line in facts:
        print(line, flush=True)
    started = time.monotonic()
    _say("starting web, bare endpoint and workers")
    ctx = start(options)
    try:
        _say(f"warming up (run {ctx.run}, logs in {ctx.stack.logs.relative_to(ROOT)})")
        warm_up(ctx)
        measure(ctx)
        table = render(ctx)
        if options.profile:
            profile(ctx)
    finally:
        stop(ctx)
    load = os.getloadavg()
    print()
    print("\n".join(facts))
    print(table)
    print(f"\nload average after the run: {load[0]:.2f}; the run took {time.monotonic() - started:.0f} s")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    path = RESULTS_DIR / f"pipeline-{stamp}.json"
    path.write_text(
        json.dumps(
            {"facts": facts, "options": options.__dict__, "results": ctx.results, "notes": ctx.notes},
            indent=1,
            default=sorted,  # the set of measurements run
        )
    )
    print(f"figures: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
