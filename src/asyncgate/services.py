"""The resources one gateway owns, built by the app factory and reached by handlers via app.state."""

from __future__ import annotations

import dataclasses
import functools

from asyncgate.config import Config
from asyncgate.executor import Executor
from asyncgate.feeds import Feeds
from asyncgate.metrics import Metrics
from asyncgate.principal import Access
from asyncgate.store.base import Deliveries, Execution, Lifecycle, Records, RunStore
from asyncgate.upstream import Upstream
from asyncgate.webhooks import WebhookDispatcher


@dataclasses.dataclass
class Services:
    config: Config
    #: The whole store, for the app's wiring; handlers reach it by role (``records`` and the rest).
    store: RunStore
    upstream: Upstream
    webhooks: WebhookDispatcher
    executor: Executor
    access: Access
    metrics: Metrics
    #: Set when a shutdown began: readiness fails so no new traffic is routed here.
    draining: bool = False

    @functools.cached_property
    def feeds(self) -> Feeds:
        """The replica's shared readers of event logs, for SSE listeners."""
        return Feeds(self.records)

    @property
    def records(self) -> Records:
        return self.store

    @property
    def deliveries(self) -> Deliveries:
        return self.store

    @property
    def execution(self) -> Execution:
        return self.store

    @property
    def lifecycle(self) -> Lifecycle:
        return self.store

    @property
    def store_kind(self) -> str:
        return "redis" if self.config.store.redis_url else "embedded"
