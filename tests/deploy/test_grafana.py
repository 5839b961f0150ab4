"""The chart's Grafana dashboard: off by default, discoverable by the sidecar, and true to the metrics.

Every metric a query names must be one a real gateway serves at <prefix>/metrics, scraped here
after traffic (counters as ``<name>_total``, histograms as ``_bucket``, ``_sum`` and ``_count``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import helm_python
import kubernetes_validate
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from asyncgate.config import load
from asyncgate.metrics import Metrics
from tests.deploy.test_helm import CHART, KUBE_VERSIONS, NAMESPACE, UPSTREAM, render
from tests.e2e.conftest import Gateway, Receiver, Upstream
from tests.support.wait import wait_until

DASHBOARD = CHART / "dashboards" / "asyncgate.json"
ENABLED = {**UPSTREAM, "metrics": {"grafanaDashboard": {"enabled": True}}}
#: What the issue asks the dashboard to show, each by the metrics that show it.
TOPICS = {
    "runs accepted": {"asyncgate_runs_accepted_total"},
    "runs refused": {"asyncgate_runs_refused_total"},
    "queue depth": {"asyncgate_runs_queued"},
    "runs in flight": {"asyncgate_runs_in_flight"},
    "outcomes by code": {"asyncgate_runs_finished_total"},
    "upstream latency": {"asyncgate_upstream_call_duration_seconds_bucket"},
    "queue-wait latency": {"asyncgate_run_queue_wait_seconds_bucket"},
    "webhook outcomes": {"asyncgate_webhook_attempts_total"},
    "lease reclaims": {"asyncgate_runs_reclaimed_total"},
    "store errors": {"asyncgate_store_errors_total"},
    "sync request rate": {"asyncgate_sync_requests_total"},
    "sync latency": {"asyncgate_sync_request_duration_seconds_bucket"},
}
#: Labels Prometheus adds to every scraped series, or that histogram_quantile needs.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "le"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def dashboard_config_maps(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-grafana-dashboard")]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    panels = [p for p in board["panels"] if p["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\basyncgate_[a-z0-9_]+\b", expr))


# --- the chart ------------------------------------------------------------------------------------


def test_the_dashboard_is_off_by_default(chart: helm_python.Chart) -> None:
    assert dashboard_config_maps(render(chart, UPSTREAM)) == []


def test_the_dashboard_config_map_is_labelled_for_the_grafana_sidecar(chart: helm_python.Chart) -> None:
    (config_map,) = dashboard_config_maps(render(chart, ENABLED))
    assert config_map["metadata"]["name"] == "asyncgate-grafana-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "asyncgate"
    assert list(config_map["data"]) == ["asyncgate.json"]
    assert json.loads(config_map["data"]["asyncgate.json"]) == dashboard()


def test_the_sidecars_label_namespace_and_folder_are_settable(chart: helm_python.Chart) -> None:
    settings = {
        "enabled": True,
        "namespace": "monitoring",
        "labels": {"dashboards": "asyncgate"},
        "annotations": {"grafana_folder": "Gateways"},
    }
    (config_map,) = dashboard_config_maps(render(chart, {**UPSTREAM, "metrics": {"grafanaDashboard": settings}}))
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["dashboards"] == "asyncgate"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Gateways"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_config_map_is_valid_kubernetes_and_the_chart_lints(chart: helm_python.Chart, version: str) -> None:
    (config_map,) = dashboard_config_maps(render(chart, ENABLED))
    kubernetes_validate.validate(config_map, version, strict=True)
    report = helm_python.lint(CHART, ENABLED, strict=True, kube_version="v1.30.0")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == []


def test_a_wrong_value_is_refused_by_the_schema(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmError, match="grafanaDashboard"):
        render(chart, {**UPSTREAM, "metrics": {"grafanaDashboard": {"enabled": "yes"}}})


# --- the dashboard --------------------------------------------------------------------------------


def test_the_dashboard_is_grafana_json_with_a_data_source_variable() -> None:
    board = dashboard()
    assert board["uid"] == "asyncgate-overview" and board["title"] == "asyncgate"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"], panel["title"]
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_the_dashboard_shows_what_operators_need() -> None:
    named = set().union(*(metric_names(expr) for expr in queries(dashboard())))
    missing = {topic for topic, metrics in TOPICS.items() if not metrics <= named}
    assert missing == set()


def test_every_query_names_a_metric_a_real_gateway_serves(tmp_path: Path) -> None:
    served, labels = scrape_after_traffic(tmp_path)
    for expr in queries(dashboard()):
        names = metric_names(expr)
        assert names, expr
        assert names <= served, f"{expr} names {sorted(names - served)}, which no gateway serves"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (name.strip() for name in group.split(",")):
                assert label in TARGET_LABELS or any(label in labels[n] for n in names), (expr, label)


def scrape_after_traffic(tmp_path: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The sample names a gateway serves (by each family's type), and each one's labels."""
    upstream, receiver = Upstream(), Receiver()
    settings = {
        "upstream": upstream.url,
        "runs.poll_interval": 0.2,
        "access.mode": "open",
        "webhooks.allow": ["127.0.0.0/8"],
        "store.data_dir": str(tmp_path / "data"),
        "shutdown.drain_timeout": 1,
    }
    gateway = Gateway(load(None, environ={}, overrides=settings))
    try:
        assert gateway.client.get("/echo").status_code == 200
        hook = quote(f"{receiver.url}/grafana", safe="")
        ok = gateway.client.post(f"/echo?async=true&webhookEndpoint={hook}").json()["run_id"]
        failed = gateway.client.post("/status/500?async=true").json()["run_id"]
        assert gateway.client.post("/echo?async=true&webhookEndpoint=nope").status_code == 400
        for run_id in (ok, failed):
            gateway.wait_final(run_id)
        wait_until(lambda: receiver.deliveries.for_run(ok))
        text = gateway.client.get(f"{gateway.prefix}/metrics").text
    finally:
        gateway.stop()
        receiver.server.stop()
        upstream.server.stop()
    served: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
        served |= names
        # A labelled metric no traffic touched yet (a lease reclaim) is served with no samples,
        # so its label names are taken from its declaration.
        found = {label for sample in family.samples for label in sample.labels} | declared_labels(family.name)
        for name in names:
            labels[name] = found
    return served, labels


def declared_labels(family: str) -> set[str]:
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase) and metric._name == family:
            return set(metric._labelnames)
    return set()
