"""Prometheus metrics of the web process, and the middleware that records them.

Each application gets its own ``CollectorRegistry`` (tests build many apps in one process); ``/metrics``
renders it in the text exposition format.  Routes are labelled by their template
(``/api/submissions/{id}``), never by the raw path, so that the number of series stays bounded.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.to_thread
import dramatiq
from dramatiq.common import dq_name
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.contract import QUEUE
from web.broker_features import operations_of

#: Latency buckets in seconds: accepting a submission waits for Kafka's acknowledgement (a few ms),
#: a large batch upload takes seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The collectors of one application.

    Parameters:
      registry(CollectorRegistry): Where to register them (a fresh one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of the response, by route template and method.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.enqueue_failures = Counter(
            "enqueue_failures",
            "Messages Kafka did not acknowledge (answered 503 queue_unavailable), by message kind.",
            ["kind"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "submissions_accepted",
            "Records accepted (durable in Kafka, answered 202), by path: single or batch.",
            ["path"],
            registry=self.registry,
        )

        self.consumer_lag = Gauge(
            "kafka_consumer_lag",
            "Messages of a queue (or its .DQ delay queue) not yet acked by the workers, by partition.",
            ["queue", "partition"],
            registry=self.registry,
        )
        self.failed_messages = Gauge(
            "kafka_failed_messages",
            "Messages on a queue's failed-message (.XQ) topic.",
            ["queue"],
            registry=self.registry,
        )
        self.under_replicated = Gauge(
            "kafka_under_replicated_partitions",
            "Partitions of a queue's topic (queue, .DQ, .XQ) with fewer in-sync replicas than replicas.",
            ["queue"],
            registry=self.registry,
        )
        self.broker_scrape_errors = Counter(
            "kafka_metrics_scrape_errors",
            "Scrapes of /metrics whose Kafka figures could not be read in time (they keep their last value).",
            registry=self.registry,
        )

    def refresh_broker(self, broker: dramatiq.Broker, queue: str) -> None:
        """Read under-replicated partitions, failed-message counts and consumer lag from the broker's
        operations (:func:`~web.broker_features.operations_of`); what it cannot tell is left unset."""
        operations = operations_of(broker)
        # Under-replication first: it comes from metadata that any live node gives, and it is the figure
        # wanted while a node is away, when the lag (asked of the group's coordinator) and the failed count
        # (asked of the partitions' leaders) may not answer before the scrape's deadline.
        for name, count in (operations.under_replicated(queue) or {}).items():
            self.under_replicated.labels(name).set(count)
        failed = operations.failed_count(queue)
        if failed is not None:
            self.failed_messages.labels(queue).set(failed)
        for name in (queue, dq_name(queue)):
            for partition, lag in (operations.lag(name) or {}).items():
                self.consumer_lag.labels(name, str(partition)).set(lag)

    def render(self) -> Response:
        """The ``/metrics`` answer."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI, so streaming bodies stay streaming)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)


#: Seconds a scrape may spend asking Kafka for lag and failed counts before it answers without them.
BROKER_SCRAPE_TIMEOUT_SECONDS = 3.0
logger = logging.getLogger(__name__)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text of this application's registry, Kafka lag included."""
    metrics: Metrics = request.app.state.metrics
    try:
        with anyio.fail_after(BROKER_SCRAPE_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(
                metrics.refresh_broker, request.app.state.broker, QUEUE, abandon_on_cancel=True
            )
    except Exception as error:  # a Kafka outage must not break the scrape of everything else
        metrics.broker_scrape_errors.inc()
        logger.warning("metrics: Kafka figures not refreshed: %s", type(error).__name__)
    return metrics.render()
