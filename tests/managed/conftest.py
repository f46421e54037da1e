"""Fixtures of the managed-Kafka suite: a Kafka of its own, secured the way managed services run it.

``scripts/kafka.sh up`` with ``LOCAL_KAFKA_SECURITY=managed`` starts it (once per session, on ports and in a
folder of its own, so the shared Kafka is never touched) and ``down`` stops it at the end: a TLS listener
that requires client certificates (Heroku Kafka) and a SASL_SSL/SCRAM-SHA-512 one (Confluent Cloud, Aiven,
MSK), ACLs that give the tenant its prefix's topics and groups but no right to create topics, and the
tenant's ``users`` topics made beforehand, as an operator would.  The app is given nothing but the
platform's variables (``heroku.env``, ``sasl.env``, written by the script).

Everything here is marked ``managed`` (and ``slow``): ``-m "not managed"`` leaves it out of a quick loop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import in_ci
from tests.livestack import run_script

ROOT = Path(__file__).resolve().parents[2]
#: pytest-xdist's worker number in a parallel run (``gw<n>``), else 0: each worker runs a Kafka of its own.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
#: The operator's plaintext port of the suite's Kafka (its controller, SSL and SASL_SSL ports follow), 10
#: ports further for each worker of a parallel run.
MANAGED_KAFKA_PORT = int(os.environ.get("MANAGED_KAFKA_PORT") or 19392) + 10 * _WORKER
MANAGED_KAFKA_DIR = Path(os.environ.get("MANAGED_KAFKA_DIR") or ROOT / ".local" / "kafka-managed-test") / (
    f"worker-{_WORKER}"
)
#: The two ways in, by the name of their variables' file.
LISTENERS = ("heroku", "sasl")


def _script_env() -> dict[str, str]:
    """The environment for scripts/kafka.sh: this suite's ports and folder, and no Kafka of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LOCAL_KAFKA_"))}
    env.update(
        LOCAL_KAFKA_SECURITY="managed",
        LOCAL_KAFKA_PORT=str(MANAGED_KAFKA_PORT),
        LOCAL_KAFKA_DIR=str(MANAGED_KAFKA_DIR),
        LOCAL_KAFKA_HEAP="384m",
        LOCAL_KAFKA_STOP_TIMEOUT="30",
    )
    return env


@pytest.fixture(scope="session")
def managed_kafka() -> Iterator[dict[str, Any]]:
    """The tenant of the suite's managed Kafka: ``operator`` (a super user's address), ``prefix``, and the
    app's variables for each listener (``heroku``, ``sasl``)."""
    started = run_script("kafka.sh", "up", env=_script_env(), quiet=True)
    if started.returncode != 0:
        message = f"the managed Kafka did not start:\n{started.stderr[-3000:]}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield json.loads((MANAGED_KAFKA_DIR / "tenant.json").read_text())
    finally:
        run_script("kafka.sh", "down", env=_script_env(), quiet=True, timeout=120)


@pytest.fixture
def operator(managed_kafka: dict[str, Any]) -> Iterator[Any]:
    """An admin client of the operator (a super user, on the plaintext listener)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=managed_kafka["operator"], client_id="managed-tests")
    yield admin
    admin.close()


@pytest.fixture
def tenant_queue(managed_kafka: dict[str, Any], operator: Any) -> Iterator[str]:
    """A queue of this test, whose three topics the operator made under the tenant's prefix (2 partitions)."""
    queue = f"q{uuid.uuid4().hex[:8]}"
    names = [f"{managed_kafka['prefix']}{queue}{suffix}" for suffix in ("", ".DQ", ".XQ")]
    operator.create_topics({name: {"num_partitions": 2, "replication_factor": 1} for name in names})
    operator.wait_for_topics(names, timeout_ms=30_000)
    yield queue
    operator.delete_topics(names, raise_errors=False)


def settings_for(variables: dict[str, str]) -> ModuleType:
    """``pipeline.settings`` as it reads an environment holding ``variables`` (and no other ``KAFKA_*``): a
    module of its own, so the session's settings are left alone."""
    import pipeline.settings

    name = f"_managed_settings_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, pipeline.settings.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = dict(os.environ)
    sys.modules[name] = module  # (dataclasses look their module up)
    try:
        for key in [k for k in os.environ if k.startswith("KAFKA_")]:
            del os.environ[key]
        os.environ.update(variables)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        del sys.modules[name]
    return module


@pytest.fixture(params=LISTENERS)
def listener(request: pytest.FixtureRequest, managed_kafka: dict[str, Any]) -> str:
    """Each test runs once per secured listener."""
    return str(request.param)


@pytest.fixture
def platform_variables(managed_kafka: dict[str, Any], listener: str) -> dict[str, str]:
    """The app's variables for ``listener``, exactly as the platform sets them."""
    return dict(managed_kafka[listener])


@pytest.fixture
def tenant_broker_factory(
    platform_variables: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Builds KafkaBrokers with :func:`pipeline.broker.build_broker` from nothing but the platform's variables
    (``variables`` adds or overrides some); each is closed at the test's end."""
    import pipeline.broker
    import pipeline.kafka_security
    from tests.broker.conftest import fast_middleware

    made: list[Any] = []

    def make(variables: dict[str, str] | None = None, **overrides: Any) -> Any:
        settings = settings_for({**platform_variables, **(variables or {})})
        for module in (pipeline.broker, pipeline.kafka_security):
            monkeypatch.setattr(module, "settings", settings)
        parameters: dict[str, Any] = {
            "middleware": fast_middleware(),
            "partitions": 2,
            "send_timeout_ms": 10_000,
        }
        parameters.update(overrides)
        broker = pipeline.broker.build_broker(**parameters)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()
