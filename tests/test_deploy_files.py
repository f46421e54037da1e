"""docker-compose.yml, Dockerfile, Procfile and app.json, proven as far as a machine without Docker can.

No Docker engine runs here, so nothing builds the image or starts the containers.  What can be proven is:

* the compose file is valid against the Compose Specification's JSON schema (``tests/data/``);
* the files agree with each other and with the code: every variable they set is one the application reads,
  the service addresses match the kafka and postgres services, the start order is migrate after a healthy
  postgres and web/worker after migrate and a healthy kafka, the Dockerfile's CMD and the compose commands
  are the Procfile's lines, the image ends as a non-root user, everything it COPYs exists in the context;
* a wheel of exactly what the Dockerfile COPYs keeps the operator page's static files;
* a rehearsal of the compose stack: what the Dockerfile COPYs is copied into a directory that stands for the
  image's ``/app``, and the ``migrate``, ``web`` and ``worker`` commands (the Dockerfile's CMD for web) run
  there with the compose environment, on the real local Kafka and PostgreSQL instead of the ``kafka`` and
  ``postgres`` services; their compose healthchecks must pass, a user posted to the web must be stored, and
  both must stop within Docker's grace period on a SIGTERM to their main process.

Docker itself (the image build, the base image, the non-root user at run time, container networking and
compose's own ordering) stays unproven here.
"""

from __future__ import annotations

import contextlib
import functools
import graphlib
import hashlib
import importlib.util
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.livestack import (
    ARTIFACTS,
    create_database,
    delete_topics_with_prefix,
    drop_database,
    free_port,
    log_tail,
    spawn,
    stop,
    stop_all,
    wait_group_gone,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROCFILE = ROOT / "Procfile"
APP_JSON = ROOT / "app.json"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_README = ROOT / "tests" / "data" / "README.md"
VENV_BIN = Path(sys.executable).parent

#: The compose services that run the application's image (the others are kafka and postgres).
APP_SERVICES = ("migrate", "web", "worker")
#: Variables that the interpreter (not our code) reads at run time.
INTERPRETER_VARIABLES = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
#: Variables of the Dockerfile's ENV that only pip reads, during the image's RUN steps.
BUILD_VARIABLES = {"PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
#: What each Heroku add-on of app.json sets in the app's environment (Heroku's documentation).
ADDON_VARIABLES = {
    "heroku-postgresql": {"DATABASE_URL"},
    "heroku-kafka": {
        "KAFKA_URL",
        "KAFKA_TRUSTED_CERT",
        "KAFKA_CLIENT_CERT",
        "KAFKA_CLIENT_CERT_KEY",
        "KAFKA_PREFIX",
    },
}
#: Seconds Docker waits after SIGTERM before it kills a container (compose's default stop_grace_period).
STOP_GRACE_SECONDS = 10
#: Longest wait for a rehearsed service's healthcheck to pass (compose's own is longer; see the file).
HEALTHY_TIMEOUT_SECONDS = 45
#: Longest wait for a posted user to be stored.
STORED_TIMEOUT_SECONDS = 30

_SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_SHELL_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


# ======================================================================================================
# Reading the files
# ======================================================================================================


def compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it: YAML with its merge keys (``<<``), then interpolated."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), {})


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


def interpolate(value: Any, host_env: Mapping[str, str]) -> Any:
    """Compose's interpolation of every string value: ``$$`` is a ``$``; ``$NAME``, ``${NAME}``,
    ``${NAME:-default}`` and friends come from the host's environment ``host_env``."""
    if isinstance(value, dict):
        return {key: interpolate(item, host_env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, host_env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        if name is None:
            raise AssertionError(f"compose cannot interpolate {value!r} (a lone '$': write '$$')")
        current, op, arg = host_env.get(name), match["op"], match["arg"]
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in {":?", "?"}:
            if current is None or (op == ":?" and not current):
                raise AssertionError(f"compose needs {name} in the host's environment: {arg}")
            return current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return "" if current is None else arg
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's ``environment`` (map or ``KEY=VALUE`` list) as the container's strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {key: _compose_str(value) for key, value in raw.items() if value is not None}


def _compose_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def depends_on(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: {"condition": "service_started"} for name in raw}
    return raw


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """``(host_ip, host_port, container_port)`` of each published port (short and long syntax)."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            ports.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            ports.append(("", int(parts[0]), int(parts[1])))
        else:
            raise AssertionError(f"port {entry!r} is published on a random host port")
    return ports


def healthcheck_argv(test: str | list[str]) -> list[str]:
    """The command Docker runs for a healthcheck ``test`` (``CMD`` and ``CMD-SHELL`` forms)."""
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD" and rest:
        return list(rest)
    if kind == "CMD-SHELL" and len(rest) == 1:
        return ["sh", "-c", rest[0]]
    raise AssertionError(f"healthcheck test {test!r} is disabled or malformed")


def duration_seconds(text: str) -> float:
    """A compose duration (``1m30s``, ``500ms``, ``5s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(a + b for a, b in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(KEYWORD, arguments)``, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # comments (also inside a continued instruction, as Docker drops them) and blank lines
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile():
        if keyword != "ENV":
            continue
        words = shlex.split(arguments)
        if "=" not in words[0]:  # the legacy form, ENV NAME value
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def dockerfile_cmd() -> list[str]:
    commands = [arguments for keyword, arguments in dockerfile() if keyword == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    assert commands[-1].startswith("["), "the CMD should be in exec form (signals reach the process)"
    return json.loads(commands[-1])


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of each COPY/ADD from the build context."""
    copies = []
    for keyword, arguments in dockerfile():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        flags = [word for word in words if word.startswith("--")]
        assert not any(flag.startswith("--from") for flag in flags), "multi-stage COPY: teach this test"
        words = [word for word in words if not word.startswith("--")]
        copies.append((words[:-1], words[-1]))
    return copies


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """``(is_exception, regex)`` of each .dockerignore line, in order (the last match wins)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, _glob_regex(pattern)))
    return rules


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out, i = out + "(?:.*/)?", i + 1
            else:
                out += ".*"
            continue
        char = pattern[i]
        out += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out ``relative`` (a path, or one of its parents, matches)."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for exception, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            result = not exception
    return result


def copy_build_sources(destination: Path) -> list[str]:
    """Copy what the Dockerfile COPYs (less what .dockerignore leaves out) into ``destination``, which
    stands for the image's WORKDIR; returns the relative paths of the files copied."""
    rules = dockerignore()
    copied = []
    for sources, target in dockerfile_copies():
        for source in sources:
            path = ROOT / source
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                relative_in_context = file.relative_to(ROOT).as_posix()
                if ignored(relative_in_context, rules):
                    continue
                if path.is_dir():
                    inside = posixpath.join(target, file.relative_to(path).as_posix())
                elif target.endswith("/") or len(sources) > 1:
                    inside = posixpath.join(target, path.name)
                else:
                    inside = target
                inside = posixpath.normpath(inside)
                assert not inside.startswith(("/", "..")), f"COPY {source} {target} leaves the WORKDIR"
                (destination / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination / inside)
                copied.append(inside)
    return copied


def procfile() -> dict[str, str]:
    lines = {}
    for raw in PROCFILE.read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            name, _, command = raw.partition(":")
            lines[name.strip()] = command.strip()
    return lines


def env_example_names() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


class _RecordingEnviron(dict):
    """An ``os.environ`` stand-in that remembers every name asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def load_settings(env: Mapping[str, str]) -> tuple[ModuleType, set[str]]:
    """A fresh ``pipeline/settings.py`` run against ``env`` alone, and every variable name it read."""
    recorder = _RecordingEnviron(env)
    spec = importlib.util.spec_from_file_location("_deploy_files_settings", ROOT / "pipeline" / "settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = os.environ
    os.environ = recorder  # type: ignore[assignment]
    # Registered while it runs, as importlib's recipe does: its dataclass looks its module up there.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ = saved
        del sys.modules[spec.name]
    return module, recorder.read


def command_lines() -> dict[str, str]:
    """The process command lines, by where they are: the Procfile's, the Dockerfile's CMD and compose's
    commands (after compose's ``$$`` -> ``$``), as the shell gets them."""
    lines = {f"Procfile {name}": line for name, line in procfile().items()}
    lines["Dockerfile CMD"] = " ".join(dockerfile_cmd())
    for name, service in compose()["services"].items():
        command = service.get("command")
        if name in APP_SERVICES and command:
            lines[f"compose {name}.command"] = command if isinstance(command, str) else " ".join(command)
    return lines


def command_line_variables() -> dict[str, str]:
    """Shell variables that the command lines use, each with where it was first seen."""
    found: dict[str, str] = {}
    for where, line in command_lines().items():
        for name in _SHELL_VARIABLE.findall(line):
            found.setdefault(name, where)
    return found


# ======================================================================================================
# 1. The compose file against the Compose Specification
# ======================================================================================================


def test_the_vendored_schema_is_the_one_its_readme_names():
    recorded = re.search(r"sha256: ([0-9a-f]{64})", SCHEMA_README.read_text())
    assert recorded, "tests/data/README.md must give the schema's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded[1]


def test_the_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    # The schema says draft-07 ("$schema" without the trailing '#', which jsonschema does not recognise).
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    document = compose()

    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '<top>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]
    assert errors == [], "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)

    # The schema is strict enough to catch the mistakes that matter: a misspelt key, a wrong condition.
    misspelt = json.loads(json.dumps(document))
    misspelt["services"]["web"]["helthcheck"] = misspelt["services"]["web"].pop("healthcheck")
    assert not validator.is_valid(misspelt)
    wrong_condition = json.loads(json.dumps(document))
    wrong_condition["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert not validator.is_valid(wrong_condition)


# ======================================================================================================
# 2. The files against each other and against the code
# ======================================================================================================


def test_every_variable_the_deploy_files_set_is_one_the_application_reads():
    settings, read_by_settings = load_settings({})
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "PORT"} <= read_by_settings  # the recorder works
    on_command_lines = command_line_variables()
    documented = env_example_names()

    # A variable that a command line uses must be one the code reads too or one .env.example documents
    # (a misspelt ${WEB_CONCURENCY:-1} would silently stay at its default otherwise) ...
    undocumented = {
        name: where for name, where in on_command_lines.items() if name not in read_by_settings | documented
    }
    assert undocumented == {}, f"command lines use variables nobody sets or reads: {undocumented}"
    # ... and its default on the command line must be the code's default.
    for where, line in command_lines().items():
        for name, default in _SHELL_DEFAULT.findall(line):
            if hasattr(settings, name):
                assert str(getattr(settings, name)) == default, f"{where}: ${{{name}:-{default}}}"

    app_json = json.loads(APP_JSON.read_text())
    addons = {}
    for addon in app_json.get("addons", []):
        plan = addon if isinstance(addon, str) else addon["plan"]
        service = plan.split(":")[0]
        assert service in ADDON_VARIABLES, f"app.json add-on {service}: say in this test what it sets"
        addons[service] = ADDON_VARIABLES[service]
    services = compose()["services"]
    sources: dict[str, set[str]] = {
        **{f"compose {name}.environment": set(environment(services[name])) for name in APP_SERVICES},
        "app.json env": set(app_json.get("env", {})),
        **{f"app.json add-on {service}": names for service, names in addons.items()},
        "Heroku (web dynos)": {"PORT"},
        "Dockerfile ENV": set(dockerfile_env()),
        ".env.example (compose's env_file, honcho)": documented,
    }
    known = read_by_settings | set(on_command_lines) | INTERPRETER_VARIABLES | BUILD_VARIABLES
    unknown = {where: sorted(names - known) for where, names in sources.items() if names - known}
    assert unknown == {}, f"variables set for the app that nothing reads: {unknown}"

    # Every value they give is one the settings accept.
    generated = {"secret": uuid.uuid4().hex}
    for where, env in {
        **{f"compose {name}": environment(services[name]) for name in APP_SERVICES},
        "Dockerfile ENV": dockerfile_env(),
        "app.json": {
            name: spec["value"] if "value" in spec else generated[spec["generator"]]
            for name, spec in app_json.get("env", {}).items()
            if "value" in spec or "generator" in spec
        },
    }.items():
        try:
            load_settings(env)
        except ValueError as error:
            pytest.fail(f"{where}: pipeline/settings.py refuses its environment: {error}")


def test_app_json_formation_names_procfile_processes():
    formation = json.loads(APP_JSON.read_text()).get("formation", {})
    lines = procfile()
    assert set(formation) <= set(lines), (
        f"app.json scales processes the Procfile lacks: {set(formation) - set(lines)}"
    )
    assert {"web", "worker", "release"} <= set(lines)


def test_depends_on_starts_migrate_after_postgres_and_web_and_worker_after_migrate_and_kafka():
    services = compose()["services"]
    graph = {name: set(depends_on(service)) for name, service in services.items()}
    for name, needs in graph.items():
        assert needs <= set(services), (
            f"{name} depends on services that do not exist: {needs - set(services)}"
        )
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle

    def condition(service: str, dependency: str) -> str | None:
        return depends_on(services[service]).get(dependency, {}).get("condition")

    assert condition("migrate", "postgres") == "service_healthy"
    for name in ("web", "worker"):
        assert condition(name, "migrate") == "service_completed_successfully", name
        assert condition(name, "kafka") == "service_healthy", name
        assert order.index("migrate") < order.index(name)

    # service_healthy needs a healthcheck on the dependency.
    for name, service in services.items():
        for dependency, spec in depends_on(service).items():
            if spec.get("condition") == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{dependency} has no healthcheck"
                healthcheck_argv(check["test"])
    # A one-shot that compose restarts after it exits 0 would migrate forever.
    restart = str(services["migrate"].get("restart", "no"))
    assert restart == "no" or restart.startswith("on-failure"), f"migrate: restart {restart}"
    # The three run the one image that the Dockerfile builds.
    images = {json.dumps([services[name].get("build"), services[name].get("image")]) for name in APP_SERVICES}
    assert len(images) == 1 and services["migrate"].get("build") is not None, images
    for name in ("web", "worker"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_service_addresses_match_the_kafka_and_postgres_services():
    document = compose()
    services = document["services"]
    kafka_env = environment(services["kafka"])
    listeners = dict(
        (entry.split("://")[0], entry.split("://")[1]) for entry in kafka_env["KAFKA_LISTENERS"].split(",")
    )
    advertised = dict(
        (entry.split("://")[0], entry.split("://")[1])
        for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    protocols = dict(
        entry.split(":") for entry in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    postgres_env = environment(services["postgres"])

    for name in APP_SERVICES:
        env = environment(services[name])
        settings, _ = load_settings(env)
        # Kafka: each bootstrap address is a listener the kafka service advertises under that very name.
        for server in settings.KAFKA_BOOTSTRAP_SERVERS:
            host, _, port = server.rpartition(":")
            assert host in services, f"{name}: Kafka at {server}, not a compose service"
            matching = [listener for listener, address in advertised.items() if address == server]
            assert matching, f"{name}: kafka advertises {advertised}, not {server}"
            assert listeners[matching[0]].endswith(f":{port}"), f"kafka listens on {listeners}, not :{port}"
            assert protocols[matching[0]] == settings.KAFKA_SECURITY_PROTOCOL, (name, matching[0])
        # PostgreSQL: the URL names the postgres service, its port and its own user, password and database.
        url = urlsplit(settings.DATABASE_URL)
        assert url.hostname == "postgres" and (url.port or 5432) == 5432, settings.DATABASE_URL
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env.get("POSTGRES_PASSWORD")
        assert url.path == f"/{postgres_env.get('POSTGRES_DB', postgres_env['POSTGRES_USER'])}"

    # Kafka's published port is a listener that advertises the host's side of it.
    for _, host_port, container_port in published_ports(services["kafka"]):
        listener = next(name for name, address in listeners.items() if address.endswith(f":{container_port}"))
        assert advertised[listener] in {f"localhost:{host_port}", f"127.0.0.1:{host_port}"}, listener
    # The KRaft quorum is this node, on the controller listener.
    node, _, voter = kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == kafka_env["KAFKA_NODE_ID"]
    controller = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert listeners[controller].endswith(":" + voter.rpartition(":")[2])

    # The addresses that the header comment gives the tests are the published ports.
    header = COMPOSE_FILE.read_text().split("\nname:")[0]
    kafka_published = {f"127.0.0.1:{host}" for _, host, _ in published_ports(services["kafka"])}
    postgres_host_port = published_ports(services["postgres"])[0][1]
    assert re.search(r"KAFKA_BOOTSTRAP_SERVERS=(\S+)", header)[1] in kafka_published  # type: ignore[index]
    header_db = urlsplit(re.search(r"DATABASE_URL=(\S+)", header)[1])  # type: ignore[index]
    assert (header_db.port, header_db.username, header_db.password) == (
        postgres_host_port,
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
    )

    # The web listens on $PORT, which is the published container port, the healthcheck's and the EXPOSE'd.
    web = services["web"]
    port = int(environment(web)["PORT"])
    assert [container for _, _, container in published_ports(web)] == [port]
    assert f"127.0.0.1:{port}/" in " ".join(web["healthcheck"]["test"])
    exposed = [args for keyword, args in dockerfile() if keyword == "EXPOSE"]
    assert exposed == [str(port)]
    # The worker's healthcheck asks its metrics exporter, on the port the settings give it.
    worker_settings, _ = load_settings(environment(services["worker"]))
    assert worker_settings.WORKER_METRICS_PORT, "the worker's healthcheck needs its metrics exporter"
    assert f"127.0.0.1:{worker_settings.WORKER_METRICS_PORT}/" in " ".join(
        services["worker"]["healthcheck"]["test"]
    )


def _argv_through_shell(command: list[str], env: Mapping[str, str], fakebin: Path) -> list[str]:
    """The argv that ``command`` hands to its program, found by putting fakes of the programs on PATH."""
    result = subprocess.run(
        command,
        env={"PATH": f"{fakebin}:/usr/bin:/bin", **env},
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode().split("\0")[:-1]


def test_the_dockerfile_cmd_and_compose_commands_are_the_procfile_lines(tmp_path):
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for program in ("uvicorn", "dramatiq", "python"):
        fake = fakebin / program
        fake.write_text('#!/bin/sh\nprintf \'%s\\0\' "${0##*/}" "$@"\n')
        fake.chmod(0o755)
    lines = procfile()
    services = compose()["services"]
    cases = [
        ("web", dockerfile_cmd(), [{"PORT": "8000"}, {"PORT": "5123", "WEB_CONCURRENCY": "3"}]),
        ("worker", services["worker"]["command"], [{}, {"WORKER_PROCESSES": "3", "WORKER_THREADS": "5"}]),
        ("release", services["migrate"]["command"], [{}]),
    ]
    for process, command, environments in cases:
        for env in environments:
            container = _argv_through_shell(command, env, fakebin)
            heroku = _argv_through_shell(["sh", "-c", lines[process]], env, fakebin)
            assert container == heroku, (
                f"{process} with {env}: image/compose {container} != Procfile {heroku}"
            )
    web = _argv_through_shell(dockerfile_cmd(), {"PORT": "8000"}, fakebin)
    assert web[:2] == ["uvicorn", "web.app:app"] and "--proxy-headers" in web, web


def test_the_dockerfile_ends_as_a_non_root_user_that_it_creates():
    instructions = dockerfile()
    users = [index for index, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    assert users, "the image runs as root: add a USER"
    user = instructions[users[-1]][1].split(":")[0]
    assert user not in {"root", "0"}, f"the last USER is {user}"
    created = [
        args
        for keyword, args in instructions[: users[-1]]
        if keyword == "RUN" and re.search(rf"\b(useradd|adduser)\b.*\b{re.escape(user)}\b", args)
    ]
    assert created or user.isdigit(), f"USER {user} is never created (useradd/adduser) before it"
    # The base image's Python is one the project allows.
    base = next(args for keyword, args in instructions if keyword == "FROM")
    match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", base)
    assert match, f"FROM {base}: expected an official python image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Version(match[1]) in SpecifierSet(requires), f"{base} against requires-python {requires}"


def test_every_path_the_dockerfile_copies_exists_in_the_build_context():
    rules = dockerignore()
    copies = dockerfile_copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert not ignored(source, rules), f"COPY {source}: .dockerignore leaves it out of the context"
            if (ROOT / source).is_dir():
                lost = [
                    path.relative_to(ROOT).as_posix()
                    for path in (ROOT / source).rglob("*")
                    if path.is_file()
                    and "__pycache__" not in path.parts
                    and ignored(path.relative_to(ROOT).as_posix(), rules)
                ]
                assert lost == [], f".dockerignore leaves out files of {source}: {lost}"
    # The first `pip install .` (the dependency layer) needs pyproject.toml and the readme it names.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    first_sources = copies[0][0]
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= set(first_sources), first_sources


# ======================================================================================================
# 3. The wheel that the image installs
# ======================================================================================================


def _build_wheel(source: Path, out: Path) -> tuple[Path, str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], result.stdout + result.stderr


def test_the_wheel_of_the_copied_sources_keeps_the_operator_page_assets(tmp_path):
    # Built without build isolation, so with .venv's setuptools: it must be one that the project allows.
    from importlib.metadata import version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in map(Requirement, pyproject["build-system"]["requires"]):
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), (
            f"{requirement.name} {version(requirement.name)} in .venv does not satisfy {requirement}: "
            "reinstall the test extra"
        )

    # Exactly what the Dockerfile COPYs ...
    source = tmp_path / "app"
    copied = copy_build_sources(source)
    wheel, output = _build_wheel(source, tmp_path / "wheel")
    names = set(zipfile.ZipFile(wheel).namelist())

    # ... gives a wheel with every module and every file of web/static (the page, its script and style).
    static = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "web" / "static").rglob("*") if p.is_file()
    )
    assert {"web/static/index.html", "web/static/app.js"} <= set(static)
    missing = sorted(set(static) - names)
    assert missing == [], f"the wheel (so the image's `pip install --no-deps .`) loses {missing}"
    # ... and the API's description, which web/openapi.py reads at start-up.
    assert "web/openapi.yaml" in names, "the wheel loses web/openapi.yaml (pyproject's package-data)"
    modules = {name for name in copied if name.endswith(".py")}
    assert modules and modules <= names, sorted(modules - names)
    # Setuptools' deprecations become errors on their deadline, and the image builds with the newest one.
    deprecations = [line for line in output.splitlines() if "DeprecationWarning" in line]
    assert deprecations == [], "the build warns:\n" + "\n".join(deprecations)

    # The dependency layer builds its stand-in project: empty packages next to pyproject.toml and README.md.
    stub = tmp_path / "stub"
    stub.mkdir()
    for name in copy_build_sources(tmp_path / "stub-all"):
        if "/" not in name:
            shutil.copy2(tmp_path / "stub-all" / name, stub / name)
    for package in ("dramatiq_kafka_broker", "pipeline", "web"):
        (stub / package).mkdir()
        (stub / package / "__init__.py").touch()
    _build_wheel(stub, tmp_path / "stub-wheel")


# ======================================================================================================
# 4. The compose stack rehearsed without Docker
# ======================================================================================================

#: Put on PYTHONPATH of the rehearsed processes: .venv has this project installed in editable mode, whose
#: import hook would find pipeline/ and web/ in the repository; the image has only /app.
_SITECUSTOMIZE = """\
import sys

def _ours(thing):
    return str(getattr(thing, "__module__", "")).startswith("__editable__")

sys.meta_path[:] = [finder for finder in sys.meta_path if not _ours(finder)]
sys.path_hooks[:] = [hook for hook in sys.path_hooks if not _ours(hook)]
sys.path[:] = [entry for entry in sys.path if not entry.startswith("__editable__")]
"""


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        path.relative_to(directory).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in directory.rglob("*")
    }


def _docker_stop(process: subprocess.Popen) -> str | None:
    """Stop as ``docker stop`` does: SIGTERM to the main process only, then the grace period.  Returns what
    went wrong, or None when it and everything it started ended in time."""
    if process.poll() is not None:
        return f"had already exited with {process.returncode}"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        return f"still running {STOP_GRACE_SECONDS} s after SIGTERM (Docker would SIGKILL it)"
    if not wait_group_gone(process, 3):
        return "its main process exited but processes it started are still running"
    return None


def _healthcheck_problem(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> str | None:
    """Run a healthcheck command once, as Docker does: why it failed, or None when it passed."""
    try:
        result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if result.returncode == 0:
        return None
    said = (result.stdout + result.stderr).strip().splitlines()
    return f"exit {result.returncode}: {said[-1] if said else ''}"


def _delete_topics(servers: str, prefix: str) -> None:
    """Best effort: the rehearsal's topics (and groups) on the shared Kafka."""
    with contextlib.suppress(Exception):
        delete_topics_with_prefix(servers, prefix, client_id="deploy-tests")


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_the_compose_stack_rehearsed_without_docker_stores_a_posted_user(
    tmp_path, kafka_bootstrap_servers, database_url
):
    services = compose()["services"]
    run = uuid.uuid4().hex[:8]
    app_dir = tmp_path / "app"  # the image's WORKDIR
    assert copy_build_sources(app_dir)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    private_tmp = tmp_path / "container-tmp"  # each container has a /tmp of its own
    private_tmp.mkdir()
    logs = ARTIFACTS / f"deploy-{run}"
    logs.mkdir(parents=True, exist_ok=True)

    # Published/listening container ports, each on a free local port instead.
    web_port = int(environment(services["web"])["PORT"])
    metrics_port = load_settings(environment(services["worker"]))[0].WORKER_METRICS_PORT
    ports = {web_port: free_port(), metrics_port: free_port()}
    db_name = f"bup_deploy_{run}"
    db_url = urlunsplit(urlsplit(database_url)._replace(path=f"/{db_name}"))

    def mapped(value: str) -> str:
        """A compose value with the services' addresses and the container ports replaced by local ones."""
        if urlsplit(value).hostname == "postgres":
            return db_url
        value = value.replace("kafka:9092", kafka_bootstrap_servers)
        for container_port, local_port in ports.items():
            value = re.sub(rf"(?<![\d.]){container_port}(?!\d)", str(local_port), value)
        return value

    def container_env(service: str) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/nonexistent",  # useradd --no-create-home
            "LANG": "C.UTF-8",
            "TMPDIR": str(private_tmp),
            **{name: mapped(value) for name, value in dockerfile_env().items()},
            **{name: mapped(value) for name, value in environment(services[service]).items()},
        }
        env["KAFKA_TOPIC_PREFIX"] = f"deploy{run}."  # our own topics on the shared Kafka
        env["WORKER_METRICS_PORT"] = str(ports[metrics_port])  # the exporter's default port, moved
        env["PYTHONPATH"] = str(shim)  # not the repository: only the editable-install remover
        return env

    for service in APP_SERVICES:
        env = container_env(service)
        assert env["DATABASE_URL"] == db_url and env["KAFKA_BOOTSTRAP_SERVERS"] == kafka_bootstrap_servers, (
            f"{service}: compose's addresses are not the ones this test maps: {services[service]}"
        )

    started: list[tuple[str, subprocess.Popen, Path]] = []
    before = _snapshot(app_dir)
    stop_problems: dict[str, str | None] = {}
    assert create_database(database_url, db_name) == db_url
    try:
        # The image's code is /app's, not the repository's.
        probe = "import pipeline, web; print(pipeline.__file__); print(web.__file__)"
        found = subprocess.run(
            ["python", "-c", probe], env=container_env("web"), cwd=app_dir, capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        assert all(Path(line).is_relative_to(app_dir) for line in found.stdout.split()), found.stdout
        elsewhere = subprocess.run(
            ["python", "-c", "import web"], env=container_env("web"), cwd=shim, capture_output=True
        )
        assert elsewhere.returncode != 0, (
            "the repository's packages are importable: the rehearsal proves nothing"
        )

        # migrate runs to completion first (web and worker wait for service_completed_successfully).
        migrate_log = logs / "migrate.log"
        with migrate_log.open("wb") as log:
            migrate = subprocess.run(
                services["migrate"]["command"],
                env=container_env("migrate"),
                cwd=app_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        assert migrate.returncode == 0, log_tail(migrate_log)

        for service in ("web", "worker"):
            command = services[service].get("command") or dockerfile_cmd()
            process = spawn(service, command, env=container_env(service), logs=logs, cwd=app_dir)
            started.append((service, process, logs / f"{service}.log"))

        for service in ("web", "worker"):
            check = services[service]["healthcheck"]
            argv = [mapped(word) for word in healthcheck_argv(check["test"])]
            timeout = duration_seconds(check.get("timeout", "30s"))
            wait_until(
                f"{service}'s healthcheck {argv} to pass",
                functools.partial(_healthcheck_problem, argv, container_env(service), app_dir, timeout),
                timeout=HEALTHY_TIMEOUT_SECONDS,
                interval=0.5,
                watch=started,
            )

        # The postgres service's own healthcheck, against the local server of the same major version.
        if shutil.which("pg_isready"):
            local = urlsplit(database_url)
            argv = healthcheck_argv(services["postgres"]["healthcheck"]["test"])
            env = {"PATH": "/usr/bin:/bin", "PGHOST": local.hostname or "", "PGPORT": str(local.port or 5432)}
            assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0, argv

        # End to end: a user posted to the web is stored by the worker.
        tag = uuid.uuid4().hex[:8]
        user = {"name": {"firstName": "Ada", "lastName": f"Compose{tag}"}, "age": 36}
        with httpx.Client(base_url=f"http://127.0.0.1:{ports[web_port]}", timeout=15) as api:
            response = api.post("/api/user", json=user)
            assert response.status_code == 202, response.text
            submission = response.json()["id"]
            deadline = time.monotonic() + STORED_TIMEOUT_SECONDS
            outcome: dict[str, Any] = {}
            while time.monotonic() < deadline:
                reply = api.get(f"/api/submissions/{submission}")
                outcome = reply.json()
                if reply.status_code == 200 and outcome.get("status") != "queued":
                    break
                time.sleep(0.2)
            assert outcome.get("status") == "stored", f"{outcome}\n{log_tail(logs / 'worker.log')}"
            assert outcome["user"]["name"] == f"Ada Compose{tag}"
            # The operator page and its static files come from the copied web/static.
            page = api.get("/")
            assert page.status_code == 200 and "/static/app.js" in page.text
            assert api.get("/static/app.js").status_code == 200

        for service, process, _ in started:
            stop_problems[service] = _docker_stop(process)
    finally:
        stop_all([process for _, process, _ in started], timeout=STOP_GRACE_SECONDS)
        drop_database(database_url, db_name)
        _delete_topics(kafka_bootstrap_servers, f"deploy{run}.")

    assert stop_problems == {"web": None, "worker": None}, stop_problems
    # "the code needs no write access to /app": it wrote nothing there.
    assert _snapshot(app_dir) == before, "the processes wrote into the image's /app"
    shutil.rmtree(logs, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.kafka
def test_worker_metrics_port_moves_the_workers_exporter(tmp_path, kafka_bootstrap_servers, database_url):
    port, prefix = free_port(), f"deploymetrics{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "DATABASE_URL": database_url,
        "KAFKA_TOPIC_PREFIX": prefix,
        "WORKER_METRICS_PORT": str(port),
    }
    env.pop("dramatiq_prom_port", None)
    log_path = tmp_path / "worker.log"
    worker = spawn(
        "worker",
        ["dramatiq", "pipeline", "--processes", "1", "--threads", "1"],
        env={**env, "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"},
        logs=tmp_path,
    )
    watch = [("the worker", worker, log_path)]
    try:
        wait_until(
            "the worker's metrics exporter to be ready",
            lambda: None if "serve_worker_metrics' is ready" in log_path.read_text(errors="replace") else "",
            timeout=30,
            watch=watch,
        )
        answers: list[httpx.Response] = []

        def no_answer() -> str | None:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/", timeout=2))
            except httpx.TransportError as error:
                return repr(error)
            return None

        wait_until(f"an answer on WORKER_METRICS_PORT={port}", no_answer, timeout=3, watch=watch)
        # (Dramatiq's exporter; its metrics appear once messages have been processed)
        assert answers[-1].status_code == 200, answers[-1].text[:300]
    finally:
        stop(worker, timeout=STOP_GRACE_SECONDS)
        _delete_topics(kafka_bootstrap_servers, prefix)
