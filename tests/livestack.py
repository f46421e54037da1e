"""The one process harness of the tests and benchmarks: services, web and workers as real processes.

* Processes: :func:`spawn` starts one in a process group of its own, its output in ``<logs>/<name>.log``;
  :func:`stop` / :func:`stop_all` send SIGTERM to the group (all of them at once) and SIGKILL whatever is
  still there after the timeout; :func:`running` does both around a block; :func:`log_tail` reads a log;
  :func:`group_members` and :func:`wait_group_gone` tell what of a group still runs; :func:`wait_until`
  polls for a condition while watching processes that must not exit meanwhile.
* Services: :class:`Services` stops and starts this checkout's Kafka and PostgreSQL with ``scripts/*.sh``
  (:func:`run_script`), waiting until they answer again.
* Stacks: :class:`Stack` is a web (``uvicorn web.app:app``) and ``dramatiq pipeline`` workers on a
  PostgreSQL database of their own (created and migrated by :func:`new_stack`, dropped by
  :meth:`Stack.close`) and topics of their own (a prefix per stack); :func:`start_stack` runs one for a
  block.

Users: the session-wide ``stack`` of ``tests/conftest.py`` (e2e, hostile), the fault suite's ``make_stack``
(``tests/faults/conftest.py``), the operator page's (``tests/test_ui_browser.py``), the managed suite's
(``tests/managed``), the broker's worker processes (``tests/broker/test_kafka_broker.py``), the rehearsal of
the deploy files (``tests/test_deploy_files.py``), and the benchmarks (``bench/``).

Imported as ``tests.livestack`` by all of them (``tests/`` is a package): one module, so one set of constants
and helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2

from pipeline.contract import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
#: Seconds a process gets to exit after SIGTERM (a worker finishes its messages) before it is SIGKILLed.
STOP_TIMEOUT_S = 60.0
#: Seconds to wait for a process to be gone after SIGKILL.
KILL_TIMEOUT_S = 10.0
#: Seconds ``python -m pipeline migrate`` may take.
MIGRATE_TIMEOUT_S = 120.0


# ======================================================================================================
# Processes
# ======================================================================================================


def spawn(
    name: str, argv: list[str], *, env: Mapping[str, str], logs: Path | None, cwd: Path = ROOT
) -> subprocess.Popen:
    """Start ``argv`` in a process group of its own (so that :func:`stop` reaches what it forks), its
    stdout and stderr appended to ``logs/<name>.log`` (discarded when ``logs`` is None)."""
    if logs is None:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:  # (the child keeps its own copy of the descriptor)
        return subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def group_members(process: subprocess.Popen) -> list[int]:
    """The pids still running in the process group of ``process`` (:func:`spawn` made it lead one): it, and
    what it started, also after it has exited itself.  Zombies, which only wait to be reaped, are left out.
    [] once they have all ended, and also when ``process`` has been reaped and its number has since gone to
    a new process that leads a group of its own (not ``process``'s group any more)."""
    reaped = process.poll() is not None
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # (gone meanwhile)
        if int(group) != process.pid or state in ("Z", "X"):
            continue
        if reaped and int(stat.parent.name) == process.pid:
            return []
        members.append(int(stat.parent.name))
    return members


def wait_group_gone(process: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s until nothing of ``process``'s group runs (:func:`group_members`); whether
    it came to that."""
    deadline = time.monotonic() + timeout
    while group_members(process):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_all(
    processes: Iterable[subprocess.Popen | None],
    sig: int = signal.SIGTERM,
    *,
    timeout: float = STOP_TIMEOUT_S,
) -> None:
    """Send ``sig`` to the process group of every process whose group still runs (the process itself, or
    only what it started: a main process that exited may leave its children behind), all at once (they
    shut down side by side, not one after the other), wait up to ``timeout`` s in all until each group has
    ended, then SIGKILL what is left of it."""
    groups = [p for p in processes if p is not None and (p.poll() is None or group_members(p))]
    for process in groups:
        _signal_group(process, sig)
    deadline = time.monotonic() + timeout
    for process in groups:
        if not wait_group_gone(process, max(0.0, deadline - time.monotonic())):
            _signal_group(process, signal.SIGKILL)
            wait_group_gone(process, KILL_TIMEOUT_S)
        process.wait(timeout=KILL_TIMEOUT_S)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, *, timeout: float = STOP_TIMEOUT_S) -> int:
    """:func:`stop_all` for one process; returns its exit code."""
    stop_all([process], sig, timeout=timeout)
    return int(process.returncode)


@contextlib.contextmanager
def running(
    name: str, argv: list[str], *, env: Mapping[str, str], logs: Path | None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen]:
    """:func:`spawn` for the length of a block, then :func:`stop`."""
    process = spawn(name, argv, env=env, logs=logs, cwd=cwd)
    try:
        yield process
    finally:
        stop(process)


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log ("" when it does not exist), for failure messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_until(
    what: str,
    problem: Callable[[], str | None],
    *,
    timeout: float,
    interval: float = 0.2,
    watch: Iterable[tuple[str, subprocess.Popen, Path]] = (),
) -> None:
    """Call ``problem`` (why there is no ``what`` yet, or None once there is) every ``interval`` s until it
    says None.  Raises AssertionError after ``timeout`` s with its last word and the ends of the logs of
    ``watch`` (``(name, process, log)``), or at once when one of those processes has exited."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        for name, process, log in watched:
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode} while waiting for {what}:\n{log_tail(log)}"
                )
        reason = problem()
        if reason is None:
            return
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {name}:\n{log_tail(log, 1500)}" for name, _, log in watched)
            raise AssertionError(f"waited {timeout:g} s in vain for {what}: {reason}{logs}")
        time.sleep(interval)


# ======================================================================================================
# Hosts: a process capped at a fraction of a core stands in for a machine of its own
# ======================================================================================================

#: Where the cgroup v1 CPU controller is mounted (``cpu.cfs_quota_us``, ``cgroup.procs``).
CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
#: Where the cgroup v1 CPU accounting controller is mounted (``cpuacct.usage``), when it is apart.
CPUACCT_CGROUP_ROOT = Path("/sys/fs/cgroup/cpuacct")
#: The CFS period of a capped host, in microseconds: short, so that a host spends its share in slices of
#: a few milliseconds rather than stalling for most of the kernel's default 100 ms period (a stall that
#: would look like a rebalance pause).
CPU_PERIOD_US = 10_000


def cpu_caps_problem() -> str | None:
    """Why processes cannot be capped here (no writable cgroup v1 CPU controller), or None."""
    if not (CPU_CGROUP_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 CPU controller at {CPU_CGROUP_ROOT}"
    if not os.access(CPU_CGROUP_ROOT, os.W_OK):
        return f"{CPU_CGROUP_ROOT} is not writable (capping a process at a share of a core needs root)"
    return None


@dataclass
class CpuCap:
    """A cgroup of its own capped at ``cores`` of CPU: whatever :meth:`argv` starts runs inside it, the
    processes it forks too, as on a machine of that size.

    >>> cap = CpuCap("bench-host-1", 0.2); worker = spawn("host1", cap.argv(["dramatiq", "pipeline"]), ...)
    """

    name: str
    cores: float

    def __post_init__(self) -> None:
        problem = cpu_caps_problem()
        if problem:
            raise RuntimeError(problem)
        self.cpu = CPU_CGROUP_ROOT / self.name
        self.cpu.mkdir(exist_ok=True)
        (self.cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (self.cpu / "cpu.cfs_quota_us").write_text(str(max(1000, round(self.cores * CPU_PERIOD_US))))
        self.cpuacct: Path | None = CPUACCT_CGROUP_ROOT / self.name
        try:
            self.cpuacct.mkdir(exist_ok=True)
        except OSError:
            self.cpuacct = None

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the cgroup: the shell joins it, then becomes ``argv`` (so nothing escapes)."""
        joins = f"echo $$ > {self.cpu}/cgroup.procs"
        if self.cpuacct is not None:
            joins += f" && echo $$ > {self.cpuacct}/cgroup.procs"
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "capped", *argv]

    def cpu_seconds(self) -> float:
        """CPU time used inside the cgroup so far (0 without the accounting controller)."""
        if self.cpuacct is None:
            return 0.0
        return int((self.cpuacct / "cpuacct.usage").read_text()) / 1e9

    def throttled(self) -> tuple[int, float]:
        """Periods in which the cap held the cgroup back so far, and how long in all, in seconds."""
        stat = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
        return int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e9

    def remove(self) -> None:
        """Remove the cgroup (once its processes have ended)."""
        for path in (self.cpu, self.cpuacct):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.rmdir()


# ======================================================================================================
# Services: this checkout's own Kafka and PostgreSQL, through scripts/*.sh
# ======================================================================================================


def run_script(
    name: str, action: str, *, env: Mapping[str, str] | None = None, quiet: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<name> <action>``; raises when it fails.  ``quiet`` keeps its output (for the
    caller's error message) instead of letting it through."""
    return subprocess.run(
        [str(ROOT / "scripts" / name), action],
        cwd=ROOT,
        env=dict(env) if env is not None else None,
        check=not quiet,
        capture_output=quiet,
        text=True,
        timeout=timeout,
    )


class Services:
    """Stops and starts this checkout's own Kafka and PostgreSQL with ``scripts/*.sh``.

    Every stop is paired with a start in a ``finally`` (:meth:`kafka_stopped`, :meth:`postgres_stopped`),
    and a start returns only once the service answers (``kafka_problem`` / ``postgres_problem``: why it
    does not answer, or None once it does).
    """

    #: Seconds a stopped service gets to answer again once its script has started it.
    SERVICE_TIMEOUT_S = 120

    def __init__(
        self,
        kafka: str,
        database_url: str,
        *,
        kafka_problem: Callable[[str], str | None],
        postgres_problem: Callable[[str], str | None],
        where: Mapping[str, str] | None = None,
    ) -> None:
        self.kafka = kafka
        self.database_url = database_url
        self.kafka_problem = kafka_problem
        self.postgres_problem = postgres_problem
        # The scripts manage the local services only when the environment names them (or nothing); ``where``
        # names a set of services of its own (LOCAL_KAFKA_PORT, LOCAL_KAFKA_DIR, LOCAL_PG_PORT, LOCAL_PG_DIR).
        self.env = {
            **os.environ,
            **(where or {}),
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "DATABASE_URL": database_url,
        }
        self.faults: list[str] = []

    def _script(self, name: str, action: str) -> None:
        run_script(name, action, env=self.env)

    def _wait(self, what: str, problem: Callable[[], str | None]) -> None:
        deadline = time.monotonic() + self.SERVICE_TIMEOUT_S
        while (reason := problem()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} does not answer again: {reason}")
            time.sleep(0.5)

    def kafka_up(self) -> None:
        self._script("kafka.sh", "up")
        self._wait("Kafka", lambda: self.kafka_problem(self.kafka))

    def postgres_up(self) -> None:
        self._script("postgres.sh", "up")
        self._wait("PostgreSQL", lambda: self.postgres_problem(self.database_url))

    @contextlib.contextmanager
    def kafka_stopped(self) -> Iterator[None]:
        """Kafka is down inside the block (controlled shutdown), and up and answering after it."""
        self.faults.append("kafka stop")
        try:
            self._script("kafka.sh", "down")
            yield
        finally:
            self.kafka_up()

    @contextlib.contextmanager
    def kafka_killed(self) -> Iterator[None]:
        """Every local Kafka node is killed with SIGKILL (a crash: no controlled shutdown, no goodbye to its
        clients) inside the block, and up and answering after it."""
        self.faults.append("kafka kill -9")
        kafka_dir = Path(self.env.get("LOCAL_KAFKA_DIR") or ROOT / ".local" / "kafka")
        try:
            for pid_file in kafka_dir.glob("node-*/kafka.pid"):
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                while process_state(pid) not in ("", "Z"):  # (the broker is nobody's child: no wait())
                    time.sleep(0.05)
            yield
        finally:
            self.kafka_up()

    @contextlib.contextmanager
    def postgres_stopped(self) -> Iterator[None]:
        """PostgreSQL is down inside the block (``pg_ctl stop -m fast``), and up and answering after it."""
        self.faults.append("postgres stop")
        try:
            self._script("postgres.sh", "down")
            yield
        finally:
            self.postgres_up()


def process_state(pid: int) -> str:
    """The state letter of process ``pid`` (``Z`` for a zombie), or "" once it has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# ======================================================================================================
# Databases and stacks
# ======================================================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; returns its URL."""
    connection = psycopg2.connect(server_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(server_url: str, name: str) -> None:
    connection = psycopg2.connect(server_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


@dataclass
class Stack:
    """A web + workers (running or not yet), and what a test needs to talk to them.

    Made by :func:`new_stack` (which also sets ``server_url`` and ``database_name``, so that :meth:`close`
    can drop the database) or built directly (``bench/pipeline.py``)."""

    url: str
    env: dict[str, str]
    database_url: str
    logs: Path
    web: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    server_url: str | None = None
    database_name: str | None = None

    @property
    def topic_prefix(self) -> str:
        return self.env.get("KAFKA_TOPIC_PREFIX", "")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def start(self, *, workers: int = 1, processes: int = 1, threads: int = 4, timeout: float = 90) -> None:
        """Start the web and ``workers`` worker processes, and wait until the web is ready."""
        self.start_web()
        for _ in range(workers):
            self.start_worker(processes=processes, threads=threads)
        self.wait_ready(timeout)

    def start_web(self) -> None:
        port = urlsplit(self.url).port
        self.web = self._spawn(
            "web",
            [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port)],
        )

    def start_worker(
        self, processes: int = 1, threads: int = 4, *, cap: CpuCap | None = None
    ) -> subprocess.Popen:
        """Start ``dramatiq pipeline`` (the Procfile's worker line), within ``cap`` when one is given."""
        argv = [
            sys.executable,
            "-m",
            "dramatiq",
            "pipeline",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
        ]
        worker = self._spawn(f"worker{len(self.workers)}", cap.argv(argv) if cap is not None else argv)
        self.workers.append(worker)
        return worker

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        return spawn(name, argv, env=self.env, logs=self.logs)

    @staticmethod
    def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        """Signal ``process``'s group (SIGTERM, or ``sig``), SIGKILL after :data:`STOP_TIMEOUT_S`."""
        stop(process, sig)

    def stop_all(self) -> None:
        """Stop the workers and the web, side by side."""
        stop_all([*self.workers, self.web])

    def close(self, *, delete_topics: bool = False) -> None:
        """Stop every process, drop the database :func:`new_stack` made, and with ``delete_topics`` delete
        the stack's topics (its own prefix), so that runs do not pile them up."""
        self.stop_all()
        if self.server_url and self.database_name:
            drop_database(self.server_url, self.database_name)
        if delete_topics and self.topic_prefix:
            delete_topics_with_prefix(self.env["KAFKA_BOOTSTRAP_SERVERS"], self.topic_prefix)

    def log(self, name: str) -> str:
        """What process ``name`` (``web``, ``worker0``...) has written so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.web is not None and self.web.poll() is not None:
                    raise AssertionError(
                        f"the web exited with {self.web.returncode}:\n{log_tail(self.logs / 'web.log')}"
                    )
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"web did not become ready; see {self.logs}")

    def outcome(self, client: httpx.Client, submission_id: str, timeout: float = 90) -> dict:
        """Poll a submission until it has an outcome (``pipeline.contract.OUTCOMES``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = client.get(f"/api/submissions/{submission_id}")
            if response.status_code == 200 and response.json()["status"] in OUTCOMES:
                return response.json()
            time.sleep(0.1)
        raise AssertionError(f"no outcome for {submission_id} within {timeout} s")

    def batch(self, client: httpx.Client, batch_id: str, timeout: float = 120) -> dict:
        """Poll a batch until it is completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = client.get(f"/api/batches/{batch_id}")
            if response.status_code == 200 and response.json().get("state") == "completed":
                return response.json()
            time.sleep(0.2)
        raise AssertionError(f"batch {batch_id} not completed within {timeout} s")

    def sql(self, query: str, *params: object) -> list[tuple]:
        connection = psycopg2.connect(self.database_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()


#: The environment of the session's shared stack (``tests/conftest.py``): short retries and restarts.
E2E_ENV = {
    "KAFKA_PARTITIONS": "4",
    "MAX_RETRIES": "3",
    "MIN_BACKOFF_MS": "200",
    "MAX_BACKOFF_MS": "1000",
    "WORKER_METRICS_PORT": "0",
    "BATCH_CHUNK_SIZE": "50",
    "dramatiq_restart_delay": "1000",
}

S = TypeVar("S", bound=Stack)


def new_stack(
    kafka_bootstrap_servers: str | None,
    database_url: str,
    *,
    kind: str,
    env: Mapping[str, str],
    label: str | None = None,
    stack_class: type[S] = Stack,  # type: ignore[assignment]
) -> S:
    """A stack that is not started yet: its database ``bup_<kind>_<hex>`` (created on the server of
    ``database_url`` and migrated), its topic prefix ``<kind><hex>.``, its logs folder
    ``tests/artifacts/<label or kind>-<hex>/``.

    The processes' environment is this one, without ``API_TOKEN``, plus the stack's database, Kafka and
    prefix, plus ``env`` (which may set ``API_TOKEN``).  ``kafka_bootstrap_servers`` None: ``env`` says how
    to reach Kafka (a managed one's variables), and no ``KAFKA_*`` variable of this environment is kept.
    """
    run = uuid.uuid4().hex[:8]
    database_name = f"bup_{kind}_{run}"
    db_url = create_database(database_url, database_name)
    logs = ARTIFACTS / f"{label or kind}-{run}"
    logs.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "API_TOKEN"}
    full_env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", DATABASE_URL=db_url)
    if kafka_bootstrap_servers is None:
        full_env = {k: v for k, v in full_env.items() if not k.startswith("KAFKA_")}
    else:
        full_env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers, KAFKA_TOPIC_PREFIX=f"{kind}{run}.")
    full_env.update(env)
    stack = stack_class(
        url=f"http://127.0.0.1:{free_port()}",
        env=full_env,
        database_url=db_url,
        logs=logs,
        server_url=database_url,
        database_name=database_name,
    )
    try:
        migrate(full_env)
    except BaseException:
        drop_database(database_url, database_name)
        raise
    return stack


def migrate(env: Mapping[str, str]) -> None:
    """``python -m pipeline migrate`` against the database of ``env``."""
    subprocess.run(
        [sys.executable, "-m", "pipeline", "migrate"],
        cwd=ROOT,
        env=dict(env),
        check=True,
        timeout=MIGRATE_TIMEOUT_S,
    )


@contextlib.contextmanager
def start_stack(
    kafka_bootstrap_servers: str | None,
    database_url: str,
    *,
    kind: str = "e2e",
    env: Mapping[str, str] = E2E_ENV,
    workers: int = 1,
    threads: int = 4,
    delete_topics: bool = False,
) -> Iterator[Stack]:
    """A started stack (:func:`new_stack`) for the block: web + ``workers`` worker processes of one
    process and ``threads`` threads each; stopped, and its database dropped, when the block ends."""
    stack: Stack = new_stack(kafka_bootstrap_servers, database_url, kind=kind, env=env)
    try:
        stack.start(workers=workers, threads=threads)
        yield stack
    finally:
        stack.close(delete_topics=delete_topics)


def delete_topics_with_prefix(servers: str | Sequence[str], prefix: str, *, client_id: str = "tests") -> str:
    """Delete the topics and consumer groups whose names start with ``prefix`` (a stack's or a benchmark's
    own), so that runs do not pile them up: a local Kafka holding thousands of partitions restarts after a
    crash, and answers metadata, far slower.  Returns what was done.

    A group whose member has not left yet cannot be deleted; it expires on its own.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=servers.split(",") if isinstance(servers, str) else list(servers),
        client_id=client_id,
    )
    try:
        topics = [topic for topic in admin.list_topics() if topic.startswith(prefix)]
        if topics:
            admin.delete_topics(topics, timeout_ms=30_000)
        groups = [g["group_id"] for g in admin.list_groups() if g["group_id"].startswith(prefix)]
        deleted_groups = 0
        if groups:
            outcome = admin.delete_groups(groups)
            deleted_groups = sum(1 for status in outcome.values() if status == "OK")
        return f"deleted {len(topics)} topics and {deleted_groups}/{len(groups)} groups under {prefix!r}"
    finally:
        admin.close()
