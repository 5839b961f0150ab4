"""Header names and rules: every field the gateway reads or writes, hop-by-hop filtering, forwarding,
the scope's request target, and the one list of secret headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Scope

RawHeaders = list[tuple[bytes, bytes]]


# The gateway's own request fields (and the Prefer tokens it honours, RFC 7240).
PREFER = "Prefer"
RESPOND_ASYNC = "respond-async"
WAIT_PREFERENCE = "wait"
PREFERENCE_APPLIED = "Preference-Applied"
WEBHOOK = "Asyncgate-Webhook"
WEBHOOK_EVENTS = "Asyncgate-Webhook-Events"
TIMEOUT = "Asyncgate-Timeout"
PRIORITY = "Asyncgate-Priority"
QUEUE_DEADLINE = "Asyncgate-Queue-Deadline"
IDEMPOTENCY_KEY = "Idempotency-Key"
#: Every Asyncgate-* field belongs to the gateway: never replayed to the upstream as a client sent it.
GATEWAY_PREFIX = "asyncgate-"

# What the gateway tells about a run: on a replay to the upstream (the run id also marks the
# request as a replay, which can never become async again), on an answer, on a webhook.
RUN_ID = "Asyncgate-Run-Id"
ATTEMPT = "Asyncgate-Attempt"
#: The capability URL an attempt may POST its progress to (progress.py); a secret.
PROGRESS_URL = "Asyncgate-Progress-Url"
IDEMPOTENT_REPLAY = "Asyncgate-Idempotent-Replay"
RUN_STATUS = "Asyncgate-Status"
UPSTREAM_STATUS = "Asyncgate-Upstream-Status"
#: A lifecycle webhook delivery's event and its place among the run's deliveries (lifecycle.py).
WEBHOOK_EVENT = "Asyncgate-Webhook-Event"
WEBHOOK_SEQUENCE = "Asyncgate-Webhook-Sequence"
LOCATION = "Location"
RETRY_AFTER = "Retry-After"
LINK = "Link"

# Standard Webhooks v1.
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"

# Server-Sent Events.
LAST_EVENT_ID = "Last-Event-ID"
CACHE_CONTROL = "Cache-Control"
#: Tells nginx not to buffer an event stream.
X_ACCEL_BUFFERING = "X-Accel-Buffering"

# W3C Trace Context and Baggage.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"

# HTTP itself.
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
TRANSFER_ENCODING = "Transfer-Encoding"
CONNECTION = "Connection"
UPGRADE = "Upgrade"
EXPECT = "Expect"
HOST = "Host"
USER_AGENT = "User-Agent"
ACCEPT = "Accept"
AUTHORIZATION = "Authorization"
PROXY_AUTHORIZATION = "Proxy-Authorization"
COOKIE = "Cookie"
SET_COOKIE = "Set-Cookie"
X_API_KEY = "X-API-Key"
X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"


def raw(name: str) -> bytes:
    """A field name as an ASGI scope and the upstream client carry it: lowercase bytes."""
    return name.lower().encode("ascii")


# The names the gateway looks for in raw (ASGI) headers, in that form.
PREFER_RAW = raw(PREFER)
WEBHOOK_RAW = raw(WEBHOOK)
WEBHOOK_EVENTS_RAW = raw(WEBHOOK_EVENTS)
TIMEOUT_RAW = raw(TIMEOUT)
PRIORITY_RAW = raw(PRIORITY)
QUEUE_DEADLINE_RAW = raw(QUEUE_DEADLINE)
IDEMPOTENCY_KEY_RAW = raw(IDEMPOTENCY_KEY)
RUN_ID_RAW = raw(RUN_ID)
RETRY_AFTER_RAW = raw(RETRY_AFTER)
CONTENT_TYPE_RAW = raw(CONTENT_TYPE)
CONTENT_LENGTH_RAW = raw(CONTENT_LENGTH)
TRANSFER_ENCODING_RAW = raw(TRANSFER_ENCODING)
CONNECTION_RAW = raw(CONNECTION)
UPGRADE_RAW = raw(UPGRADE)
EXPECT_RAW = raw(EXPECT)
HOST_RAW = raw(HOST)
AUTHORIZATION_RAW = raw(AUTHORIZATION)
PROXY_AUTHORIZATION_RAW = raw(PROXY_AUTHORIZATION)
X_FORWARDED_FOR_RAW = raw(X_FORWARDED_FOR)
X_FORWARDED_PROTO_RAW = raw(X_FORWARDED_PROTO)
X_FORWARDED_HOST_RAW = raw(X_FORWARDED_HOST)


#: RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies still meet.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
    }
)

#: Request fields that belong to the exchange that carried them, not to a later replay of it:
#: Expect asks for a 100 Continue the client had from the gateway already (a replay has its body
#: whole), and the length is the stored body's, written afresh by the client that replays it.
NOT_REPLAYED = frozenset({EXPECT_RAW, CONTENT_LENGTH_RAW})

#: Headers whose values are credentials: sealed at rest (store/sealing.py), never logged or shown.
SECRET_HEADERS = frozenset(name.lower() for name in (AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE, X_API_KEY))


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The field names listed in Connection headers; they are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == CONNECTION_RAW:
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(tokens)


def end_to_end(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()) -> RawHeaders:
    """``headers`` without hop-by-hop fields, the fields Connection names, and ``drop`` (lowercase)."""
    headers = list(headers)
    named = connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in named and lowered not in drop
    ]


def forwarded_for(existing: bytes | None, client: tuple[str, int] | None) -> bytes | None:
    """X-Forwarded-For with the peer appended: an untrusted client's value is kept, never believed."""
    if client is None:
        return existing
    peer = client[0].encode("latin-1")
    return existing + b", " + peer if existing else peer


def encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


#: Set by the gateway from the request itself; a client's values are replaced, not believed.
_FORWARDING = frozenset({HOST_RAW, X_FORWARDED_PROTO_RAW, X_FORWARDED_HOST_RAW, X_FORWARDED_FOR_RAW})


def forwarded_headers(scope: Scope) -> RawHeaders:
    """The client's end-to-end headers plus X-Forwarded-For, -Proto and -Host."""
    raw: RawHeaders = scope["headers"]
    named = connection_tokens(raw)
    host = None
    xff = None
    headers: RawHeaders = []
    for name, value in raw:
        if name in _FORWARDING:
            if name == HOST_RAW:
                host = value
            elif name == X_FORWARDED_FOR_RAW:
                xff = value if xff is None else xff + b", " + value
            continue
        if name in HOP_BY_HOP or name in named:
            continue
        headers.append((name, value))
    chain = forwarded_for(xff, scope.get("client"))
    if chain is not None:
        headers.append((_X_FORWARDED_FOR, chain))
    headers.append((_X_FORWARDED_PROTO, b"https" if scope.get("scheme") == "https" else b"http"))
    if host is not None:
        headers.append((_X_FORWARDED_HOST, host))
    return headers


_X_FORWARDED_FOR = X_FORWARDED_FOR.encode("ascii")
_X_FORWARDED_PROTO = X_FORWARDED_PROTO.encode("ascii")
_X_FORWARDED_HOST = X_FORWARDED_HOST.encode("ascii")


def upstream_request_headers(scope: Scope) -> list[tuple[str, str]]:
    """``forwarded_headers`` as text, as a run stores them."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in forwarded_headers(scope)]


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> RawHeaders:
    """The upstream's response headers without hop-by-hop fields; repeated fields kept in order."""
    named = connection_tokens(raw)
    return [(name, value) for name, value in raw if (low := name.lower()) not in HOP_BY_HOP and low not in named]


def raw_path(scope: Scope) -> str:
    """The request's path exactly as the client encoded it."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(scope["path"])


def raw_target(scope: Scope) -> tuple[bytes, bytes]:
    """The path and query exactly as the client encoded them."""
    raw = scope.get("raw_path")
    return (raw if raw else scope["path"].encode("latin-1")), scope["query_string"]
