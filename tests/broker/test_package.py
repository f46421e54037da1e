"""The broker as a package of its own: importable without the service, and installable alone."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dramatiq_kafka_broker"
#: Top-level modules of the service and of what only the service needs.
SERVICE_MODULES = {
    "pipeline",
    "web",
    "tests",
    "bench",
    "cerberus",
    "peewee",
    "psycopg2",
    "starlette",
    "uvicorn",
}


def _sources() -> list[Path]:
    """The package's modules, its subpackages' (``share/``) and their message definitions."""
    found = [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py"), *PACKAGE.glob("*/schemas/*.py")]
    return sorted(found + list(PACKAGE.glob("*/schemas/*.json")))


def test_importing_every_module_of_the_broker_loads_nothing_of_the_service():
    # Given every module of the package
    modules = sorted(
        "dramatiq_kafka_broker." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for path in _sources()
        if path.suffix == ".py"
    )
    code = (
        "import importlib, json, sys\n"
        "import dramatiq.cli\n"  # as in a worker process started by `dramatiq theirapp`
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    # When they are imported in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", code, "theirapp"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # Then none of the service's modules (nor what only they need) was loaded
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "dramatiq_kafka_broker.middleware" in modules and "kafka" in loaded
    assert loaded & SERVICE_MODULES == set()


def test_the_broker_builds_a_distribution_of_its_own_that_needs_only_dramatiq_and_kafka_python(tmp_path):
    # Given a copy of the package's directory (a build writes into the tree it builds)
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    # When its own pyproject.toml is built (with this setuptools, as the service's wheel is)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("dramatiq_kafka_broker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    # Then it holds the package's modules and nothing else of the repository
    packaged = {n for n in names if not n.startswith("dramatiq_kafka_broker-")}
    assert packaged == {f"dramatiq_kafka_broker/{p.relative_to(PACKAGE).as_posix()}" for p in _sources()}
    assert "dramatiq_kafka_broker/share/schemas/ShareFetchRequest.json" in packaged
    # ... and requires Dramatiq and kafka-python by version ranges (the service pins exact versions)
    required = {
        r.split(";")[0].replace(" ", "") for r in metadata.get_all("Requires-Dist") if "extra" not in r
    }
    names_required = {r.split("<")[0].split(">")[0].split("=")[0] for r in required}
    assert names_required == {"dramatiq", "kafka-python"}, required
    assert all("<" in r and ">=" in r for r in required), required
