"""Prometheus metrics, in a registry the app owns (never the process-wide default one).

Labels hold only small, fixed sets of values (a status, an error code, an outcome): never a
run id, a path or a URL, so cardinality stays bounded whatever the traffic. Counters are served
with prometheus_client's ``_total`` suffix; "in flight" is spelled ``in_flight``. A gauge that
every replica reports for the whole deployment carries ``scope="deployment"``: aggregate it
with ``max``, never ``sum``. docs/operations.md lists every name as served.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from asyncgate import __version__

#: Upstream calls of async runs last from milliseconds to the 12-hour limit.
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: The label of a gauge that reports the whole deployment, the same on every replica.
DEPLOYMENT_SCOPE = "deployment"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric asyncgate exports."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.runs_accepted = Counter(
            "asyncgate_runs_accepted", "Async runs accepted (202) and stored.", registry=registry
        )
        self.runs_refused = Counter(
            "asyncgate_runs_refused", "Async submissions refused, by reason.", ["reason"], registry=registry
        )
        self.runs_finished = Counter(
            "asyncgate_runs_finished",
            "Runs that reached a final state, by status and error code.",
            ["status", "error_code"],
            registry=registry,
        )
        self.runs_inflight = Gauge(
            "asyncgate_runs_in_flight", "Upstream calls this gateway holds for async runs.", registry=registry
        )
        # Every replica reads the same queue: the label says so, so dashboards take max, not sum.
        self.runs_queued = Gauge(
            "asyncgate_runs_queued",
            "Runs accepted and not started, across every gateway (scope=deployment: aggregate with max).",
            ["scope"],
            registry=registry,
        ).labels(DEPLOYMENT_SCOPE)
        self.upstream_duration = Histogram(
            "asyncgate_upstream_call_duration_seconds",
            "Duration of the upstream calls of async runs.",
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "asyncgate_run_queue_wait_seconds",
            "Time from acceptance to the start of a run's first attempt.",
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "asyncgate_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, retry, failed, gone).",
            ["outcome"],
            registry=registry,
        )
        self.webhooks_sending = Gauge(
            "asyncgate_webhook_deliveries_in_flight", "Webhook attempts this gateway is making.", registry=registry
        )
        self.webhooks_waiting = Gauge(
            "asyncgate_webhook_deliveries_waiting",
            "Deliveries of runs that ended here, taken with their end, waiting for a free place.",
            registry=registry,
        )
        self.sync_requests = Counter(
            "asyncgate_sync_requests",
            "Synchronous pass-through requests, by response status class.",
            ["status_class"],
            registry=registry,
        )
        self.sync_duration = Histogram(
            "asyncgate_sync_request_duration_seconds",
            "Time to the upstream's response headers on synchronous requests.",
            buckets=SYNC_BUCKETS,
            registry=registry,
        )
        self.lease_renewals = Counter(
            "asyncgate_lease_renewals", "Lease renewals, by result (held, lost, cancel).", ["result"], registry=registry
        )
        self.runs_reclaimed = Counter(
            "asyncgate_runs_reclaimed",
            "Runs whose holder was lost, by what followed (requeued, failed).",
            ["action"],
            registry=registry,
        )
        self.store_errors = Counter(
            "asyncgate_store_errors", "Store operations that failed (Redis or SQLite).", registry=registry
        )
        Info("asyncgate_build", "The running asyncgate's version and Python.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        # CPU, memory, open files and start time of this process, and python_info.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        # Children resolved once: the hot path only increments.
        self._by_class = [self.sync_requests.labels(name) for name in STATUS_CLASSES]

    def sync_request(self, status: int, seconds: float) -> None:
        self._by_class[min(max(status // 100, 1), 5) - 1].inc()
        self.sync_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
