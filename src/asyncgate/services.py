"""The resources one gateway owns, built by the app factory and reached by handlers via app.state."""

from __future__ import annotations

import dataclasses
import functools

from asyncgate.config import Config
from asyncgate.executor import Executor
from asyncgate.feeds import Feeds
from asyncgate.metrics import Metrics
from asyncgate.principal import Access
from asyncgate.store.base import RunStore
from asyncgate.upstream import Upstream
from asyncgate.webhooks import WebhookDispatcher


@dataclasses.dataclass
class Services:
    config: Config
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
        return Feeds(self.store)

    @property
    def store_kind(self) -> str:
        return "redis" if self.config.store.redis_url else "embedded"
