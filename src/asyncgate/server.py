"""The gateway's HTTP server: uvicorn's options, and request heads and bodies bounded in size and time.

uvicorn bounds neither the time a client may take to send a request head (its keep-alive timer
only runs between requests, and a fresh connection has none) nor, under httptools, the head's
size. A client trickling a request byte by byte would hold its connection, and on the
pass-through an upstream connection too, for as long as it likes. ``RequestDeadlines`` closes:

* a connection whose request head is not complete ``request_timeout`` seconds after the
  connection opened or the previous response ended (408 if some of the head arrived);
* a connection whose head grows past ``max_header_bytes`` (431);
* a connection whose body does not arrive at ``MIN_BODY_RATE`` after a ``request_timeout``
  allowance, counting only the time the gateway is ready to read it (Apache's mod_reqtimeout
  has the same rule), so a slow upstream never costs the client its connection.

Usage::

    uvicorn.Config(app, host=..., port=..., **uvicorn_options(config))
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any, ClassVar, Literal, cast

from uvicorn.protocols.http.flow_control import FlowControl

from asyncgate.config import Config

logger = logging.getLogger("asyncgate.server")

DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Bytes per second a request body must average once its first ``request_timeout`` is spent.
MIN_BODY_RATE = 500

HttpParser = Literal["auto", "h11", "httptools"]
_Phase = Literal["head", "body", "app"]


def _response(status: bytes) -> bytes:
    body = status[4:] + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n" + body
    )


_TIMEOUT_408 = _response(b"408 Request Timeout")
_TOO_LARGE_431 = _response(b"431 Request Header Fields Too Large")


class RequestDeadlines(asyncio.Protocol):
    """A mixin over uvicorn's HTTP/1.1 protocols (h11 and httptools); see the module docstring.

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

    _deadline: float
    _head_bytes: int
    _timer: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
    """uvicorn's protocol for ``http`` with RequestDeadlines' limits, for ``uvicorn.Config(http=...)``."""
    base = _base_protocol(http)
    limits = {"request_timeout": request_timeout, "max_header_bytes": max_header_bytes}
    return cast(type[asyncio.Protocol], type(f"Guarded{base.__name__}", (RequestDeadlines, base), limits))


def uvicorn_options(config: Config, http: HttpParser = "auto") -> dict[str, Any]:
    """The uvicorn.Config keyword arguments that make the server safe to face clients directly."""
    # limits.request_timeout and limits.max_header_bytes may not exist in Config yet.
    request_timeout = float(getattr(config.limits, "request_timeout", DEFAULT_REQUEST_TIMEOUT))
    max_header_bytes = int(getattr(config.limits, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES))
    return {
        "http": protocol_class(http, request_timeout, max_header_bytes),
        # h11 enforces its own bound on an incomplete head; it answers 400 rather than 431.
        "h11_max_incomplete_event_size": max_header_bytes,
        # X-Forwarded-For from a peer is data to append to, never the client's address.
        "proxy_headers": False,
        # The upstream's own Server and Date headers pass through; uvicorn must not add a second.
        "server_header": False,
        "date_header": False,
    }
