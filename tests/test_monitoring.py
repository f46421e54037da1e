"""The Grafana dashboard and the Prometheus alert rules of ``docs/monitoring/``, checked by Prometheus' own
parser (``promtool``, fetched by ``scripts/promtool.sh``) and against the metrics our exporters really export.

The exported names are collected in process from the real registries: the web's :class:`web.metrics.Metrics`,
the worker's exporter (Dramatiq's ``Prometheus`` middleware as ``pipeline.middleware.WorkerMetrics`` sets it
up) and the broker's delivery-error counter.  A panel or rule that names anything else fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from dramatiq.brokers.stub import StubBroker

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docs" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
#: Series that Prometheus makes itself for each scrape target (not ours to export).
PROMETHEUS_OWN = frozenset({"up"})
#: What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
#: PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
    | {"inf", "nan"}
)
#: Sample suffixes of each metric type, as the text exposition format writes them.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def promtool() -> str:
    """The path of promtool; a failure (never a skip) when it is missing."""
    local = ROOT / ".local" / "promtool" / "usr" / "bin" / "promtool"
    found = shutil.which("promtool") or (str(local) if local.exists() else None)
    if found is None:
        pytest.fail("promtool is missing: run scripts/promtool.sh install (./run.local.sh test does)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)


def _series_names(families: Any) -> set[str]:
    return {f"{family.name}{suffix}" for family in families for suffix in _SUFFIXES.get(family.type, ("",))}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the web's /metrics and the worker's exporter can export."""
    from dramatiq_kafka_broker.metrics import delivery_errors
    from pipeline.middleware import WorkerMetrics
    from web.metrics import Metrics

    names = _series_names(Metrics().registry.collect())
    worker = WorkerMetrics()
    # Dramatiq's middleware makes its collectors at process boot (and points prometheus_client's
    # multiprocess directory at its own); the environment is put back as it was.
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
            patch.setenv(variable, "")
        worker.after_process_boot(StubBroker())
    collectors = [
        c for c in vars(worker).values() if isinstance(c, prometheus_client.metrics.MetricWrapperBase)
    ]
    names |= _series_names(
        family for collector in [*collectors, delivery_errors()] for family in collector.collect()
    )
    return names


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every panel of the dashboard, rows' nested panels too."""
    board = json.loads(DASHBOARD.read_text())
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def rule_queries() -> list[tuple[str, str]]:
    """(alert name, expression) of every rule of the alert rules."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def for_prometheus(query: str) -> str:
    """A panel's query as Grafana sends it (its variables replaced)."""
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return query


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, groupings, ranges, numbers,
    function names and keywords taken out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def test_promtool_accepts_the_alert_rules():
    # When Prometheus' own checker reads the rule file
    result = run_promtool("check", "rules", str(ALERTS))
    # Then it finds every rule and no error
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in result.stdout


def test_promtool_parses_every_panel_query(tmp_path):
    # Given every query of the dashboard as a recording rule (promtool parses rules, not dashboards)
    queries = panel_queries()
    rules = [{"record": f"panel:query_{n}", "expr": for_prometheus(q)} for n, (_, q) in enumerate(queries)]
    checked = tmp_path / "panels.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    # When
    result = run_promtool("check", "rules", str(checked))
    # Then every one parses
    assert len(queries) >= 15
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(tmp_path):
    # The parser check can fail: a query with an unclosed parenthesis is refused
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(up"}]}]})
    )
    assert run_promtool("check", "rules", str(broken)).returncode != 0


def test_every_metric_a_panel_or_rule_names_is_one_our_exporters_export(exported):
    # Given the names every panel and rule selects
    named = {
        (where, name)
        for where, query in [*panel_queries(), *rule_queries()]
        for name in metric_names(for_prometheus(query))
    }
    # Then each one is exported by the web or the worker (or made by Prometheus for a target)
    unknown = sorted((where, name) for where, name in named if name not in exported | PROMETHEUS_OWN)
    assert named and unknown == []


def test_the_name_check_finds_a_name_that_is_not_exported(exported):
    # Given a query of real and made-up names, in the shapes the files use
    query = (
        'sum by (queue) (max by (queue, partition) (delta(kafka_consumer_lag{queue="users"}[10m]))) '
        "/ on (queue) group_left max(kafka_lagg offset 5m) > 1e3 and histogram_quantile(0.95, "
        "sum by (le) (rate(http_request_duration_seconds_bucket[$__rate_interval])))"
    )
    # When / Then: the names are found, and the made-up one is not exported
    names = metric_names(for_prometheus(query))
    assert names == {"kafka_consumer_lag", "kafka_lagg", "http_request_duration_seconds_bucket"}
    assert names - exported == {"kafka_lagg"}


def test_the_exporters_names_are_what_the_dashboards_expect(exported):
    # The families the dashboard and rules are built on, by their exposed series names
    assert {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "submissions_accepted_total",
        "enqueue_failures_total",
        "kafka_consumer_lag",
        "kafka_failed_messages",
        "kafka_under_replicated_partitions",
        "dramatiq_messages_total",
        "dramatiq_message_rejects_total",
        "dramatiq_message_duration_milliseconds_bucket",
        "dramatiq_kafka_delivery_errors_total",
    } <= exported


def test_the_dashboard_shows_rates_lag_failures_enqueue_errors_replication_and_latency():
    # Given the names each panel selects
    shown = {name for _, query in panel_queries() for name in metric_names(for_prometheus(query))}
    # Then each figure the operator needs has a panel
    for needed in (
        "submissions_accepted_total",  # rates
        "dramatiq_messages_total",
        "kafka_consumer_lag",  # lag (classic or share group: the same series)
        "kafka_failed_messages",  # failures
        "dramatiq_message_rejects_total",
        "enqueue_failures_total",  # enqueue errors
        "kafka_under_replicated_partitions",  # under-replication
        "http_request_duration_seconds_bucket",  # latency
        "dramatiq_message_duration_milliseconds_bucket",
    ):
        assert needed in shown, needed


def _fired(tmp_path: Path, series: dict[str, str], at: str, alert: str) -> list[dict[str, Any]]:
    """The alerts ``alert`` that promtool's rule unit test finds firing at ``at``, given input ``series``."""
    case = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
            }
        ],
    }
    path = tmp_path / f"{alert}.test.yml"
    path.write_text(yaml.safe_dump(case))
    result = run_promtool("test", "rules", str(path))
    if result.returncode == 0:
        return []
    # promtool says what it got when it expected none: parse its "got:[...]" list of labels
    got = re.search(r"got:\[(.*?)\]\s*$", result.stdout + result.stderr, re.S | re.M)
    assert got, result.stdout + result.stderr
    return [{"labels": labels} for labels in re.findall(r"Labels:\{([^}]*)\}", got.group(1))]


@pytest.mark.parametrize(
    ("alert", "series", "at", "fires"),
    [
        # Lag growing by 10 a minute for 40 minutes fires; flat lag does not.
        ("ConsumerLagGrowing", {'kafka_consumer_lag{queue="users", partition="0"}': "0+10x40"}, "35m", True),
        ("ConsumerLagGrowing", {'kafka_consumer_lag{queue="users", partition="0"}': "500x40"}, "35m", False),
        # A failed message appearing fires; a constant count does not.
        ("FailedMessagesAppeared", {'kafka_failed_messages{queue="users"}': "0x10 1x10"}, "15m", True),
        ("FailedMessagesAppeared", {'kafka_failed_messages{queue="users"}': "3x30"}, "25m", False),
        (
            "UnderReplicatedPartitions",
            {'kafka_under_replicated_partitions{queue="users"}': "0x5 2x20"},
            "15m",
            True,
        ),
        (
            "UnderReplicatedPartitions",
            {'kafka_under_replicated_partitions{queue="users"}': "0x30"},
            "15m",
            False,
        ),
        # 10% of answers 503 for 20 minutes fires; none does not.
        (
            "WebAnswering503",
            {
                'http_requests_total{route="/api/user", method="POST", status="202"}': "0+90x30",
                'http_requests_total{route="/api/user", method="POST", status="503"}': "0+10x30",
            },
            "20m",
            True,
        ),
        (
            "WebAnswering503",
            {'http_requests_total{route="/api/user", method="POST", status="202"}': "0+90x30"},
            "20m",
            False,
        ),
    ],
)
def test_the_alerts_fire_on_what_they_are_for_and_not_otherwise(tmp_path, alert, series, at, fires):
    # Given synthetic series, When promtool evaluates the rules over them, Then the alert fires or not
    assert bool(_fired(tmp_path, series, at, alert)) is fires
