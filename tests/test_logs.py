"""Logs as platforms collect them: one line per event, on stdout (``pipeline/logs.py``)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

from pipeline import logs
from tests.livestack import ROOT


def _record_with_traceback(message: str) -> logging.LogRecord:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        return logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, message, (), sys.exc_info())


def test_a_record_with_a_multi_line_message_and_a_traceback_is_written_on_one_line():
    formatter = logs.OneLineFormatter("%(levelname)s %(message)s")
    line = formatter.format(_record_with_traceback("could not store id=abc\nbecause"))
    assert "\n" not in line and "\r" not in line
    assert line.startswith("ERROR could not store id=abc | because | Traceback (most recent call last):")
    assert line.endswith("ValueError: first line | second line")


def test_one_line_keeps_a_handlers_format_and_folds_its_lines():
    # Given a handler with its own format (as Dramatiq's CLI sets up in a worker process)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(name)s] [%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        # When one_line() runs and a record with a traceback is logged
        logs.one_line()
        handler.handle(_record_with_traceback("boom"))
    finally:
        root.removeHandler(handler)
    # Then it is one line, in that format
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("[t] [ERROR] boom | Traceback")


def test_the_web_process_logs_its_lines_and_uvicorns_to_stdout_one_per_event():
    # Given a fresh process that imports the web app (as uvicorn does, after setting up its own loggers)
    script = textwrap.dedent(
        """
        import logging, logging.config
        from uvicorn.config import LOGGING_CONFIG
        logging.config.dictConfig(LOGGING_CONFIG)
        import web.app
        try:
            raise RuntimeError("kafka went away")
        except RuntimeError:
            logging.getLogger("web.enqueue").exception("enqueue of submission abc failed")
        logging.getLogger("uvicorn.error").info("Application startup complete.")
        access = ("127.0.0.1:1", "POST", "/api/user", "1.1", 202)
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *access)
        """
    )
    env = {**os.environ, "ID_SECRET": "a-secret-of-this-test", "LOG_LEVEL": "INFO"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Then stdout has exactly the three events, one line each, and stderr nothing
    lines = done.stdout.splitlines()
    assert done.stderr == ""
    assert len(lines) == 3, lines
    assert "ERROR web.enqueue: enqueue of submission abc failed | Traceback" in lines[0]
    assert lines[0].endswith("RuntimeError: kafka went away")
    assert lines[1].endswith("INFO uvicorn.error: Application startup complete.")
    assert lines[2].endswith('INFO uvicorn.access: 127.0.0.1:1 - "POST /api/user HTTP/1.1" 202')
