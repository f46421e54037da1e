"""Builds the service's Dramatiq broker from settings: :func:`build_broker`, used by the web and the worker.

Importing this module builds nothing (``pipeline.worker`` builds the worker's broker, ``web.app`` its own).
The broker is a :class:`~pipeline.brokers.kafka.KafkaBroker`; it opens no connection until the first
enqueue, consume or inspection, so building one is cheap and works while Kafka is down.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Any

import dramatiq
from dramatiq.errors import BrokerConnectionError
from dramatiq.logging import get_logger
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
    prometheus,
)

from pipeline import logs, settings
from pipeline.brokers.kafka import KafkaBroker, RecordTooLarge, compat

_logger = get_logger(__name__)


class _FailWhenHandOffFails:
    """Fails a message whose after-processing hand-off (next pipeline stage, retry) could not be enqueued;
    waits for Kafka instead when Kafka is what could not be reached.

    Dramatiq logs and swallows errors of ``after_process_message`` hooks, so such a message would be acked
    with its next stage or its retry never enqueued: an accepted submission lost.  Failed instead, it is
    nacked onto the failed-message topic (where it can be replayed) and its ``on_retry_exhausted`` callback
    is told, as if its retries had run out.

    Kafka being unreachable -- a ``BrokerConnectionError`` raised by the hand-off, or by the actor itself
    (``process_user`` enqueues its pipeline) -- is no fault of the message: retrying it spends, within
    seconds, the retries that exist for bad data and a broken database, then fails a message that would have
    succeeded.  So it spends no retry and fails nothing: the message is left un-acked, its consumer makes
    way for a new one, and that one delivers the message again once Kafka answers (the worker's consumer
    thread waits for Kafka between attempts).  A record Kafka refuses as too large is refused every time:
    that message fails.  A broker that cannot redeliver a message so (``StubBroker``) keeps the behaviour
    above.
    """

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        failed_before = message.failed
        if _kafka_away(exception) and not failed_before and _redeliver_later(message):
            return
        try:
            super().after_process_message(  # type: ignore[misc]
                broker, message, result=result, exception=exception
            )
        except BrokerConnectionError as error:
            if _kafka_away(error) and not failed_before and _redeliver_later(message):
                # Whatever the hook had decided (Retries may have failed the message before its
                # on_retry_exhausted could be sent) is decided again when the message runs again.
                message.failed = False
                _logger.warning("%s waits for Kafka, un-acked: %s", message, error)
                return
            self._fail(broker, message, error, failed_before)
            raise
        except Exception as error:
            self._fail(broker, message, error, failed_before)
            raise

    @staticmethod
    def _fail(broker: dramatiq.Broker, message: Any, error: Exception, already_failed: bool) -> None:
        message.stuff_exception(error)
        message.fail()
        callback = message.options.get("on_retry_exhausted") or broker.get_actor(
            message.actor_name
        ).options.get("on_retry_exhausted")
        if callback and not already_failed:
            data = message.asdict()
            data["options"] = {**data["options"], "traceback": f"{type(error).__name__}: {error}"}
            # Best effort: Kafka may be what failed; the failed topic keeps the message anyway.
            with contextlib.suppress(Exception):
                broker.get_actor(callback).send(data, {"retries": None, "max_retries": None})


def _kafka_away(error: BaseException | None) -> bool:
    """Whether ``error`` says Kafka could not be reached (or acknowledge in time): a pause, not a fault.

    Not a record Kafka refuses as too large, which it refuses every time: that message fails.
    """
    return isinstance(error, BrokerConnectionError) and not isinstance(error, RecordTooLarge)


def _redeliver_later(message: Any) -> bool:
    """Leave ``message`` un-acked, to be delivered again once Kafka answers; False when its broker cannot."""
    # (a Dramatiq MessageProxy hands unknown attributes to its Message, which has none of this name)
    redeliver = getattr(message, "redeliver_later", None)
    if redeliver is None:
        return False
    redeliver()
    return True


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


class DurablePipelines(_FailWhenHandOffFails, Pipelines):
    """Dramatiq's ``Pipelines``; a next stage that cannot be enqueued fails the message."""


class DurableRetries(_FailWhenHandOffFails, Retries):
    """Dramatiq's ``Retries``; a retry that cannot be enqueued fails the message."""


def _pem_file(text: str, suffix: str) -> str:
    """kafka-python wants certificate *files*; Heroku hands out their text in variables."""
    handle = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)  # noqa: SIM115
    with handle:
        handle.write(text)
    os.chmod(handle.name, 0o600)
    atexit.register(lambda: os.path.exists(handle.name) and os.unlink(handle.name))
    return handle.name


def client_options() -> dict[str, Any]:
    """kafka-python options for security (SSL, SASL PLAIN/SCRAM) and whatever ``KAFKA_OPTIONS`` adds."""
    options: dict[str, Any] = {"security_protocol": settings.KAFKA_SECURITY_PROTOCOL}
    if settings.KAFKA_SECURITY_PROTOCOL in {"SSL", "SASL_SSL"}:
        options["ssl_check_hostname"] = settings.KAFKA_SSL_CHECK_HOSTNAME
        if settings.KAFKA_TRUSTED_CERT:
            options["ssl_cafile"] = _pem_file(settings.KAFKA_TRUSTED_CERT, ".ca.pem")
        if settings.KAFKA_CLIENT_CERT:
            options["ssl_certfile"] = _pem_file(settings.KAFKA_CLIENT_CERT, ".cert.pem")
        if settings.KAFKA_CLIENT_CERT_KEY:
            options["ssl_keyfile"] = _pem_file(settings.KAFKA_CLIENT_CERT_KEY, ".key.pem")
    if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL_"):
        options["sasl_mechanism"] = settings.KAFKA_SASL_MECHANISM or "PLAIN"
        options["sasl_plain_username"] = settings.KAFKA_SASL_USERNAME
        options["sasl_plain_password"] = settings.KAFKA_SASL_PASSWORD
    options.update(settings.KAFKA_OPTIONS)
    return options


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


def build_broker(**overrides: Any) -> KafkaBroker:
    """A KafkaBroker configured from settings; keyword arguments override any of its parameters."""
    parameters: dict[str, Any] = {
        "bootstrap_servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "middleware": middleware(),
        "topic_prefix": settings.KAFKA_TOPIC_PREFIX,
        "group_id": settings.KAFKA_GROUP_ID,
        "group_instance_id": settings.KAFKA_GROUP_INSTANCE_ID or None,
        "client_id": settings.KAFKA_CLIENT_ID,
        "create_topics": settings.KAFKA_CREATE_TOPICS,
        "partitions": settings.KAFKA_PARTITIONS,
        "replication_factor": settings.KAFKA_REPLICATION_FACTOR,
        "min_insync_replicas": settings.KAFKA_MIN_INSYNC_REPLICAS or None,
        "dead_letter_retention_ms": settings.KAFKA_FAILED_RETENTION_MS,
        "send_timeout_ms": settings.KAFKA_SEND_TIMEOUT_MS,
        "client_options": client_options(),
    }
    parameters.update(overrides)
    return KafkaBroker(**parameters)
