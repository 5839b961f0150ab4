"""Async intake: is this request asynchronous? If so, validate it, store it durably, answer 202;
if not, pass it through."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from urllib.parse import unquote_plus, urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from asyncgate import headers as h
from asyncgate import preferences
from asyncgate.config import Config
from asyncgate.errors import (
    BadRequest,
    BlockedDestination,
    ClientDisconnected,
    HTTPError,
    PayloadTooLarge,
    QueueFull,
    ServiceUnavailable,
    ShareExceeded,
    StoreError,
    StoreUnavailable,
    TooManyRequests,
    UnprocessableContent,
)
from asyncgate.links import RunLinks, retry_after
from asyncgate.metrics import Metrics
from asyncgate.netguard import Allowlist, check_url_literal
from asyncgate.policies import AsyncMode, RoutePolicies, RoutePolicy
from asyncgate.principal import Access
from asyncgate.responses import send_error, send_json, stored_response
from asyncgate.runs import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS, Run, RunRequest, RunResult, RunState, new_run_id, now
from asyncgate.store.base import UNFINISHED_TTL, Created, Idempotency, Records, Share
from asyncgate.tracing import NO_TRACING, Span, Tracing, with_span
from asyncgate.waiting import wait_until_final

logger = logging.getLogger("asyncgate.intake")

ASYNC_PARAM = "async"
WEBHOOK_PARAM = "webhookEndpoint"
WEBHOOK_EVENTS_PARAM = "webhookEvents"
MAX_IDEMPOTENCY_KEY = 255

#: The values ?async= takes (any case), paired: true, false, 1, 0, yes, no.
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
MAX_WEBHOOK_URL = 2048
#: How long a client should wait before retrying when the store cannot take the run.
STORE_RETRY_AFTER = 1
#: How long a client refused for a full queue should wait before trying again.
QUEUE_RETRY_AFTER = 5
#: How long a caller refused for holding its whole share should wait: about as long as one of its runs takes.
SHARE_RETRY_AFTER = 5


@dataclasses.dataclass(frozen=True)
class Intent:
    """What the client asked of the gateway, and the request as it must reach the upstream."""

    #: The query string less the gateway's own parameters.
    query: str
    webhook_url: str | None
    #: Whether respond-async came from a Prefer header (it is then echoed in Preference-Applied).
    preferred: bool
    #: The Prefer header values to forward: what the client sent, less what the gateway honoured.
    prefer: tuple[str, ...]
    #: Seconds the client prefers to wait for the result before a 202 (Prefer: wait=N).
    wait: float | None = None
    #: The run's own timeout when the client asked for a shorter one (Asyncgate-Timeout).
    timeout: float | None = None
    idempotency_key: str | None = None
    #: The route policy the request matched, if any.
    route: RoutePolicy | None = None
    #: The webhook events asked for (runs.WEBHOOK_EVENTS), in their order.
    webhook_events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    #: The run's priority: the route's, or what the caller asked within the route's bounds.
    priority: int = 0
    #: Seconds the run may wait for its first start (the route's, or less if the caller asked).
    queue_deadline: float | None = None


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise BadRequest(f"{ASYNC_PARAM} must be true or false, got {value!r}", code="invalid_parameter")


def split_query(query: str) -> tuple[str, dict[str, list[str]]]:
    """The query without the gateway's parameters, and those parameters' decoded values."""
    kept: list[str] = []
    ours: dict[str, list[str]] = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        name = unquote_plus(key)
        if name in (ASYNC_PARAM, WEBHOOK_PARAM, WEBHOOK_EVENTS_PARAM):
            ours.setdefault(name, []).append(unquote_plus(value))
        else:
            kept.append(part)
    return ("&".join(kept) if ours else query), ours


def validate_webhook_url(url: str, allow: Allowlist | None = None) -> str:
    """The URL if it is an absolute http(s) URL whose host is not a refused address; else BadRequest.

    A host name is resolved and checked only at delivery: its addresses may change meanwhile.
    """
    if len(url) > MAX_WEBHOOK_URL:
        raise BadRequest(f"{WEBHOOK_PARAM} is longer than {MAX_WEBHOOK_URL} characters", code="invalid_webhook_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise BadRequest(f"{WEBHOOK_PARAM} is not a valid URL", code="invalid_webhook_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{WEBHOOK_PARAM} must be an absolute http or https URL", code="invalid_webhook_url")
    if any(ch in url for ch in " \t\r\n"):
        raise BadRequest(f"{WEBHOOK_PARAM} must not contain whitespace", code="invalid_webhook_url")
    try:
        check_url_literal(url, allow or Allowlist())
    except BlockedDestination as exc:
        raise BadRequest(
            f"{WEBHOOK_PARAM} names a destination the gateway will not call ({exc.reason})",
            code="blocked_destination",
        ) from None
    return url


def _gateway_headers(scope: Scope) -> dict[bytes, list[str]] | None:
    """The request headers classify() reads, gathered in one pass; None for an executor's replay."""
    found: dict[bytes, list[str]] = {}
    for name, value in scope["headers"]:
        if name in _CLASSIFIED:
            if name == h.RUN_ID_RAW:
                return None  # present on every request an executor replays
            found.setdefault(name, []).append(value.decode("latin-1"))
    return found


def _single(headers: dict[bytes, list[str]], name: bytes) -> str | None:
    values = headers.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name.decode()} is given more than once", code="invalid_header")
    return values[0]


def webhook_events(values: list[str]) -> tuple[str, ...] | None:
    """The events named by ``webhookEvents`` values (comma-separated), in their order; None if none
    was given. BadRequest for an unknown name or an empty list."""
    if not values:
        return None
    names = {name.strip() for value in values for name in value.split(",")} - {""}
    unknown = sorted(names - set(WEBHOOK_EVENTS))
    if unknown or not names:
        known = ", ".join(WEBHOOK_EVENTS)
        what = f"unknown webhook event {unknown[0]!r}" if unknown else "no webhook event named"
        raise BadRequest(f"{what}: {WEBHOOK_EVENTS_PARAM} takes {known}", code="invalid_webhook_events")
    return tuple(event for event in WEBHOOK_EVENTS if event in names)


def _timeout(value: str | None, maximum: float) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= maximum:
        raise BadRequest(f"{h.TIMEOUT} must be a number of seconds in (0, {maximum:g}]", code="invalid_timeout")
    return seconds


def _priority(value: str | None, route: RoutePolicy | None) -> int:
    default = route.priority if route else 0
    if value is None:
        return default
    highest = route.highest_priority if route else 0
    if not (value.strip().isdigit() and int(value) <= highest):
        raise BadRequest(
            f"{h.PRIORITY} must be a whole number from 0 to {highest} on this path", code="invalid_priority"
        )
    return int(value)


def _queue_deadline(value: str | None, route: RoutePolicy | None) -> float | None:
    allowed = route.queue_deadline if route else None
    if value is None:
        return allowed
    maximum = allowed or float(UNFINISHED_TTL)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= maximum:
        raise BadRequest(
            f"{h.QUEUE_DEADLINE} must be a number of seconds in (0, {maximum:g}]", code="invalid_queue_deadline"
        )
    return seconds


def _idempotency_key(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(
            f"{h.IDEMPOTENCY_KEY} must hold 1 to {MAX_IDEMPOTENCY_KEY} characters", code="invalid_idempotency_key"
        )
    return value


def _wait(prefs: list[preferences.Preference], maximum: float) -> float | None:
    value = next((p.value for p in prefs if p.name == h.WAIT_PREFERENCE), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses NaN, as ?wait= does
        raise BadRequest(
            f"{h.PREFER}: {h.WAIT_PREFERENCE} must be a number of seconds (at most {maximum:g} is honoured)",
            code="invalid_parameter",
        )
    # RFC 7240 leaves the server free to wait less than asked; it never waits past its cap.
    return max(0.0, min(seconds, maximum))


def classify(scope: Scope, limits: Limits | None = None) -> Intent | None:
    """An Intent if the request is asynchronous, None if it passes through; BadRequest if malformed."""
    headers = _gateway_headers(scope)
    if headers is None:
        return None  # a replay by an executor: never async, forwarded as it is
    limits = limits or Limits()
    query, ours = split_query(scope["query_string"].decode("latin-1"))
    flags = {_flag(value) for value in ours.get(ASYNC_PARAM, [])}
    if len(flags) > 1:
        raise BadRequest(f"{ASYNC_PARAM} is given more than once with different values", code="invalid_parameter")
    prefer_values = headers.get(h.PREFER_RAW, [])
    prefs = preferences.parse(prefer_values)
    preferred = any(p.name == h.RESPOND_ASYNC for p in prefs)
    webhooks = ours.get(WEBHOOK_PARAM, [])
    header_webhook = _single(headers, h.WEBHOOK_RAW)
    if header_webhook is not None:
        webhooks.append(header_webhook)
    if len(webhooks) > 1:
        raise BadRequest(f"{WEBHOOK_PARAM} is given more than once", code="invalid_webhook_url")
    timeout_header = _single(headers, h.TIMEOUT_RAW)
    events = webhook_events([*ours.get(WEBHOOK_EVENTS_PARAM, []), *headers.get(h.WEBHOOK_EVENTS_RAW, [])])
    priority_header = _single(headers, h.PRIORITY_RAW)
    deadline_header = _single(headers, h.QUEUE_DEADLINE_RAW)
    is_async = flags == {True} or (preferred and flags != {False})
    if limits.route is not None and limits.route.mode is not AsyncMode.CLIENT:
        is_async = _route_mode(limits.route, is_async, flags)
    if not is_async:
        asked = (timeout_header, priority_header, deadline_header, events)
        if webhooks or any(value is not None for value in asked):
            raise BadRequest(
                f"{WEBHOOK_PARAM}, {WEBHOOK_EVENTS_PARAM}, {h.WEBHOOK}, {h.TIMEOUT}, {h.PRIORITY} and "
                f"{h.QUEUE_DEADLINE} need an asynchronous request (add {ASYNC_PARAM}=true)",
                code="webhook_requires_async",
            )
        return None
    wait = _wait(prefs, limits.max_wait) if preferred else None
    honoured = frozenset({h.RESPOND_ASYNC, h.WAIT_PREFERENCE}) if wait is not None else frozenset({h.RESPOND_ASYNC})
    webhook_url = validate_webhook_url(webhooks[0], limits.allow) if webhooks else limits.default_webhook
    if events is not None and webhook_url is None:
        raise BadRequest(f"{WEBHOOK_EVENTS_PARAM} needs a webhook ({WEBHOOK_PARAM})", code="invalid_webhook_events")
    if events is None:
        # A route's default webhook comes with the events the route names; any other, completed alone.
        route = limits.route
        own_default = not webhooks and route is not None and route.webhook_url is not None
        events = route.webhook_events if own_default and route is not None else DEFAULT_WEBHOOK_EVENTS
    return Intent(
        query=query,
        webhook_url=webhook_url,
        webhook_events=events,
        preferred=preferred,
        prefer=tuple(preferences.without(prefer_values, honoured)),
        wait=wait,
        timeout=_timeout(timeout_header, limits.max_timeout),
        idempotency_key=_idempotency_key(_single(headers, h.IDEMPOTENCY_KEY_RAW)),
        route=limits.route,
        priority=_priority(priority_header, limits.route),
        queue_deadline=_queue_deadline(deadline_header, limits.route),
    )


def _route_mode(route: RoutePolicy, asked: bool, flags: set[bool]) -> bool:
    """Whether a request on a route that decides for its clients is async; BadRequest if it asks otherwise."""
    if route.mode is AsyncMode.NEVER:
        if asked:
            raise BadRequest(
                f"requests to {route.path} are never asynchronous (route {route.name}); "
                f"send it without {ASYNC_PARAM}=true or {h.PREFER}: {h.RESPOND_ASYNC}",
                code="async_not_allowed",
            )
        return False
    if flags == {False}:
        raise BadRequest(
            f"requests to {route.path} are always asynchronous (route {route.name}); "
            f"send it without {ASYNC_PARAM}=false",
            code="sync_not_allowed",
        )
    return True


@dataclasses.dataclass(frozen=True)
class Limits:
    """The settings classify() needs, taken from the Config (and a route's policy) once."""

    max_wait: float = 60.0
    max_timeout: float = 12 * 3600.0
    default_webhook: str | None = None
    allow: Allowlist = Allowlist()
    route: RoutePolicy | None = None

    @classmethod
    def of(cls, config: Config, route: RoutePolicy | None = None) -> Limits:
        allow = config.webhooks.allow
        if route is None:
            return cls(config.limits.max_wait, config.runs.timeout, config.webhooks.default_url, allow)
        timeout = route.timeout or config.runs.timeout
        webhook = route.webhook_url or config.webhooks.default_url
        return cls(config.limits.max_wait, timeout, webhook, allow, route)


def looks_async(scope: Scope) -> bool:
    """A cheap first look on the hot path: could this request concern the gateway at all?"""
    query: bytes = scope["query_string"]
    if _ASYNC_PARAM in query or _WEBHOOK in query:
        return True
    return any(name in _GATEWAY_HEADERS for name, _ in scope["headers"])


_NOT_REPLAYED = frozenset(name.decode("ascii") for name in h.NOT_REPLAYED)
_PREFER = h.PREFER.lower()
_ASYNC_PARAM = ASYNC_PARAM.encode("ascii")
#: Both webhookEndpoint and webhookEvents.
_WEBHOOK = b"webhook"
_GATEWAY_HEADERS = frozenset(
    {h.PREFER_RAW, h.WEBHOOK_RAW, h.WEBHOOK_EVENTS_RAW, h.TIMEOUT_RAW, h.PRIORITY_RAW, h.QUEUE_DEADLINE_RAW}
)
_CLASSIFIED = frozenset(
    {
        h.RUN_ID_RAW,
        h.PREFER_RAW,
        h.WEBHOOK_RAW,
        h.WEBHOOK_EVENTS_RAW,
        h.TIMEOUT_RAW,
        h.IDEMPOTENCY_KEY_RAW,
        h.PRIORITY_RAW,
        h.QUEUE_DEADLINE_RAW,
    }
)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == h.CONTENT_LENGTH_RAW and value.strip().isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_headers(scope: Scope, intent: Intent) -> tuple[tuple[str, str], ...]:
    """The headers the upstream will get: the client's, with the gateway's own removed."""
    headers = [
        (name, value)
        for name, value in h.upstream_request_headers(scope)
        # Hop-by-hop fields are gone already; Expect and Content-Length belong to this exchange
        # (headers.NOT_REPLAYED); Asyncgate-* fields belong to the gateway, and a client must not
        # be able to forge a run id or a replay marker.
        if (low := name.lower()) not in _NOT_REPLAYED and low != _PREFER and not low.startswith(h.GATEWAY_PREFIX)
    ]
    headers.extend((h.PREFER, value) for value in intent.prefer)
    return tuple(headers)


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two submissions "the same request" for an idempotency key."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("latin-1"), query.encode("latin-1")):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(body)
    return digest.hexdigest()


def idempotency_key(caller: str, key: str) -> str:
    """The store's name for a caller's key: hashed, so keys never sit in the store as sent."""
    return hashlib.sha256(f"{caller}\x00{key}".encode()).hexdigest()


class RouteLimits:
    """The limits a request gets: its route policy's, else the gateway's own (HTTP and WebSocket alike)."""

    def __init__(self, config: Config) -> None:
        self._default = Limits.of(config)
        self._policies = RoutePolicies(config.routes)
        self._by_route = {route.name: Limits.of(config, route) for route in config.routes}

    def __call__(self, scope: Scope) -> Limits:
        route = self._policies.match(scope["method"], scope["path"]) if self._policies else None
        return self._default if route is None else self._by_route[route.name]

    def route(self, name: str | None) -> RoutePolicy | None:
        limits = self._by_route.get(name) if name is not None else None
        return limits.route if limits is not None else None


class Intake:
    """Every request outside the gateway's prefix: asynchronous ones are accepted (202 once the run
    is stored, never before) or refused; the others go on to ``passthrough``."""

    def __init__(
        self,
        config: Config,
        store: Records,
        access: Access,
        metrics: Metrics,
        passthrough: ASGIApp,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.config = config
        self.passthrough = passthrough
        self.tracing = tracing
        self.store = store
        self.access = access
        self.metrics = metrics
        #: The limits of the route policy a request matches, else the gateway's own.
        self.limits_for = RouteLimits(config)
        self.links = RunLinks(config.server.prefix)
        self.retry_after = str(retry_after(config.runs.retry_after))
        #: With route policies, every request is matched (a route may make it async unasked).
        self._routes = bool(config.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The cheap look first: most requests are the pass-through, the hot path.
        if not (self._routes or looks_async(scope)):
            await self.passthrough(scope, receive, send)
            return
        try:
            intent = classify(scope, self.limits_for(scope))
        except HTTPError as error:
            await self._refuse(send, error)
            return
        if intent is None:
            await self.passthrough(scope, receive, send)
            return
        with self.tracing.intake(scope["headers"], scope["method"], scope["path"]) as span:
            await self._serve(scope, receive, send, intent, span)

    async def _refuse(self, send: Send, error: HTTPError) -> None:
        """Answer a refused submission; the one place refusals are counted."""
        self.metrics.runs_refused.labels(error.code).inc()
        await send_error(send, error)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, intent: Intent, span: Span) -> None:
        try:
            created, status = await self._accept(scope, receive, intent, span)
        except ClientDisconnected:
            return
        except HTTPError as error:
            span.finish(error.status_code, error.code)
            await self._refuse(send, error)
            return
        if not created.replayed:
            self.metrics.runs_accepted.inc()
            if logger.isEnabledFor(logging.INFO):
                extra = {"run_id": created.run_id, "method": scope["method"], "path": scope["path"], "status": status}
                logger.info("run %s accepted: %s %s", created.run_id, scope["method"], scope["path"], extra=extra)
        # Azure's asynchronous request-reply: where to look (Location), when (Retry-After), and
        # the run's other resources by name (Link), so a client needs no knowledge of the paths.
        headers: dict[str, str] = {
            h.LOCATION: self.links.status(created.run_id),
            h.RETRY_AFTER: self.retry_after,
            h.LINK: self.links.header(created.run_id),
        }
        if created.replayed:
            headers[h.IDEMPOTENT_REPLAY] = "true"
        elif intent.wait:
            result = await self._wait_for_result(created.run_id, intent.wait)
            if result is not None:
                response = stored_response(result)
                response.raw_headers.append((h.RUN_ID_RAW, created.run_id.encode()))
                span.finish(result.status)
                await response(scope, receive, send)
                return
        if intent.preferred:
            headers[h.PREFERENCE_APPLIED] = h.RESPOND_ASYNC
        span.finish(202)
        await send_json(send, 202, orjson.dumps({"run_id": created.run_id, "status": status}), headers)

    async def _accept(self, scope: Scope, receive: Receive, intent: Intent, span: Span) -> tuple[Created, str]:
        caller = self.access.principal(scope).caller
        route = intent.route
        body_limit = (route.max_body_bytes if route else None) or self.config.limits.max_body_bytes
        body = await read_body(scope, receive, body_limit)
        request = RunRequest(
            method=scope["method"],
            path=h.raw_path(scope),
            query=intent.query,
            # Traced, the stored context names the intake span: the run's later spans nest under it.
            headers=with_span(replay_headers(scope, intent), span.headers),
            webhook_url=intent.webhook_url,
            webhook_events=intent.webhook_events,
            timeout=intent.timeout or (route.timeout if route else None) or self.config.runs.timeout,
        )
        if route is not None:
            request = dataclasses.replace(
                request, route=route.name, idempotent=route.idempotent, max_attempts=route.max_attempts
            )
        created_at = now()
        if intent.priority or intent.queue_deadline is not None:
            deadline = None if intent.queue_deadline is None else created_at + intent.queue_deadline
            request = dataclasses.replace(request, priority=intent.priority, queue_deadline=deadline)
        run = Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=created_at, caller=caller)
        idempotency = None
        if intent.idempotency_key is not None:
            fingerprint = request_fingerprint(request.method, request.path, request.query, body)
            idempotency = Idempotency(idempotency_key(caller, intent.idempotency_key), fingerprint)
        try:
            created = await self.store.create(
                run, body, idempotency=idempotency, max_queued=self.config.limits.max_queued, shares=self._shares(run)
            )
        except ShareExceeded as exc:
            raise TooManyRequests(
                f"this caller holds {exc.limit} runs queued or running{exc.where}; retry once one has ended",
                code="share_exceeded",
                retry_after=SHARE_RETRY_AFTER,
            ) from None
        except QueueFull:
            raise TooManyRequests(
                f"the gateway holds {self.config.limits.max_queued} queued runs; retry later",
                code="queue_full",
                retry_after=QUEUE_RETRY_AFTER,
            ) from None
        except StoreUnavailable as exc:
            logger.warning("run not accepted, the store is unavailable: %s", exc)
            raise ServiceUnavailable(
                "the gateway cannot store the run right now; retry later",
                code="store_unavailable",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        if not created.same_request:
            raise UnprocessableContent(
                f"this {h.IDEMPOTENCY_KEY} was used for a different request", code="idempotency_key_reused"
            )
        if created.replayed:
            existing = await self.store.get(created.run_id)
            return created, existing.state.value if existing else RunState.QUEUED.value
        return created, run.state.value

    def _shares(self, run: Run) -> tuple[Share, ...]:
        """The caps on the caller's runs that this run counts against: the gateway's, its route's."""
        route = self.limits_for.route(run.request.route)
        shares = []
        if self.config.limits.max_per_caller is not None:
            shares.append(Share(run.caller, self.config.limits.max_per_caller))
        if route is not None and route.share is not None:
            shares.append(Share(f"{run.caller} {route.name}", route.share, f" on route {route.name}"))
        return tuple(shares)

    async def _wait_for_result(self, run_id: str, wait: float) -> RunResult | None:
        """The run's upstream response if it finishes within ``wait`` s, else None (the 202 follows)."""
        try:
            run = await wait_until_final(self.store, run_id, wait)
            return await self.store.result(run_id) if run is not None and run.state.is_final else None
        except StoreError:
            return None
