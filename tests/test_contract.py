"""The contract between web and worker, and who loads what: the web never loads the worker, and only
Dramatiq's command line makes ``import pipeline`` declare the actors.  Each check runs in a fresh
interpreter, since the test process itself has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.contract import OUTCOMES, Status

ROOT = Path(__file__).resolve().parent.parent


def fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter at the repository's root; it prints one JSON value."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


LOADED = """
import json, sys
import dramatiq.broker
{imports}
print(json.dumps({{
    "actors": "pipeline.actors" in sys.modules,
    "worker": "pipeline.worker" in sys.modules,
    "web": any(name == "web" or name.startswith("web.") for name in sys.modules),
    "broker": dramatiq.broker.global_broker is not None,
}}))
"""


def test_the_contract_imports_neither_side():
    # When
    loaded = fresh(LOADED.format(imports="import pipeline.contract"))
    # Then
    assert loaded == {"actors": False, "worker": False, "web": False, "broker": False}


def test_importing_the_web_loads_no_actor_and_builds_no_broker():
    # When
    loaded = fresh(LOADED.format(imports="import web.app"))
    # Then
    assert loaded["actors"] is False and loaded["worker"] is False and loaded["broker"] is False


def test_dramatiqs_command_line_gets_the_actors_and_the_global_broker_from_the_package():
    # When the package is imported the way ``dramatiq pipeline`` imports it
    loaded = fresh(
        LOADED.format(
            imports="sys.argv = ['dramatiq', 'pipeline', '--processes', '2']\nimport dramatiq.cli, pipeline"
        )
    )
    # Then
    assert loaded["actors"] is True and loaded["broker"] is True and loaded["web"] is False


def test_a_foreign_dramatiq_app_that_imports_the_contract_gets_no_actor_of_ours():
    # When a worker of another app (``dramatiq theirapp``) imports the contract to send to our actors by name
    loaded = fresh(
        LOADED.format(imports="sys.argv = ['dramatiq', 'theirapp']\nimport dramatiq.cli, pipeline.contract")
    )
    # Then
    assert loaded == {"actors": False, "worker": False, "web": False, "broker": False}


def test_the_worker_declares_every_actor_of_the_contract_on_its_queue():
    # When
    declared = fresh(
        "import json, pipeline.worker as w, pipeline.contract as c\n"
        "print(json.dumps({n: w.broker.get_actor(n).queue_name for n in (c.PROCESS_USER, c.PROCESS_USERS,"
        " c.VALIDATE_USERS, c.PERSIST_USERS, c.REGISTER_BATCH, c.RECORD_FAILURE)}))"
    )
    # Then
    assert set(declared.values()) == {"users"}


def test_statuses_are_the_strings_of_the_api_and_the_database():
    assert [str(s) for s in Status] == ["queued", "stored", "duplicate", "invalid", "failed"]
    assert json.dumps({Status.QUEUED: Status.STORED}) == '{"queued": "stored"}'
    assert Status.QUEUED not in OUTCOMES
