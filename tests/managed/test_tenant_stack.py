"""The service as the Procfile runs it (real ``uvicorn`` and ``dramatiq pipeline`` processes) on a managed
Kafka, given nothing but the platform's variables; and what an operator is told when a topic is missing."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.livestack import ARTIFACTS, ROOT, Stack, log_tail, new_stack, running

pytestmark = [pytest.mark.managed, pytest.mark.slow]


#: The processes' settings besides Kafka's: short retries and restarts.
_APP_SETTINGS = {
    "MAX_RETRIES": "2",
    "MIN_BACKOFF_MS": "200",
    "MAX_BACKOFF_MS": "1000",
    "WORKER_METRICS_PORT": "0",
    "dramatiq_restart_delay": "1000",
}


def _app_env(variables: dict[str, str], database_url: str) -> dict[str, str]:
    """The processes' environment: the platform's Kafka variables, and no ``KAFKA_*`` of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.pop("API_TOKEN", None)
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", DATABASE_URL=database_url, **_APP_SETTINGS)
    env.update(variables)
    return env


@pytest.fixture(scope="module", params=["heroku", "sasl"])
def tenant_stack(
    request: pytest.FixtureRequest, managed_kafka: dict[str, Any], database_url: str
) -> Iterator[Stack]:
    """Web + one worker process on the tenant's ``users`` topics (made by the operator), per listener."""
    env = {**_APP_SETTINGS, **managed_kafka[request.param]}
    stack = new_stack(None, database_url, kind="managed", label=f"managed-{request.param}", env=env)
    try:
        stack.start(threads=2)
        yield stack
    finally:
        stack.close()


def test_a_posted_user_is_stored_through_the_secured_kafka(tenant_stack: Stack):
    # Given the web and a worker that know Kafka only by the platform's variables
    tag = uuid.uuid4().hex[:8]
    with tenant_stack.client() as api:
        # When a user is posted
        response = api.post("/api/user", json={"name": f"Ada {tag}", "age": 36})
        assert response.status_code == 202, response.text
        outcome = tenant_stack.outcome(api, response.json()["id"], timeout=60)

        # Then it is stored, and the web is ready
        assert outcome["status"] == "stored", outcome
        assert api.get("/readyz").status_code == 200
    assert tenant_stack.sql("SELECT count(*) FROM users WHERE name = %s", f"Ada {tag}") == [(1,)]


def test_a_csv_batch_and_the_operator_pages_health_work_through_the_secured_kafka(tenant_stack: Stack):
    # Given the web and a worker that know Kafka only by the platform's variables
    tag = uuid.uuid4().hex[:8]
    csv = f"name.firstName,name.lastName,age\r\nAnn,Lee{tag},30\r\nBob,Ray{tag},abc\r\nAnn,Lee{tag},30\r\n"
    with tenant_stack.client() as api:
        # When a CSV batch is posted
        response = api.post("/api/users", content=csv.encode(), headers={"content-type": "text/csv"})
        assert response.status_code == 202, response.text
        batch = tenant_stack.batch(api, response.json()["batch_id"])
        # ...and the operator page asks how the queue is doing
        overview = api.get("/api/overview")

    # Then every row has its outcome, and the page reads the tenant's lag and failed topic with its rights
    assert batch["counts"]["stored"] == 1
    assert batch["counts"]["duplicate"] == 1
    assert batch["counts"]["invalid"] == 1
    assert overview.status_code == 200, overview.text
    assert overview.json()["failed_messages"] == 0
    assert set(overview.json()["lag"]) == {"users", "users.DQ"}


def _without_topics(variables: dict[str, str]) -> dict[str, str]:
    """The platform's variables with a prefix of the tenant under which nobody made topics."""
    key = "KAFKA_TOPIC_PREFIX" if "KAFKA_TOPIC_PREFIX" in variables else "KAFKA_PREFIX"
    return {**variables, key: f"{variables[key]}void{uuid.uuid4().hex[:6]}."}


def test_readyz_and_the_503_say_which_topic_is_missing_and_how_to_make_it(
    tenant_broker_factory: Any, platform_variables: dict[str, str]
):
    from starlette.testclient import TestClient

    from web.app import create_app

    # Given a web app whose queue's topics do not exist, on a Kafka where it may not create them
    broker = tenant_broker_factory(_without_topics(platform_variables))
    with TestClient(create_app(broker, database_check=lambda: None)) as client:
        # When it is asked whether it is ready, and sent a user
        ready = client.get("/readyz")
        posted = client.post("/api/user", json={"name": "Ada", "age": 36})

    # Then both answer 503 with the missing topics and Heroku's command, the post as queue_unavailable
    assert ready.status_code == 503
    assert f"'{broker.topic_prefix}users'" in ready.json()["error"]["message"]
    assert posted.status_code == 503
    error = posted.json()["error"]
    assert error["code"] == "queue_unavailable"
    assert "heroku kafka:topics:create users.XQ" in error["message"]
    assert "no right to create topics" in error["message"]


def test_the_worker_logs_which_topic_is_missing_at_start_up(managed_kafka: dict[str, Any], database_url: str):
    # Given a worker started with the Heroku variables and a prefix under which nobody made topics
    env = _app_env(_without_topics(managed_kafka["heroku"]), database_url)
    name = f"managed-worker-{uuid.uuid4().hex[:8]}"
    log = ARTIFACTS / f"{name}.log"
    argv = [sys.executable, "-m", "dramatiq", "pipeline", "--processes", "1", "--threads", "1"]
    with running(name, argv, env=env, logs=ARTIFACTS) as worker:
        # When it starts, its log names the missing topics and the command that makes them
        deadline = time.monotonic() + 60
        while "heroku kafka:topics:create users" not in log.read_text(errors="replace"):
            assert worker.poll() is None, log_tail(log)
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.5)
    # Then the whole message is there: the topics, their settings, and why they were not made
    text = log.read_text(errors="replace")
    assert "Kafka topics missing (Kafka refused to create them: no right to create topics)" in text
    assert "users.XQ" in text and "retention.ms=1209600000" in text
