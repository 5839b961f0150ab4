"""The keys of one entry of ``routes:``, declared once, and the parsing of a route into a RoutePolicy."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from asyncgate.config.values import check_webhook_url, parse_duration, parse_size, positive_int
from asyncgate.errors import ConfigError
from asyncgate.netguard import Allowlist
from asyncgate.policies import WEBHOOK_EVENTS, AsyncMode, RoutePolicy, compile_pattern
from asyncgate.runs import DEFAULT_WEBHOOK_EVENTS, MAX_PRIORITY
from asyncgate.runs import WEBHOOK_EVENTS as RUN_WEBHOOK_EVENTS

_NAME = r"[A-Za-z0-9._~-]{1,64}"


@dataclasses.dataclass(frozen=True)
class RouteKey:
    """One key a route takes: what it defaults to and means (docs), and its JSON schema (Helm)."""

    name: str
    #: The value the example file shows.
    example: str
    default: str
    doc: str
    schema: dict[str, Any]
    #: Only runs use it, so a route whose async is never cannot hold it.
    run_only: bool = False


#: The keys a route takes, in the order the docs list them; any other is refused.
ROUTE_DECLARATIONS = (
    RouteKey(
        "name",
        "batch",
        "its index",
        "what readyz, the OpenAPI document and a run's status (`route`) call it: letters, digits, `.`, `_`, `~`, "
        "`-`, unique",
        {"type": "string", "pattern": f"^{_NAME}$"},
    ),
    RouteKey(
        "methods",
        "[POST]",
        "any",
        "a method or a list of them",
        {"type": ["string", "array"], "items": {"type": "string"}},
    ),
    RouteKey(
        "path",
        "/v1/batch/*",
        "(required)",
        "a pattern over the request's decoded path: `*` matches within one segment, `**` across segments "
        "(`/v1/**` is all under `/v1/`, not `/v1` itself), any other character itself",
        {"type": "string", "pattern": "^/"},
    ),
    RouteKey(
        "async",
        "always",
        "`client`",
        "`client`: the client decides; `always`: every request is a run; `never`: every request passes through",
        {"enum": [mode.value for mode in AsyncMode]},
    ),
    RouteKey(
        "idempotent",
        "true",
        "by method",
        "`true`: a run is re-sent after a lost holder whatever its method; `false`: never re-sent, not even a GET; "
        "unset: GET, HEAD, OPTIONS, TRACE, PUT, DELETE and keyed requests are",
        {"type": "boolean"},
        run_only=True,
    ),
    RouteKey(
        "timeout",
        "2h",
        "`runs.timeout`",
        "a run's time limit, and the ceiling of `Asyncgate-Timeout` on the route",
        {"type": ["string", "number"]},
        run_only=True,
    ),
    RouteKey(
        "max_attempts",
        "5",
        "`runs.max_attempts`",
        "attempts before a run whose holder keeps dying fails",
        {"type": "integer", "minimum": 1},
        run_only=True,
    ),
    RouteKey(
        "max_body_bytes",
        "1MiB",
        "`limits.max_body_bytes`",
        "the largest body of an asynchronous request on the route (413 past it)",
        {"type": ["string", "integer"]},
        run_only=True,
    ),
    RouteKey(
        "webhook",
        "https://hooks.example.com/done",
        "`webhooks.default_url`",
        "the route's default webhook: a URL (checked like a caller's, see `webhooks.allow`), or "
        "`{url: ..., events: [start, output, progress, completed]}`, the events that webhook gets unless the "
        "caller names its own ([webhooks.md](webhooks.md#lifecycle-events)); default `[completed]`",
        {"type": ["string", "object"]},
        run_only=True,
    ),
    RouteKey(
        "priority",
        "5",
        "`0`",
        "the priority of the route's runs, `0` (lowest) to `9`; higher priorities are claimed first "
        "(see [Priorities](#priorities-queue-deadlines-and-shares))",
        {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        run_only=True,
    ),
    RouteKey(
        "priority_max",
        "9",
        "`priority`",
        "the highest priority a caller may ask for with an `Asyncgate-Priority: N` header (`0` to this; 400 "
        "`invalid_priority` otherwise)",
        {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        run_only=True,
    ),
    RouteKey(
        "queue_deadline",
        "30s",
        "none",
        "how long a run may wait in the queue for its first start; still queued then, it ends `expired` (error "
        "`queue_deadline_exceeded`) and is never sent. A caller may ask for less with "
        "`Asyncgate-Queue-Deadline: SECONDS` (400 `invalid_queue_deadline` past the route's)",
        {"type": ["string", "number"]},
        run_only=True,
    ),
    RouteKey(
        "share",
        "20",
        "none",
        "runs one caller may hold queued or running on this route at once, across all gateways; past it, 429 "
        "`share_exceeded` with `Retry-After` (other callers are still served). Counted besides "
        "`limits.max_per_caller`",
        {"type": "integer", "minimum": 1},
        run_only=True,
    ),
)
ROUTE_KEYS = tuple(key.name for key in ROUTE_DECLARATIONS)
_RUN_ONLY_KEYS = tuple(key.name for key in ROUTE_DECLARATIONS if key.run_only)


def _route_methods(key: str, value: Any) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(m, str) and m.isalpha() for m in items):
        raise ConfigError(key, "expected a method such as POST, or a list of them")
    return frozenset(method.upper() for method in items)


def _route_webhook(key: str, value: Any, allow: Allowlist) -> tuple[str, tuple[str, ...]]:
    """A route's default webhook: a URL, or a mapping of ``url`` and ``events``."""
    spec = {"url": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or set(spec) - {"url", "events"} or not isinstance(spec.get("url"), str):
        raise ConfigError(key, "expected a URL, or a mapping with url and events")
    check_webhook_url(f"{key}.url" if isinstance(value, dict) else key, spec["url"], allow)
    events = spec.get("events", ["completed"])
    if not isinstance(events, list) or not events or not all(e in WEBHOOK_EVENTS for e in events):
        raise ConfigError(f"{key}.events", f"expected a list of {', '.join(sorted(WEBHOOK_EVENTS))}")
    return spec["url"], tuple(event for event in RUN_WEBHOOK_EVENTS if event in events)


def _mode(where: str, entry: dict[str, Any]) -> AsyncMode:
    try:
        mode = AsyncMode(entry.get("async", AsyncMode.CLIENT))
    except ValueError:
        raise ConfigError(f"{where}.async", f"expected one of {', '.join(m.value for m in AsyncMode)}") from None
    if mode is AsyncMode.NEVER and (given := [key for key in _RUN_ONLY_KEYS if key in entry]):
        raise ConfigError(f"{where}.{given[0]}", "has no effect on a route whose async is never (it makes no runs)")
    return mode


def _checked(index: int, entry: Any) -> dict[str, Any]:
    where = f"routes[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(where, "expected a mapping with at least a path")
    for name in entry:
        if name not in ROUTE_KEYS:
            raise ConfigError(f"{where}.{name}", f"unknown key (a route takes {', '.join(ROUTE_KEYS)})")
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}.path", "expected a path pattern starting with /, such as /v1/batch/**")
    idempotent = entry.get("idempotent")
    if idempotent is not None and not isinstance(idempotent, bool):
        raise ConfigError(f"{where}.idempotent", f"expected true or false, got {idempotent!r}")
    name = entry.get("name", str(index))
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise ConfigError(f"{where}.name", "expected 1 to 64 letters, digits, '.', '_', '~' or '-'")
    return entry


def _priority(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise ConfigError(key, f"expected a priority from 0 (lowest) to {MAX_PRIORITY}, got {value!r}")
    return value


def _queue_settings(where: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A route's priority, priority_max, queue_deadline and share, as RoutePolicy fields."""
    found: dict[str, Any] = {}
    if "priority" in entry:
        found["priority"] = _priority(f"{where}.priority", entry["priority"])
    if "priority_max" in entry:
        found["priority_max"] = _priority(f"{where}.priority_max", entry["priority_max"])
        if found["priority_max"] < found.get("priority", 0):
            raise ConfigError(f"{where}.priority_max", "must not be lower than the route's priority")
    if "queue_deadline" in entry:
        found["queue_deadline"] = parse_duration(f"{where}.queue_deadline", entry["queue_deadline"])
    if "share" in entry:
        found["share"] = positive_int(f"{where}.share", entry["share"])
    return found


def _route(index: int, entry: Any, allow: Allowlist) -> RoutePolicy:
    where = f"routes[{index}]"
    entry = _checked(index, entry)
    mode = _mode(where, entry)
    webhook_url: str | None = None
    events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    if entry.get("webhook") is not None:
        webhook_url, events = _route_webhook(f"{where}.webhook", entry["webhook"], allow)
    return RoutePolicy(
        name=entry.get("name", str(index)),
        path=entry["path"],
        methods=_route_methods(f"{where}.methods", entry["methods"]) if "methods" in entry else frozenset(),
        mode=mode,
        idempotent=entry.get("idempotent"),
        timeout=parse_duration(f"{where}.timeout", entry["timeout"]) if "timeout" in entry else None,
        max_attempts=positive_int(f"{where}.max_attempts", entry["max_attempts"]) if "max_attempts" in entry else None,
        max_body_bytes=parse_size(f"{where}.max_body_bytes", entry["max_body_bytes"])
        if "max_body_bytes" in entry
        else None,
        webhook_url=webhook_url,
        webhook_events=events,
        pattern=compile_pattern(entry["path"]),
        **_queue_settings(where, entry),
    )


def parse_routes(value: Any, allow: Allowlist) -> tuple[RoutePolicy, ...]:
    """The ``routes:`` of the file, in order; ConfigError names the first offending key."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError("routes", "expected a list of routes")
    routes = tuple(_route(index, entry, allow) for index, entry in enumerate(value))
    seen: set[str] = set()
    for index, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(f"routes[{index}].name", f"{route.name!r} names an earlier route too")
        seen.add(route.name)
    return routes
