"""Per-route policies: the ``routes:`` of the configuration file, matched in order, first match wins.

A route names methods (any when none) and a path pattern; ``*`` matches within one path segment,
``**`` matches across segments (``/v1/**`` is everything under ``/v1/``), anything else matches
itself. The pattern is matched against the request's decoded path, without its query.
"""

from __future__ import annotations

import dataclasses
import re
from enum import StrEnum
from typing import Any

from asyncgate.runs import DEFAULT_WEBHOOK_EVENTS, mask_url
from asyncgate.runs import WEBHOOK_EVENTS as _EVENTS


class AsyncMode(StrEnum):
    """Whether requests on a route may, must or must not be asynchronous."""

    #: The client decides (``?async=true``, ``Prefer: respond-async``), as without a route.
    CLIENT = "client"
    #: Every request becomes a run; asking for a synchronous answer is refused (400).
    ALWAYS = "always"
    #: Every request passes through; asking for a run is refused (400).
    NEVER = "never"


#: Webhook events a route may subscribe its default webhook to (runs.WEBHOOK_EVENTS).
WEBHOOK_EVENTS = frozenset(_EVENTS)


@dataclasses.dataclass(frozen=True)
class RoutePolicy:
    """One entry of ``routes:``; None leaves a setting to the gateway-wide configuration."""

    #: What a run's status shows in ``route``: the configured name, else the route's index.
    name: str
    path: str
    #: Upper-case methods; empty matches any.
    methods: frozenset[str] = frozenset()
    mode: AsyncMode = AsyncMode.CLIENT
    #: True: a run is re-sent after a lost holder whatever its method; False: never; None: as its method says.
    idempotent: bool | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    max_body_bytes: int | None = None
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    #: The priority of the route's runs (0 to runs.MAX_PRIORITY).
    priority: int = 0
    #: The highest priority a caller may ask for (Asyncgate-Priority); None: only ``priority`` or less.
    priority_max: int | None = None
    #: Seconds a run may wait for its first start before it ends expired; a caller may ask for less.
    queue_deadline: float | None = None
    #: Runs one caller may hold queued or running on this route at once; None: no cap of its own.
    share: int | None = None
    #: The compiled ``path``.
    pattern: re.Pattern[str] = dataclasses.field(default=re.compile(""), compare=False, repr=False)

    @property
    def highest_priority(self) -> int:
        """The highest priority a run on this route may get."""
        return max(self.priority, self.priority_max or 0)

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and self.pattern.fullmatch(path) is not None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a route's path pattern (``*`` within a segment, ``**`` across)."""
    parts = re.split(r"(\*\*|\*)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


class RoutePolicies:
    """The configured routes, in order; ``match`` finds the first that applies to a request."""

    def __init__(self, routes: tuple[RoutePolicy, ...]) -> None:
        self.routes = routes

    def __bool__(self) -> bool:
        return bool(self.routes)

    def match(self, method: str, path: str) -> RoutePolicy | None:
        return next((route for route in self.routes if route.matches(method, path)), None)


def effective(route: RoutePolicy, defaults: dict[str, Any]) -> dict[str, Any]:
    """A route as readyz and the OpenAPI document show it: every setting, the gateway's where it sets none.

    ``defaults`` holds the gateway-wide ``timeout``, ``max_attempts``, ``max_body_bytes``,
    ``webhook`` (a URL or None) and ``share`` (limits.max_per_caller). Webhook URLs are masked: they often carry tokens.
    """
    webhook = route.webhook_url or defaults["webhook"]
    return {
        "name": route.name,
        "methods": sorted(route.methods) or None,
        "path": route.path,
        "async": route.mode.value,
        "idempotent": route.idempotent,
        "timeout": route.timeout or defaults["timeout"],
        "max_attempts": route.max_attempts or defaults["max_attempts"],
        "max_body_bytes": route.max_body_bytes or defaults["max_body_bytes"],
        "webhook": None if webhook is None else {"url": mask_url(webhook), "events": list(route.webhook_events)},
        "priority": route.priority,
        "priority_max": route.highest_priority,
        "queue_deadline": route.queue_deadline,
        "share": route.share or defaults.get("share"),
    }
