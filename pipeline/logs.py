"""Logs as platforms collect them: one line per event, on standard output.

Heroku's logplex, ``docker logs`` and journald take a process's output line by line, so a traceback spread
over twenty lines becomes twenty unrelated events.  :class:`OneLineFormatter` keeps every record on one
line (the line breaks of a message or a traceback become ``" | "``).

* The web calls :func:`configure` when ``web.app`` is imported: its own lines and uvicorn's (errors and
  access lines) go to stdout in one format.
* Dramatiq's worker processes log through a pipe to the ``dramatiq`` main process, which writes them out;
  :func:`one_line` (called by the ``WorkerLogs`` middleware of ``pipeline.middleware`` when a worker process
  boots) keeps Dramatiq's handlers and format and only folds the lines.  The Procfile sends the main
  process's stderr to stdout.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: What a line break inside one record becomes.
LINE_BREAK = " | "
#: The web's format; a record's submission or batch id is part of its message.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output, traceback included, never spans more than one line."""

    def format(self, record: logging.LogRecord) -> str:
        return fold(super().format(record))


def fold(text: str) -> str:
    """``text`` on one line: trailing breaks dropped, inner ones replaced by :data:`LINE_BREAK`."""
    return LINE_BREAK.join(text.rstrip("\r\n").splitlines())


def configure(level: str, stream: TextIO | None = None) -> None:
    """Send every record at ``level`` and above, uvicorn's included, to ``stream`` (stdout), one per line.

    Does nothing when the root logger already has handlers (a test runner, an embedding application).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(OneLineFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn set up its own handlers (errors to stderr, access lines to stdout) before it imported the
    # app; its records go through the root handler instead, in the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def one_line() -> None:
    """Make the root logger's handlers (set up by Dramatiq's CLI) write each record on one line."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, OneLineFormatter):
            current = handler.formatter
            handler.setFormatter(
                OneLineFormatter(current._fmt if current else None, current.datefmt if current else None)
            )
