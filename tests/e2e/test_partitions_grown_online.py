"""A queue's partitions grown while the web and the workers run (``python -m pipeline partitions``): the
running processes send to, and consume, the new partitions within seconds, without a restart, and no user
is lost or stored twice.  Real Kafka, real web and worker processes, a stack of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec

from pipeline.contract import OUTCOMES as TERMINAL
from tests.livestack import E2E_ENV, ROOT, Stack, start_stack

pytestmark = pytest.mark.slow

#: Partitions the stack's topics start with, and the count they are grown to.
BEFORE, AFTER = 2, 4
#: Longest the running web and workers may take, once the partitions are grown, to send to the new ones and
#: commit what they consumed there, in seconds: a few metadata refreshes of 5 s (the clients'
#: ``DEFAULT_METADATA_MAX_AGE_MS``) and one rebalance, far below kafka-python's default refresh of 5 min.
NOTICE_TIMEOUT_S = 30
#: Longest wait for every posted user to have its outcome, in seconds.
SETTLE_TIMEOUT_S = 120
GROUP_ID = "bup-workers"


@pytest.fixture
def growing_stack(kafka_bootstrap_servers: str, database_url: str) -> Iterator[Stack]:
    """Web + two worker processes (one process each) on a queue of :data:`BEFORE` partitions."""
    env = {**E2E_ENV, "KAFKA_PARTITIONS": str(BEFORE), "KAFKA_GROUP_ID": GROUP_ID}
    with start_stack(
        kafka_bootstrap_servers, database_url, kind="grow", env=env, workers=2, delete_topics=True
    ) as stack:
        yield stack


@pytest.fixture
def kafka_admin(kafka_bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers.split(","), client_id="tests")
    yield admin
    admin.close()


def wait_for_members(admin: KafkaAdminClient, group: str, members: int, timeout: float = 60) -> None:
    """Wait until ``group`` is stable with ``members`` members (each worker holds partitions)."""
    deadline = time.monotonic() + timeout
    while True:
        described = admin.describe_groups([group]).get(group, {})
        state = (described.get("group_state"), len(described.get("members", [])))
        if state == ("Stable", members):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} is {state}, not stable with {members} members")
        time.sleep(0.2)


def end_offsets(admin: KafkaAdminClient, partitions: list[TopicPartition]) -> dict[int, int]:
    found = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
    return {tp.partition: found[tp].offset for tp in partitions}


def committed_offsets(
    admin: KafkaAdminClient, group: str, partitions: list[TopicPartition]
) -> dict[int, int]:
    found = admin.list_group_offsets({group: partitions}).get(group, {})
    return {tp.partition: (found[tp].offset if found.get(tp) else -1) for tp in partitions}


def post_user(api: httpx.Client, name: str) -> str:
    response = api.post("/api/user", json={"name": name, "age": 30})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for_outcomes(stack: Stack, ids: list[str]) -> dict[str, int]:
    """Wait until every submission of ``ids`` has its outcome; returns the count of each status."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        rows = stack.sql("SELECT status, count(*) FROM submissions WHERE id = ANY(%s) GROUP BY status", ids)
        counts = {status: n for status, n in rows}
        if sum(n for status, n in counts.items() if status in TERMINAL) == len(ids):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(ids)} users posted, outcomes after {SETTLE_TIMEOUT_S} s: {counts}")
        time.sleep(0.2)


def test_partitions_grown_while_web_and_workers_run_are_used_within_seconds_and_lose_nothing(
    growing_stack: Stack, kafka_admin: KafkaAdminClient, tag: str
):
    stack = growing_stack
    topic = f"{stack.topic_prefix}users"
    group = f"{stack.topic_prefix}{GROUP_ID}.users"
    new = [TopicPartition(topic, p) for p in range(BEFORE, AFTER)]
    # Given a web and two workers sharing the queue's two partitions, and users on their way
    wait_for_members(kafka_admin, group, members=2)
    processes = [stack.web, *stack.workers]
    with stack.client() as api:
        ids = [post_user(api, f"Grow {tag} before {i}") for i in range(20)]

        # When the command grows the queue to four partitions while they run
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "partitions", "users", str(AFTER)],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        grown_at = time.monotonic()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{topic}: {BEFORE} -> {AFTER}\n{topic}.DQ: {BEFORE} -> {AFTER}\n" == done.stdout

        # and users keep coming, until the new partitions are written to and committed by the workers
        ends = commits = dict.fromkeys(range(BEFORE, AFTER), -1)
        while time.monotonic() - grown_at < NOTICE_TIMEOUT_S:
            ids.append(post_user(api, f"Grow {tag} after {len(ids)}"))
            ends, commits = end_offsets(kafka_admin, new), committed_offsets(kafka_admin, group, new)
            if all(ends[p] > 0 for p in ends) and all(commits[p] > 0 for p in commits):
                break
            time.sleep(0.1)
        noticed_s = time.monotonic() - grown_at
        ids += [post_user(api, f"Grow {tag} last {i}") for i in range(20)]

    # Then the new partitions received messages, and the running workers consumed and committed them
    # within the bound
    assert all(ends[p] > 0 for p in ends), (
        f"end offsets of the new partitions: {ends} after {noticed_s:.1f} s"
    )
    assert all(commits[p] > 0 for p in commits), (
        f"group {group} committed {commits} on the new partitions after {noticed_s:.1f} s (ends {ends})"
    )
    # And every user posted is stored, once
    assert wait_for_outcomes(stack, ids) == {"stored": len(ids)}
    stored = stack.sql("SELECT count(*), count(DISTINCT name) FROM users WHERE name LIKE %s", f"Grow {tag} %")
    assert stored == [(len(ids), len(ids))]
    assert stack.sql("SELECT count(DISTINCT user_id) FROM submissions WHERE id = ANY(%s)", ids) == [
        (len(ids),)
    ]
    # And nothing was restarted
    assert [p.poll() for p in processes] == [None] * len(processes)
    for i in range(len(stack.workers)):
        assert "exited unexpectedly" not in stack.log(f"worker{i}")
    print(f"new partitions written to and committed {noticed_s:.1f} s after growing")
