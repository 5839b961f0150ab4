"""Async intake: is this request asynchronous? If so, validate it, store it durably, answer 202."""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import unquote_plus, urlsplit

import orjson
from starlette.types import Receive, Scope, Send

from asyncgate import preferences
from asyncgate.config import Config
from asyncgate.errors import BadRequest, ClientError, PayloadTooLarge, ServiceUnavailable, StoreUnavailable
from asyncgate.proxy import ClientDisconnected, raw_path, upstream_request_headers
from asyncgate.responses import send_error, send_json
from asyncgate.runs import Run, RunRequest, RunState, new_run_id, now
from asyncgate.store.base import RunStore

logger = logging.getLogger("asyncgate.intake")

ASYNC_PARAM = "async"
WEBHOOK_PARAM = "webhookEndpoint"
RESPOND_ASYNC = "respond-async"
#: Present on every request the executor replays, so a replay can never become async again.
RUN_ID_HEADER = "Asyncgate-Run-Id"
ATTEMPT_HEADER = "Asyncgate-Attempt"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_MAX_WEBHOOK_URL = 2048
#: How long a client should wait before retrying when the store cannot take the run.
STORE_RETRY_AFTER = 1


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


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadRequest(f"{ASYNC_PARAM} must be true or false, got {value!r}", code="invalid_parameter")


def split_query(query: str) -> tuple[str, dict[str, list[str]]]:
    """The query without the gateway's parameters, and those parameters' decoded values."""
    kept: list[str] = []
    ours: dict[str, list[str]] = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        name = unquote_plus(key)
        if name in (ASYNC_PARAM, WEBHOOK_PARAM):
            ours.setdefault(name, []).append(unquote_plus(value))
        else:
            kept.append(part)
    return ("&".join(kept) if ours else query), ours


def validate_webhook_url(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host; BadRequest otherwise."""
    if len(url) > _MAX_WEBHOOK_URL:
        raise BadRequest(f"{WEBHOOK_PARAM} is longer than {_MAX_WEBHOOK_URL} characters", code="invalid_webhook_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise BadRequest(f"{WEBHOOK_PARAM} is not a valid URL", code="invalid_webhook_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{WEBHOOK_PARAM} must be an absolute http or https URL", code="invalid_webhook_url")
    if any(ch in url for ch in " \t\r\n"):
        raise BadRequest(f"{WEBHOOK_PARAM} must not contain whitespace", code="invalid_webhook_url")
    return url


def classify(scope: Scope) -> Intent | None:
    """An Intent if the request is asynchronous, None if it passes through; BadRequest if malformed."""
    if any(name == b"asyncgate-run-id" for name, _ in scope["headers"]):
        return None  # a replay by an executor: never async, forwarded as it is
    query, ours = split_query(scope["query_string"].decode("latin-1"))
    flags = {_flag(value) for value in ours.get(ASYNC_PARAM, [])}
    if len(flags) > 1:
        raise BadRequest(f"{ASYNC_PARAM} is given more than once with different values", code="invalid_parameter")
    prefer_values = [v.decode("latin-1") for n, v in scope["headers"] if n == b"prefer"]
    preferred = any(p.name == RESPOND_ASYNC for p in preferences.parse(prefer_values))
    webhooks = ours.get(WEBHOOK_PARAM, [])
    if len(webhooks) > 1:
        raise BadRequest(f"{WEBHOOK_PARAM} is given more than once", code="invalid_webhook_url")
    is_async = flags == {True} or (preferred and flags != {False})
    if not is_async:
        if webhooks:
            raise BadRequest(
                f"{WEBHOOK_PARAM} needs an asynchronous request (add {ASYNC_PARAM}=true)", code="webhook_requires_async"
            )
        return None
    return Intent(
        query=query,
        webhook_url=validate_webhook_url(webhooks[0]) if webhooks else None,
        preferred=preferred,
        prefer=tuple(preferences.without(prefer_values, frozenset({RESPOND_ASYNC}))),
    )


def looks_async(scope: Scope) -> bool:
    """A cheap first look on the hot path: could this request concern the gateway at all?"""
    query: bytes = scope["query_string"]
    if b"async" in query or b"webhookEndpoint" in query:
        return True
    return any(name == b"prefer" for name, _ in scope["headers"])


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
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
        for name, value in upstream_request_headers(scope)
        # Content-Length is recomputed from the stored body; Asyncgate-* fields belong to the
        # gateway, and a client must not be able to forge a run id or a replay marker.
        if (low := name.lower()) != "content-length" and low != "prefer" and not low.startswith("asyncgate-")
    ]
    headers.extend(("Prefer", value) for value in intent.prefer)
    return tuple(headers)


class Intake:
    """Accepts asynchronous requests: 202 once the run is stored, never before."""

    def __init__(self, config: Config, store: RunStore) -> None:
        self.config = config
        self.store = store
        self.runs_url = f"{config.server.prefix}/runs/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send, intent: Intent) -> None:
        try:
            run = await self._accept(scope, receive, intent)
        except ClientDisconnected:
            return
        except ClientError as error:
            await send_error(send, error)
            return
        headers = {"Location": self.runs_url + run.run_id}
        if intent.preferred:
            headers["Preference-Applied"] = RESPOND_ASYNC
        await send_json(send, 202, orjson.dumps({"run_id": run.run_id, "status": run.state.value}), headers)

    async def _accept(self, scope: Scope, receive: Receive, intent: Intent) -> Run:
        body = await read_body(scope, receive, self.config.limits.max_body_bytes)
        request = RunRequest(
            method=scope["method"],
            path=raw_path(scope),
            query=intent.query,
            headers=replay_headers(scope, intent),
            webhook_url=intent.webhook_url,
            timeout=self.config.runs.timeout,
        )
        run = Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=now())
        try:
            await self.store.create(run, body)
        except StoreUnavailable as exc:
            logger.warning("run not accepted, the store is unavailable: %s", exc)
            raise ServiceUnavailable(
                "the gateway cannot store the run right now; retry later",
                code="store_unavailable",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        return run
