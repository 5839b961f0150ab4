"""The gateway's HTTP server: uvicorn's options, and request heads and bodies bounded in size and time.

uvicorn bounds neither the time a client may take to send a request head (its keep-alive timer
only runs between requests, and a fresh connection has none) nor, under httptools, the head's
size. A client trickling a request byte by byte would hold its connection, and on the
pass-through an upstream connection too, for as long as it likes. ``GuardedProtocol`` closes:

* a connection whose request head is not complete ``request_timeout`` seconds after the
  connection opened or the previous response ended (408 if some of the head arrived);
* a connection whose head grows past ``max_header_bytes`` (431);
* a connection whose body does not arrive at ``MIN_BODY_RATE`` after a ``request_timeout``
  allowance, counting only the time the gateway is ready to read it (Apache's mod_reqtimeout
  has the same rule), so a slow upstream never costs the client its connection.

The two parsers also disagree on what a request is (h11 accepts a Content-Length beside a
Transfer-Encoding, obsolete line folding and bare LF line ends; httptools accepts two Host
headers, ``Transfer-Encoding: identity, chunked``, and none at all), and a front proxy that reads
a request differently from the gateway is how requests are smuggled. ``StrictRequests`` and
``StrictH11Heads`` refuse every such request with 400 and close the connection, whichever
parser runs, and keep absolute-form and CONNECT targets from naming another host.

Usage::

    uvicorn.Config(app, host=..., port=..., **uvicorn_options(config))
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, cast
from urllib.parse import unquote

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl

from asyncgate.config import Config
from asyncgate.headers import (
    CONNECTION,
    CONNECTION_RAW,
    CONTENT_LENGTH_RAW,
    EXPECT_RAW,
    HOST_RAW,
    TRANSFER_ENCODING_RAW,
)
from asyncgate.responses import error_body, send_json
from asyncgate.websocket import tunnel_protocol

logger = logging.getLogger("asyncgate.server")

DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Bytes per second a request body must average once its first ``request_timeout`` is spent.
MIN_BODY_RATE = 500

HttpParser = Literal["auto", "h11", "httptools"]
_Phase = Literal["head", "body", "app"]

_ABSOLUTE_FORM = re.compile(rb"https?://[^/?#]*", re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# A continuation line (obs-fold) or a line ended by LF alone.
_LOOSE_LINE = re.compile(rb"\n[ \t]|(?<!\r)\n")


def _response(status: bytes) -> bytes:
    body = status[4:] + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n" + body
    )


_TIMEOUT_408 = _response(b"408 Request Timeout")
_TOO_LARGE_431 = _response(b"431 Request Header Fields Too Large")


class GuardedProtocol(asyncio.Protocol):
    """A mixin over uvicorn's HTTP/1.1 protocols (h11 and httptools): request heads and bodies
    bounded in size and time, and every request passed through StrictRequests first.

    It relies on what both protocols share: ``transport``, ``loop``, ``flow``, and ``cycle``, the
    request being handled, with its ``more_body`` and ``response_complete`` flags.
    """

    request_timeout: ClassVar[float] = DEFAULT_REQUEST_TIMEOUT
    max_header_bytes: ClassVar[int] = DEFAULT_MAX_HEADER_BYTES

    # Set by uvicorn's protocol classes.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    cycle: Any
    app: ASGIApp

    _deadline: float
    _head_bytes: int
    _timer: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Both protocols read self.app for each request; wrapping it here puts the framing rules
        # beside the parser they compensate for, whichever app the server was given.
        self.app = StrictRequests(self.app, self.max_header_bytes)
        self._timer = None
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.cycle is not cycle:
            # A request head was completed in this chunk: its body gets a fresh allowance.
            self._deadline = self.loop.time() + self.request_timeout
        else:
            phase = self._phase()
            if phase == "head":
                self._head_bytes += len(data)
                if self._head_bytes > self.max_header_bytes:
                    self._close(_TOO_LARGE_431, "request head larger than %d bytes", self.max_header_bytes)
                    return
            elif phase == "body":
                self._deadline += len(data) / MIN_BODY_RATE
        self._ensure_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing():
            return
        if self.cycle is not cycle:
            # h11 started a pipelined request it had buffered: its body gets a fresh allowance.
            self._deadline = self.loop.time() + self.request_timeout
            self._ensure_timer()
        elif self._phase() == "head":
            self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _phase(self) -> _Phase:
        """What the connection waits for: a request head, a request body, or the app's response."""
        cycle = self.cycle
        if cycle is None or (cycle.response_complete and not cycle.more_body):
            return "head"
        return "body" if cycle.more_body else "app"

    def _expect_head(self) -> None:
        self._head_bytes = 0
        self._deadline = self.loop.time() + self.request_timeout
        self._ensure_timer()

    def _ensure_timer(self) -> None:
        # One timer per connection, re-armed only when it fires: data_received stays cheap.
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or handed over to a WebSocket protocol
        phase = self._phase()
        if phase == "app":
            return  # the gateway's turn: the response ends it, and the next head is timed again
        now = self.loop.time()
        if phase == "body" and self.flow.read_paused:
            # The gateway is not reading (its buffer is full): the client is not the one late.
            self._deadline = max(self._deadline, now + self.request_timeout)
        if now < self._deadline:
            self._ensure_timer()
        elif phase == "head" and self._head_bytes == 0:
            self._close(b"", "no request within %ss", self.request_timeout)
        elif phase == "head":
            self._close(_TIMEOUT_408, "request head not complete within %ss", self.request_timeout)
        else:
            self._close(b"", "request body too slow (%ss allowance)", self.request_timeout)

    def _close(self, response: bytes, reason: str, *args: object) -> None:
        logger.info("closing a connection from %s: " + reason, _peer(self.transport), *args)
        if response:
            self.transport.write(response)
        self.transport.close()


def request_problem(scope: Scope) -> str | None:
    """Why two HTTP/1.1 parsers could read this request differently, or None if they could not."""
    if scope["method"] == "CONNECT":
        return "CONNECT is not supported: the gateway is not a forward proxy"
    version = scope["http_version"]
    if version not in ("1.0", "1.1"):
        return f"HTTP/{version} is not supported"
    target: bytes = scope.get("raw_path") or b""
    if target == b"*" and scope["method"] == "OPTIONS":
        pass  # asks about the server itself (RFC 9112 3.2.4): relayed to the upstream as it is
    elif not target.startswith(b"/") and _ABSOLUTE_FORM.match(target) is None:
        return "the request target must be a path or an absolute http(s) URL"
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts = 0
    for name, value in scope["headers"]:
        if name == CONTENT_LENGTH_RAW:
            lengths.append(value)
        elif name == TRANSFER_ENCODING_RAW:
            codings.append(value)
        elif name == HOST_RAW:
            hosts += 1
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not lengths[0].strip().isdigit():
        return "Content-Length is not a number"
    if codings:
        if lengths:
            return "both Content-Length and Transfer-Encoding"
        if version == "1.0":
            return "Transfer-Encoding in an HTTP/1.0 request"
        if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
            return "the only Transfer-Encoding accepted is chunked"
    if version == "1.1" and hosts != 1:
        return "an HTTP/1.1 request needs exactly one Host header"
    return None


def origin_form(scope: Scope) -> Scope:
    """``scope`` with an absolute-form target (``http://host/path``) reduced to its path.

    The host it names is ignored: the gateway only ever talks to its configured upstream.
    """
    target: bytes = scope["raw_path"]
    match = _ABSOLUTE_FORM.match(target)
    if match is None:
        return scope
    path = target[match.end() :] or b"/"
    return {**scope, "raw_path": path, "path": unquote(path.decode("latin-1"))}


def head_size(scope: Scope) -> int:
    """The size of the request head as it was sent, give or take the spaces around colons."""
    line = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 13
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


class StrictRequests:
    """ASGI middleware: 400 for requests ``request_problem`` refuses, 431 for heads over the limit,
    both with the connection closed; absolute-form targets reduced to their path."""

    def __init__(self, app: ASGIApp, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # A head that arrived in one read was never counted by GuardedProtocol: bound it here.
            if head_size(scope) > self.max_header_bytes:
                message = f"the request head is larger than {self.max_header_bytes} bytes"
                await _refuse(send, 431, "request_header_too_large", message)
                return
            problem = request_problem(scope)
            if problem is not None:
                await _refuse(send, 400, "malformed_request", problem)
                return
            if not scope["raw_path"].startswith((b"/", b"*")):
                scope = origin_form(scope)
            if scope["http_version"] == "1.1" and expects_continue(scope):
                guard = ContinueGuard(receive, send)
                receive, send = guard.receive, guard.send
        await self.app(scope, receive, send)


def expects_continue(scope: Scope) -> bool:
    return any(name == EXPECT_RAW and value.lower() == b"100-continue" for name, value in scope["headers"])


class ContinueGuard:
    """A request's receive and send that close the connection after a response to
    ``Expect: 100-continue`` given before the body was asked for.

    The client then never got 100 Continue and may never send the body (RFC 9110 10.1.1), so the
    bytes it sends next cannot be told apart: a next request read as this one's body, or this
    one's body read as a next request. Both parsers would read on; closing is the one safe end.
    """

    __slots__ = ("_receive", "_send", "asked")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.asked = False

    async def receive(self) -> Message:
        self.asked = True
        return await self._receive()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.asked:
            message = {**message, "headers": [*message.get("headers", ()), (CONNECTION_RAW, b"close")]}
        await self._send(message)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    # Closing matters as much as the status: the bytes after an ambiguous request may be a
    # second, smuggled request that must never be parsed.
    await send_json(send, status, error_body(code, message), {CONNECTION: "close"})


def head_problem(context: bytes, data: bytes) -> tuple[str | None, bytes]:
    """Scan the next bytes of a request head for obs-fold and bare LF; also the context to carry on.

    ``context`` is the tail of what was scanned before, so a pattern split across reads is seen.
    """
    text = context + data
    end = _HEAD_END.search(text)
    head = text if end is None else text[: end.end()]
    match = _LOOSE_LINE.search(head)
    if match is not None:
        found = "obsolete line folding" if len(match.group()) == 2 else "a line ended by a bare LF"
        return f"{found} in the request head", b""
    return None, text[-3:]


class StrictH11Heads(asyncio.Protocol):
    """Mixin over uvicorn's h11 protocol: refuses heads with obs-fold or bare LF line ends.

    h11 unfolds continuation lines and accepts bare LF, as RFC 9112 permits; httptools refuses
    both, and so must the gateway whichever parser runs. h11 parses a head only while the client
    is IDLE, so every head is scanned before h11 reads it: incrementally as it arrives, or whole
    (``trailing_data``) when a pipelined head was already buffered.
    """

    conn: h11.Connection
    transport: asyncio.Transport
    _head_context: bytes | None = None
    _fresh: bytes = b""

    def data_received(self, data: bytes) -> None:
        self._fresh = data
        super().data_received(data)

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE:
            if self._head_context is None:  # what h11 holds has not been scanned: scan it all
                problem, self._head_context = head_problem(b"", self.conn.trailing_data[0])
            else:
                problem, self._head_context = head_problem(self._head_context, self._fresh)
            self._fresh = b""
            if problem is not None:
                logger.info("refusing a request from %s: %s", _peer(self.transport), problem)
                self.transport.write(_response(b"400 Bad Request"))
                self.transport.close()
                return
        super().handle_events()  # type: ignore[misc]
        if self.conn.their_state is not h11.IDLE:
            self._head_context = None


class HttpToolsFraming(asyncio.Protocol):
    """Mixin over uvicorn's httptools protocol: response framing as h11 does it.

    uvicorn's httptools protocol gets two cases wrong, and each breaks the client's connection:

    * it frames a response without Content-Length as chunked whatever the request's version,
      and HTTP/1.0 has no chunked coding (RFC 9112 6.1): the client reads chunk sizes as body;
    * it expects the body a 204 or 304 response's Content-Length announces, which RFC 9110
      (8.6) lets a 304 carry for the selected representation, and fails the response when
      none comes.

    Each request's send is wrapped (``FramedSend``) to frame the first case by the connection's
    close (uvicorn closes after every HTTP/1.0 response) and to send no body in the second. An
    HTTP/1.0 request's ``Expect: 100-continue`` is ignored, as RFC 9110 10.1.1 requires, and a
    request's trailer fields are dropped rather than added to its headers.
    """

    cycle: Any
    headers: list[tuple[bytes, bytes]]

    def on_headers_complete(self) -> None:
        cycle = self.cycle
        super().on_headers_complete()  # type: ignore[misc]
        fresh = self.cycle
        if fresh is not cycle and fresh is not None:
            # httptools reports a chunked body's trailer fields through on_header too, and uvicorn
            # appends them to self.headers, the request's own header list, where the app (the
            # pass-through) may already be reading them: a trailer could pose as a header
            # (RFC 9110 6.5.1). What comes after the head goes to a list nobody reads, as h11
            # drops trailers. (An upgrade makes no cycle, and keeps its list for the upgrade.)
            self.headers = []
            if fresh.scope["http_version"] == "1.0":
                fresh.waiting_for_100_continue = False
            fresh.send = FramedSend(fresh)


#: Statuses that never have a body (RFC 9110 6.4.1), whatever their headers say.
_NO_BODY = frozenset({204, 304})


class FramedSend:
    """An httptools request cycle's ``send``, with ``HttpToolsFraming``'s two corrections.

    It steers uvicorn's cycle through two of its attributes: ``chunked_encoding`` set to False
    before the head keeps it from adding ``Transfer-Encoding: chunked``, and
    ``expected_content_length`` set to what may still be sent lets each piece through as it is.
    """

    __slots__ = ("_cycle", "_send", "until_close")

    def __init__(self, cycle: Any) -> None:
        # The cycle holds this as its ``send``: with the cycle (or its bound ``send``) held here
        # too, every request left a reference cycle, a dozen objects that only the collector
        # frees. Under intake load that was ~40,000 objects per young collection, each one
        # pausing the event loop 25-70 ms (bench S3, holding 5,000 runs).
        self._cycle = weakref.ref(cycle)
        self._send: Callable[[Any, Message], Awaitable[None]] = type(cycle).send
        self.until_close = False

    @property
    def cycle(self) -> Any:
        cycle = self._cycle()
        if cycle is None:  # only reachable through its cycle: someone kept the send past the request
            raise RuntimeError("this request's response is over")
        return cycle

    async def __call__(self, message: Message) -> None:
        cycle = self.cycle
        if message["type"] == "http.response.start" and not cycle.response_started:
            status = message["status"]
            if status in _NO_BODY:
                await self._send(cycle, message)
                cycle.expected_content_length = 0  # whatever its Content-Length says
                return
            if cycle.scope["http_version"] == "1.0":
                message = self._close_delimited(cycle, message)
        elif self.until_close and message["type"] == "http.response.body" and not cycle.response_complete:
            cycle.expected_content_length = len(message.get("body", b""))
        await self._send(cycle, message)

    def _close_delimited(self, cycle: Any, message: Message) -> Message:
        """The head of a response to HTTP/1.0: without a length, its body runs until the close."""
        headers = list(message.get("headers", ()))
        names = {name.lower() for name, _ in headers}
        if CONTENT_LENGTH_RAW in names or cycle.scope["method"] == "HEAD":
            return message
        self.until_close = True
        cycle.chunked_encoding = False
        if TRANSFER_ENCODING_RAW in names:
            message = {**message, "headers": [(n, v) for n, v in headers if n.lower() != TRANSFER_ENCODING_RAW]}
        return message


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown"


def _base_protocol(http: HttpParser) -> type[asyncio.Protocol]:
    if http == "auto":
        # uvicorn's own choice: httptools when installed (the "speed" extra), h11 otherwise.
        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    raise ValueError(f"unknown HTTP parser {http!r}")


def protocol_class(
    http: HttpParser = "auto",
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> type[asyncio.Protocol]:
    """uvicorn's protocol for ``http`` with GuardedProtocol' limits, for ``uvicorn.Config(http=...)``."""
    base = _base_protocol(http)
    mixins: tuple[type[asyncio.Protocol], ...] = (GuardedProtocol,)
    if issubclass(base, _h11_protocol()):
        mixins = (StrictH11Heads, *mixins)
    else:
        mixins = (HttpToolsFraming, *mixins)
    limits = {"request_timeout": request_timeout, "max_header_bytes": max_header_bytes}
    return cast(type[asyncio.Protocol], type(f"Guarded{base.__name__}", (*mixins, base), limits))


def _h11_protocol() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def uvicorn_options(config: Config, http: HttpParser = "auto") -> dict[str, Any]:
    """The uvicorn.Config keyword arguments that make the server safe to face clients directly."""
    limits = config.limits
    return {
        "http": protocol_class(http, limits.request_timeout, limits.max_header_bytes),
        # h11 enforces its own bound on an incomplete head; it answers 400 rather than 431.
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        # X-Forwarded-For from a peer is data to append to, never the client's address.
        "proxy_headers": False,
        # The upstream's own Server and Date headers pass through; uvicorn must not add a second.
        "server_header": False,
        "date_header": False,
        # WebSocket upgrades are relayed to the upstream and the connections spliced
        # (websocket.py): the gateway needs no WebSocket library, and whichever one is installed
        # uvicorn must not pick it to terminate WebSockets here.
        "ws": tunnel_protocol(config, request_problem),
    }
