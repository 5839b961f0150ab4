"""Metrics scraped from a real gateway: names, types, units, and bounded labels."""

from __future__ import annotations

import platform
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from asyncgate import __version__
from tests.e2e.conftest import Gateway, Receiver
from tests.e2e.test_async import submit
from tests.support.wait import wait_until


def scrape(gateway: Gateway) -> dict[str, Metric]:
    response = gateway.client.get(f"{gateway.prefix}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Metric], name: str, **labels: str) -> float:
    family = families[name]
    for s in family.samples:
        if s.name.endswith(("_total", "_count")) or s.name == name:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_metrics_count_what_happened(gateway: Gateway, receiver: Receiver) -> None:
    assert gateway.client.get("/echo").status_code == 200
    assert gateway.client.get("/status/503").status_code == 503
    ok = submit(gateway, f"/echo?async=true&webhookEndpoint={receiver.url}/h")
    failed = submit(gateway, "/status/500?async=true")
    gateway.wait_final(ok)
    gateway.wait_final(failed)
    wait_until(lambda: receiver.deliveries.for_run(ok))
    wait_until(lambda: sample(scrape(gateway), "asyncgate_webhook_attempts", outcome="delivered") == 1)
    families = scrape(gateway)

    assert families["asyncgate_runs_accepted"].type == "counter"
    assert sample(families, "asyncgate_runs_accepted") == 2
    assert sample(families, "asyncgate_runs_finished", status="succeeded", error_code="") == 1
    assert sample(families, "asyncgate_runs_finished", status="failed", error_code="upstream_error") == 1
    assert sample(families, "asyncgate_sync_requests", status_class="2xx") == 1
    assert sample(families, "asyncgate_sync_requests", status_class="5xx") == 1
    assert families["asyncgate_upstream_call_duration_seconds"].type == "histogram"
    assert sample(families, "asyncgate_upstream_call_duration_seconds") == 2
    assert families["asyncgate_sync_request_duration_seconds"].type == "histogram"
    assert families["asyncgate_runs_in_flight"].type == "gauge"
    assert families["asyncgate_runs_queued"].type == "gauge"
    assert sample(families, "asyncgate_runs_queued", scope="deployment") == 0
    assert sample(families, "asyncgate_build_info", version=__version__, python=platform.python_version()) == 1
    assert sample(families, "process_resident_memory_bytes") > 0
    assert sample(families, "python_info", implementation=platform.python_implementation()) == 1

    for name, family in families.items():
        assert name.startswith(("asyncgate_", "process_", "python_")), name
        for s in family.samples:
            for value in s.labels.values():
                assert ok not in value and failed not in value and "/" not in value, (name, s.labels)


def test_refusals_are_counted_by_reason(gateway: Gateway) -> None:
    gateway.client.post("/echo?async=true&webhookEndpoint=nope", content=b"x")
    gateway.client.post("/echo?async=true", content=b"x", headers={"Idempotency-Key": ""})
    gateway.client.post("/echo?async=true", content=b"x" * (17 * 1024 * 1024))
    families = scrape(gateway)
    assert sample(families, "asyncgate_runs_refused", reason="invalid_webhook_url") == 1
    assert sample(families, "asyncgate_runs_refused", reason="invalid_idempotency_key") == 1
    assert sample(families, "asyncgate_runs_refused", reason="payload_too_large") == 1
    assert sample(families, "asyncgate_runs_accepted") == 0


DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_docs_list_every_metric_as_served(gateway: Gateway) -> None:
    served = dict(re.findall(r"^# TYPE (\S+) (\S+)$", gateway.client.get(f"{gateway.prefix}/metrics").text, re.M))
    ours = {name: kind for name, kind in served.items() if name.startswith("asyncgate_")}
    # prometheus_client adds a <name>_created gauge beside each counter and histogram: not ours to list.
    ours = {name: kind for name, kind in ours.items() if not name.endswith("_created")}
    documented = dict(re.findall(r"^\| `(asyncgate_\w+)` \| (\w+) \|", DOCS.read_text(), re.M))
    assert documented == ours
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= set(served)
