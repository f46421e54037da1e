"""Where the CPU went during a phase of ``bench/pipeline.py``: seconds per component, read from ``/proc``.

A snapshot reads ``utime + stime`` of every process and the machine's busy time (``/proc/stat``); the
difference of two snapshots, grouped by component (the web process tree, the worker process tree, Kafka,
PostgreSQL, the benchmark itself), says which part a phase kept busy.  Processes that ended between the
snapshots are lost, and land in ``other`` with everything else the machine did (other users included).
Kafka and PostgreSQL are the processes listening on their ports (and, for PostgreSQL, its backends).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class _Process:
    pid: int
    ppid: int
    comm: str
    ticks: int


def _processes() -> dict[int, _Process]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # comm is in parentheses and may hold spaces: split after its closing one.
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        pid = int(entry.name)
        found[pid] = _Process(pid, int(rest[1]), comm, int(rest[11]) + int(rest[12]))
    return found


def _busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def listener(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (IPv4 or IPv6), or None when it cannot be seen.

    Kafka and PostgreSQL are told apart from the other brokers and clusters on the machine this way (the
    PostgreSQL listener is the postmaster, the parent of every backend)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cells = line.split()
            if cells[3] == "0A" and int(cells[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cells[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


@dataclass
class Snapshot:
    busy: int
    ticks: dict[int, int]
    tree: dict[int, int]  # pid -> ppid
    comm: dict[int, str]


def snapshot() -> Snapshot:
    """The CPU counters of every process now."""
    processes = _processes()
    return Snapshot(
        busy=_busy_ticks(),
        ticks={p.pid: p.ticks for p in processes.values()},
        tree={p.pid: p.ppid for p in processes.values()},
        comm={p.pid: p.comm for p in processes.values()},
    )


@dataclass
class Components:
    """Roots of the process trees to tell apart (pids); the rest of the machine is ``other``."""

    roots: dict[str, int] = field(default_factory=dict)

    def classify(self, pid: int, tree: dict[int, int], comm: dict[int, str]) -> str:
        seen = pid
        for _ in range(64):  # walk up to a root we know
            for name, root in self.roots.items():
                if seen == root:
                    return name
            parent = tree.get(seen)
            if parent is None or parent <= 1:
                break
            seen = parent
        return "other"

    def between(self, before: Snapshot, after: Snapshot) -> dict[str, float]:
        """CPU seconds per component from ``before`` to ``after``; ``machine`` is all of it."""
        seconds: dict[str, float] = {}
        for pid, ticks in after.ticks.items():
            used = ticks - before.ticks.get(pid, 0)
            if used > 0:
                name = self.classify(pid, after.tree, after.comm)
                seconds[name] = seconds.get(name, 0.0) + used / _TICKS
        machine = (after.busy - before.busy) / _TICKS
        known = sum(v for k, v in seconds.items() if k != "other")
        result = dict(seconds)
        result["other"] = max(0.0, machine - known)
        result["machine"] = machine
        return result
