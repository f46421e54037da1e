"""``python -m pipeline <command>`` (also installed as ``bup``): the service's command line.

Commands: ``migrate`` (apply database migrations; the Procfile's ``release`` line), ``dlq`` (inspect and
replay failed messages), ``partitions`` (show or grow a queue's partitions), ``upload`` (send a
CSV/JSON/NDJSON file to the API and follow its batch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline import settings

#: Modules that add a sub-command: each has ``register(subparsers)`` setting ``handler`` on its parser.
COMMAND_MODULES = ["pipeline.cli_dlq", "pipeline.cli_partitions", "pipeline.cli_upload"]


def _migrate(args: argparse.Namespace) -> int:
    from pipeline.migrations import migrate

    applied = migrate()
    print(f"applied: {', '.join(applied)}" if applied else "database schema is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit code."""
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(handler=_migrate)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(commands)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
