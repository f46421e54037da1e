"""The worker's Dramatiq middleware: Dramatiq's defaults, with the broker's durable hand-offs
(:mod:`dramatiq_kafka_broker.middleware`) in place of ``Pipelines`` and ``Retries``, and the service's own
(one SIGTERM, one-line logs, the exporter on ``WORKER_METRICS_PORT``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import dramatiq
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    ShutdownNotifications,
    TimeLimit,
    prometheus,
)

from dramatiq_kafka_broker import compat
from dramatiq_kafka_broker.middleware import DurablePipelines, DurableRetries
from pipeline import logs, settings


def middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware, with retries tuned from settings, plus Prometheus and CurrentMessage."""
    chosen: list[dramatiq.Middleware] = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        DurablePipelines(),
        DurableRetries(
            max_retries=settings.MAX_RETRIES,
            min_backoff=settings.MIN_BACKOFF_MS,
            max_backoff=settings.MAX_BACKOFF_MS,
        ),
        CurrentMessage(),
        OneSigterm(),
        WorkerLogs(),
    ]
    if settings.WORKER_METRICS_PORT:
        chosen.insert(0, WorkerMetrics())
    return chosen


def serve_worker_metrics() -> int:
    """Dramatiq's Prometheus exporter, on ``WORKER_METRICS_PORT``.

    Dramatiq runs the exporter in a process forked from its *main* process, which never imports this
    package: setting the port in the worker processes does not reach it, and Dramatiq's own exporter reads
    ``dramatiq_prom_port`` only.  This function is the fork's entry point, so the port is set where the
    server runs.
    """
    prometheus.HTTP_PORT = settings.WORKER_METRICS_PORT
    return compat.run_prometheus_exporter()


class WorkerMetrics(prometheus.Prometheus):
    """Dramatiq's ``Prometheus`` middleware whose exporter listens on ``WORKER_METRICS_PORT``."""

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics]


class OneSigterm(dramatiq.Middleware):
    """Makes a worker process take the platform's SIGTERM and the one Dramatiq's main process forwards as one.

    Heroku and systemd signal every process of a dyno or unit at once, so a forked worker process receives
    SIGTERM twice, and Dramatiq takes the second one for "kill now": it exits mid-work, and what it held
    runs again.  Repeats within ``grace_s`` are ignored; a later SIGTERM still kills.
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        dramatiqs_handler = signal.getsignal(signal.SIGTERM)
        if not callable(dramatiqs_handler):
            return
        first: list[float] = []

        def on_sigterm(signum: int, frame: Any) -> None:
            if first and time.monotonic() - first[0] < self.grace_s:
                return
            first.append(time.monotonic())
            dramatiqs_handler(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


class WorkerLogs(dramatiq.Middleware):
    """In a worker process: every log record on one line (:func:`pipeline.logs.one_line`), at
    ``LOG_LEVEL``, and kafka-python's connection chatter only from WARNING (unless ``LOG_LEVEL=DEBUG``)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        logs.one_line()
        logging.getLogger().setLevel(settings.LOG_LEVEL)
        if settings.LOG_LEVEL != "DEBUG":
            logging.getLogger("kafka").setLevel(logging.WARNING)
