"""The load of the fault tests, and the ledger that checks what became of it.

:class:`Load` sends a planned mix of single posts (``POST /api/user``) and batches (``POST /api/users`` as a
JSON array, NDJSON or CSV) from a few client threads, the way a careful client would: only a ``202``
counts as accepted; a ``503`` is counted and the same body is sent again a moment later (a new
submission, as a client's retry is; with ``keyed=True`` every request carries an ``Idempotency-Key`` of its
own and its retries the same one, which makes them the same submission).  Every other answer, and every
transport error, is recorded as a broken promise.

The records are made so that the outcomes are known in advance: every tenth one is invalid (and stays
invalid), every tenth one repeats the unique key (name, age) of an earlier one (so one of them is stored
and the other a duplicate, whichever comes first), the rest are new users.

:class:`Ledger` waits until the system has settled and checks the promises of docs/guarantees.md:
every accepted id has exactly one terminal outcome, over HTTP and in the tables; one user row per unique
key; ``count(users)`` equals the ``stored`` outcomes; the counts add up.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from dramatiq_kafka_broker import KafkaConnectionError
from pipeline.contract import OUTCOMES

#: Pause of a client before it sends again a body that was answered 503, in seconds.
RETRY_PAUSE_S = 0.2


@dataclasses.dataclass
class Figures:
    """What one test sent and saw, for the summary of the run and docs/benchmarks.md."""

    test: str
    sent: int = 0  # submissions accepted with a 202 (singles + batch records)
    requests: int = 0  # HTTP requests made by the load
    answers_503: int = 0
    faults: list[str] = dataclasses.field(default_factory=list)
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    lost: int | None = None
    duplicated: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def totals(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "faults": len(self.faults),
            "503": self.answers_503,
            **{str(k): self.outcomes.get(k, 0) for k in OUTCOMES},
            "lost": self.lost or 0,
            "duplicated": self.duplicated or 0,
        }

    def line(self) -> str:
        outcomes = " ".join(f"{k}={self.outcomes.get(k, 0)}" for k in OUTCOMES)
        return (
            f"{self.test}: sent={self.sent} (in {self.requests} requests, {self.answers_503} answered 503) "
            f"faults={len(self.faults)} [{', '.join(self.faults)}] {outcomes} lost={self.lost} "
            f"duplicated={self.duplicated}" + "".join(f"\n    {note}" for note in self.notes)
        )

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Figures of every fault test of the run (printed by ``tests/faults/conftest.py``).
FIGURES: list[Figures] = []


@dataclasses.dataclass(frozen=True)
class Record:
    """A user record of the plan, and what must become of it."""

    n: int
    data: dict[str, Any]
    valid: bool

    @property
    def key(self) -> tuple[str, int]:
        return (self.data["name"], self.data["age"])


@dataclasses.dataclass
class Item:
    """One request of the plan: a single record, or a batch of records in one of the three forms."""

    records: list[Record]
    form: str  # "single", "json", "ndjson" or "csv"
    key: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # sent when the load is keyed

    def request(self) -> tuple[str, bytes, str]:
        """(path, body, content type)."""
        rows = [r.data for r in self.records]
        if self.form == "single":
            return "/api/user", json.dumps(rows[0]).encode(), "application/json"
        if self.form == "json":
            return "/api/users", json.dumps(rows).encode(), "application/json"
        if self.form == "ndjson":
            return "/api/users", "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/x-ndjson"
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["name", "age", "email"], lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        return "/api/users", out.getvalue().encode(), "text/csv"


@dataclasses.dataclass
class Accepted:
    """A ``202``: the ids it gave (one for a single, one per row for a batch) and the records behind them."""

    item: Item
    batch_id: str | None
    ids: list[str]


class Plan:
    """``singles`` single posts and ``batches`` batches of ``batch_size`` records, interleaved."""

    def __init__(self, tag: str, *, singles: int, batches: int, batch_size: int) -> None:
        self.tag = tag
        self.records: list[Record] = []
        forms = ["json", "ndjson", "csv"]
        made_batches = [
            Item([self.new_record() for _ in range(batch_size)], forms[i % 3]) for i in range(batches)
        ]
        made_singles = [Item([self.new_record()], "single") for _ in range(singles)]
        # A batch every len/batches singles: batches hit the fault as often as singles do.
        self.items: list[Item] = []
        step = max(1, singles // (batches + 1)) if batches else singles + 1
        for i, single in enumerate(made_singles):
            if made_batches and i % step == step // 2:
                self.items.append(made_batches.pop(0))
            self.items.append(single)
        self.items.extend(made_batches)

    def new_record(self, **overrides: Any) -> Record:
        n = len(self.records)
        if n % 10 == 3:
            # Invalid: a bad age (from CSV too: "abc" is not digits) and a bad email; never stored.
            data = {"name": f"{self.tag} u{n}", "age": "abc", "email": "not-an-email"}
            record = Record(n, data, valid=False)
        elif n % 10 == 6:
            # The unique key of a valid record five places back: one of the two is a duplicate.
            earlier = self.records[n - 5].data
            record = Record(
                n, {"name": earlier["name"], "age": earlier["age"], "email": f"d{n}@example.org"}, True
            )
        else:
            record = Record(
                n, {"name": f"{self.tag} u{n}", "age": 18 + n % 70, "email": f"u{n}@example.org"}, True
            )
        record.data.update(overrides)
        self.records.append(record)
        return record

    def add(self, item: Item) -> None:
        """Put one more request at the end of the plan (records made by the test itself)."""
        known = {id(r) for r in self.records}
        self.records.extend(r for r in item.records if id(r) not in known)
        self.items.append(item)

    @property
    def submissions(self) -> int:
        return sum(len(item.records) for item in self.items)


class Load:
    """Sends a :class:`Plan` from ``clients`` threads, in the background; see the module docstring."""

    def __init__(
        self,
        url: str,
        plan: Plan,
        *,
        clients: int = 4,
        pace: float = 0.0,
        figures: Figures | None = None,
        keyed: bool = False,
    ) -> None:
        self.url = url
        self.plan = plan
        self.clients = clients
        self.pace = pace  # seconds each client waits between two requests: spreads the load over time
        self.figures = figures
        self.keyed = keyed  # every request with its item's Idempotency-Key
        self.accepted: list[Accepted] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()  # 503s per item key
        self.broken: list[str] = []  # answers that break a promise: 5xx other than 503, transport errors...
        self.latencies: list[float] = []  # seconds each answer took, in the order they came
        self._todo: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._paused = threading.Event()

    # -- running ----------------------------------------------------------------------------------------
    def start(self) -> Load:
        for item in self.plan.items:
            self._todo.put(item)
        self._pending = len(self.plan.items)
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def send_more(self, item: Item) -> None:
        """Add a request to a running load."""
        self.plan.add(item)
        with self._lock:
            self._pending += 1
        self._todo.put(item)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    item = self._todo.get(timeout=0.1)
                except queue.Empty:
                    with self._lock:
                        if self._pending == 0:
                            return
                    continue
                if not self._send(client, item):
                    time.sleep(RETRY_PAUSE_S)
                    self._todo.put(item)
                    continue
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()
                if self.pace:
                    time.sleep(self.pace)

    def _send(self, client: httpx.Client, item: Item) -> bool:
        """True once the item is settled (accepted, or refused for good); False to send it again."""
        path, body, content_type = item.request()
        headers = {"content-type": content_type}
        if self.keyed:
            headers["idempotency-key"] = item.key
        started = time.monotonic()
        try:
            response = client.post(path, content=body, headers=headers)
        except httpx.HTTPError as error:
            with self._lock:
                self.broken.append(f"{path}: {type(error).__name__}: {error}")
            return True
        with self._lock:
            self.latencies.append(time.monotonic() - started)
            if self.figures is not None:
                self.figures.requests += 1
            code = ""
            if response.status_code >= 400:
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "(not the error shape)"
            self.statuses[f"{response.status_code} {code}".strip()] += 1
            if response.status_code == 202:
                answer = response.json()
                if item.form == "single":
                    accepted = Accepted(item, None, [answer["id"]])
                else:
                    batch_id = answer["batch_id"]
                    if answer.get("count") != len(item.records):
                        self.broken.append(
                            f"batch {batch_id}: count {answer.get('count')} != {len(item.records)}"
                        )
                    accepted = Accepted(
                        item, batch_id, [f"{batch_id}.{row}" for row in range(1, len(item.records) + 1)]
                    )
                self.accepted.append(accepted)
                self._lock.notify_all()
                return True
            if (
                response.status_code == 503
                and code == "queue_unavailable"
                and "retry-after" in response.headers
            ):
                if self.figures is not None:
                    self.figures.answers_503 += 1
                self.refusals[item.key] += 1
                return False
            self.broken.append(f"{path}: {response.status_code} {response.text[:300]}")
            return True

    # -- waiting ----------------------------------------------------------------------------------------
    @property
    def accepted_count(self) -> int:
        with self._lock:
            return sum(len(a.ids) for a in self.accepted)

    def wait_accepted(self, count: int, timeout: float = 120) -> None:
        """Block until at least ``count`` submissions were accepted."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(len(a.ids) for a in self.accepted) < count:
                if (
                    not self._lock.wait(timeout=max(0.0, deadline - time.monotonic()))
                    and time.monotonic() > deadline
                ):
                    raise AssertionError(f"fewer than {count} submissions accepted within {timeout} s")

    def wait_status(self, status: str, timeout: float = 60) -> None:
        """Block until some answer had ``status`` (e.g. ``"503 queue_unavailable"``)."""
        deadline = time.monotonic() + timeout
        while self.statuses[status] == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {status} answer within {timeout} s; saw {dict(self.statuses)}")
            time.sleep(0.1)

    def join(self, timeout: float = 300) -> None:
        """Wait until every request of the plan is settled, then stop the clients."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                if time.monotonic() > deadline:
                    self._stop.set()
                    raise AssertionError(
                        f"{self._pending} requests of the load still unsettled after {timeout} s"
                    )
                self._lock.wait(timeout=0.5)
        for thread in self._threads:
            thread.join(timeout=10)
        if self.figures is not None:
            self.figures.sent = self.accepted_count

    def stop(self) -> None:
        """Stop the clients after their current request (which may take ``KAFKA_SEND_TIMEOUT_MS``)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)


@dataclasses.dataclass
class Report:
    """What the ledger found; ``problems`` is empty when every promise holds."""

    outcomes: dict[str, int]
    lost: list[str]
    duplicated: int
    problems: list[str]
    rows: dict[str, tuple[str, int | None, Any]]  # id -> (status, user_id, errors)


class Ledger:
    """Checks the promises on a stack once a :class:`Load` is over.

    ``stack`` is a ``FaultStack`` (``sql``, ``client``, ``drained``).
    """

    def __init__(self, stack: Any, load: Load) -> None:
        self.stack = stack
        self.load = load

    @property
    def ids(self) -> list[str]:
        return [i for a in self.load.accepted for i in a.ids]

    def _terminal_count(self) -> int:
        rows = self.stack.sql(
            "SELECT count(*) FROM submissions WHERE id = ANY(%s) AND status = ANY(%s)",
            self.ids,
            [str(k) for k in OUTCOMES],
        )
        return int(rows[0][0])

    def _drained(self) -> bool:
        try:
            return self.stack.drained()
        except KafkaConnectionError:
            return False  # (asked again at the next turn)

    def _batches_registered(self) -> bool:
        batch_ids = [a.batch_id for a in self.load.accepted if a.batch_id]
        if not batch_ids:
            return True
        rows = self.stack.sql("SELECT count(*) FROM batches WHERE id = ANY(%s)", batch_ids)
        return int(rows[0][0]) == len(batch_ids)

    def settle(
        self, timeout: float = 180, until: Callable[[], bool] | None = None, *, batches: bool = True
    ) -> None:
        """Wait until every accepted id has a terminal outcome, every batch is registered (unless
        ``batches`` is False: a ``register_batch`` that ran out of retries waits on the failed topic) and
        the queue (with its delay queue) is drained; ``until``, when given, must hold too."""
        deadline = time.monotonic() + timeout
        wanted = len(self.ids)
        while True:
            done = self._terminal_count()
            # (asked in turn, and Kafka only at the end: right after an outage its metadata may lag)
            registered = drained = False
            if done == wanted:
                registered = not batches or self._batches_registered()
                drained = registered and self._drained()
            if drained and (until is None or until()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not settled within {timeout} s: {done} of {wanted} accepted submissions have an "
                    f"outcome, batches registered: {registered}, queues drained: {drained} "
                    f"(logs: {self.stack.logs})"
                )
            time.sleep(0.5)

    def _http_outcomes(self) -> dict[str, dict[str, Any]]:
        """Every accepted single id through ``GET /api/submissions/<id>``, every batch through
        ``GET /api/batches/<id>`` and each of its record ids too."""
        ids = self.ids
        found: dict[str, dict[str, Any]] = {}
        local = threading.local()

        def fetch(submission_id: str) -> tuple[str, int, Any]:
            if not hasattr(local, "client"):
                local.client = self.stack.client()
            response = local.client.get(f"/api/submissions/{submission_id}")
            return submission_id, response.status_code, response.json()

        with ThreadPoolExecutor(max_workers=8) as pool:
            for submission_id, status, body in pool.map(fetch, ids):
                found[submission_id] = {"http": status, **body}
        return found

    def check(self, *, allow_failed: bool = False, allow_orphans: bool = False) -> Report:
        """Check every promise; returns the report (``problems`` empty when all hold).

        ``allow_failed``: ``failed`` is an acceptable outcome (before a replay).  ``allow_orphans``:
        submissions nobody was given an id for may exist (records of a batch answered 503 midway, a single
        whose 503 came after Kafka had it after all); they must still keep every other promise.
        """
        problems: list[str] = list(self.load.broken)
        ids = self.ids
        http = self._http_outcomes()
        rows = {
            r[0]: (r[1], r[2], r[3], r[4])
            for r in self.stack.sql("SELECT id, status, user_id, errors, batch_id FROM submissions")
        }
        users = {r[0]: (r[1], r[2]) for r in self.stack.sql("SELECT id, name, age FROM users")}
        user_by_key: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
        for user_id, key in users.items():
            user_by_key[key].append(user_id)

        # 1. Every 202 id has exactly one terminal outcome, and the API says the same as the table.
        lost = [i for i in ids if i not in rows or rows[i][0] not in OUTCOMES]
        if len(set(ids)) != len(ids):
            problems.append(f"the API gave the same id twice: {len(ids) - len(set(ids))} repeats")
        for submission_id in ids:
            answer = http[submission_id]
            row = rows.get(submission_id)
            if answer["http"] != 200 or row is None or answer.get("status") != row[0]:
                problems.append(f"{submission_id}: API says {answer}, table says {row}")
        outcomes = collections.Counter(rows[i][0] for i in ids if i in rows)
        if not allow_failed and outcomes["failed"]:
            problems.append(f"{outcomes['failed']} submissions failed")

        # 2. What each record became is what it had to become.
        records = {i: rec for a in self.load.accepted for i, rec in zip(a.ids, a.item.records, strict=True)}
        for submission_id, record in records.items():
            status, user_id, errors, _ = rows.get(submission_id, (None, None, None, None))
            if status is None or status == "failed":
                continue
            if not record.valid:
                if status != "invalid" or not errors:
                    problems.append(f"{submission_id}: an invalid record became {status}")
                continue
            if status not in ("stored", "duplicate"):
                problems.append(f"{submission_id}: a valid record became {status} {errors}")
            elif user_id is None or users.get(user_id) != (record.key[0], record.key[1]):
                problems.append(
                    f"{submission_id}: {status} points at user {user_id}, not one with key {record.key}"
                )

        # 3. No user row twice: one row per unique key, each claimed by exactly one `stored` outcome.
        stored = [(i, r[1]) for i, r in rows.items() if r[0] == "stored"]
        claims = collections.Counter(user_id for _, user_id in stored)
        duplicated = sum(len(v) - 1 for v in user_by_key.values() if len(v) > 1)
        duplicated += sum(n - 1 for n in claims.values() if n > 1)
        if duplicated:
            problems.append(f"{duplicated} user rows or stored outcomes are there twice")
        if len(users) != len(stored):
            problems.append(f"count(users) = {len(users)} but {len(stored)} outcomes are stored")
        unclaimed = set(users) - set(claims)
        if unclaimed:
            problems.append(f"{len(unclaimed)} users no stored outcome accounts for")

        # 4. The counts add up: every key of an accepted valid record has its user (unless all of its
        #    records failed), and nothing is in the tables that nobody sent.
        planned_keys = {r.key for r in self.load.plan.records if r.valid}
        for key, ids_of_key in _group(records.items(), lambda kv: kv[1].key if kv[1].valid else None):
            if key is None:
                continue
            if all(rows.get(i, ("failed",))[0] == "failed" for i in ids_of_key):
                continue
            if key not in user_by_key:
                problems.append(f"key {key} was accepted valid but has no user row")
        strangers = {key for key in user_by_key if key not in planned_keys}
        if strangers:
            problems.append(f"{len(strangers)} users nobody sent: {sorted(strangers)[:3]}")
        orphans = set(rows) - set(ids)
        if orphans and not allow_orphans:
            problems.append(f"{len(orphans)} submissions nobody was given an id for: {sorted(orphans)[:3]}")
        if sum(outcomes.values()) != len(ids) - len(lost):
            problems.append("outcomes do not add up")

        # 5. Every accepted batch is completed and its counts add up to its size.
        batch_checks = self._batches()
        problems.extend(batch_checks)

        report = Report(dict(outcomes), lost, duplicated, problems, {i: rows[i][:3] for i in rows})
        if self.load.figures is not None:
            self.load.figures.outcomes = {str(k): outcomes.get(k, 0) for k in OUTCOMES}
            self.load.figures.lost = len(lost)
            self.load.figures.duplicated = duplicated
        return report

    def _batches(self) -> list[str]:
        problems = []
        with self.stack.client() as client:
            for accepted in self.load.accepted:
                if accepted.batch_id is None:
                    continue
                answer = client.get(f"/api/batches/{accepted.batch_id}", params={"limit": 1000}).json()
                counts = answer.get("counts", {})
                size = len(accepted.ids)
                if answer.get("state") != "completed" or answer.get("count") != size:
                    problems.append(
                        f"batch {accepted.batch_id}: {answer.get('state')} count={answer.get('count')}"
                    )
                if sum(counts.get(k, 0) for k in OUTCOMES) != size or counts.get("queued") != 0:
                    problems.append(f"batch {accepted.batch_id}: counts {counts} do not add up to {size}")
                listed = {item["id"] for item in answer.get("items", [])}
                wanted = {i for i, r in zip(accepted.ids, accepted.item.records, strict=True) if not r.valid}
                if not wanted <= listed:
                    problems.append(
                        f"batch {accepted.batch_id}: invalid rows {sorted(wanted - listed)[:3]} not listed"
                    )
        return problems

    def snapshot(self) -> dict[str, tuple[str, int | None]]:
        """(status, user_id) of every submission: compared later to show that outcomes do not change."""
        return {r[0]: (r[1], r[2]) for r in self.stack.sql("SELECT id, status, user_id FROM submissions")}


def _group(items: Iterable[Any], key: Callable[[Any], Any]) -> list[tuple[Any, list[str]]]:
    groups: dict[Any, list[str]] = collections.defaultdict(list)
    for item in items:
        groups[key(item)].append(item[0])
    return list(groups.items())
