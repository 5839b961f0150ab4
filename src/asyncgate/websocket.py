"""WebSocket pass-through: the upgrade relayed to the upstream, then both connections spliced.

The gateway does not terminate WebSockets. It takes uvicorn's WebSocket protocol slot
(``uvicorn.Config(ws=...)``, set by ``server.uvicorn_options``): the client's upgrade request
goes to the upstream with the pass-through's header rules (hop-by-hop fields replaced by the
upgrade's own, ``X-Forwarded-*`` set), the upstream's answer comes back byte for byte, and after a
``101`` the two connections are spliced. So everything the two ends negotiate is theirs, end to
end: the subprotocol, the extensions (permessage-deflate included), every frame as it comes,
fragments, pings and pongs, close codes and reasons. Terminating at the gateway (an ASGI app
over a WebSocket library, and a client library to the upstream) could relay messages only:
ASGI has no pings, no fragments and no extensions, and each message would be decoded, copied
and encoded twice.

What the gateway does keep: frame headers are read (never payloads) to bound each message at
``proxy.websocket_max_message_bytes`` (both ends get close code 1009), a connection silent both
ways for ``proxy.websocket_idle_timeout`` is closed (1001), each side is read only as fast as
the other side takes its bytes (backpressure both ways), and a request carrying the async flag
is refused with a 400 JSON error: a WebSocket cannot become a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from starlette.types import Scope

from asyncgate.config import Config
from asyncgate.errors import BadGateway, BadRequest, GatewayTimeout, HTTPError, NotFound
from asyncgate.headers import UPGRADE_RAW, RawHeaders, forwarded_headers
from asyncgate.intake import Limits, RouteLimits, classify
from asyncgate.responses import error_body
from asyncgate.wsframes import FrameMeter, close_frame

logger = logging.getLogger("asyncgate.websocket")

#: Largest upstream answer head to a handshake.
MAX_HEAD_BYTES = 64 * 1024
#: Seconds a closed connection may take to pass on what it holds before it is cut: a peer that
#: reads nothing must not keep it (and a server's shutdown) waiting.
CLOSE_GRACE = 2.0
#: Close codes the gateway sends itself (RFC 6455 7.4.1).
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)

Check = Callable[[Scope], str | None]


def close_soon(transport: asyncio.Transport) -> None:
    """Close ``transport`` once its buffer is written, or cut it after CLOSE_GRACE seconds."""
    if transport.is_closing():
        return
    transport.close()
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)


def parse_head(data: bytes) -> tuple[bytes, bytes, RawHeaders]:
    """Method, target and header fields of a request head as uvicorn hands it over (names lowercased)."""
    lines = data.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers: RawHeaders = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
    return method, target, headers


def _json_response(error: HTTPError) -> bytes:
    """The error as a whole HTTP/1.1 response, written on the raw connection before any app sees it."""
    body = error_body(error.code, error.message)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        error.status_code,
        HTTPStatus(error.status_code).phrase.encode(),
        len(body),
    )
    return head + body


@dataclasses.dataclass(frozen=True)
class TunnelSettings:
    """What a tunnel needs of the gateway's configuration, read once."""

    host: str
    port: int
    host_header: bytes
    base_path: bytes
    ssl: ssl.SSLContext | None
    prefix: str
    #: The limits intake would apply: a route policy's (which may make a request async unasked), else the gateway's.
    limits_for: Callable[[Scope], Limits]
    check: Check
    connect_timeout: float
    read_timeout: float
    max_message: int
    idle_timeout: float


class _Upstream(asyncio.Protocol):
    """The upstream side of a tunnel: its bytes go to the tunnel."""

    def __init__(self, tunnel: WebSocketTunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tunnel.upstream_lost()

    def pause_writing(self) -> None:
        self.tunnel.client.pause_reading()  # the upstream reads slowly: so does the gateway

    def resume_writing(self) -> None:
        if not self.tunnel.client.is_closing():
            self.tunnel.client.resume_reading()


class WebSocketTunnel(asyncio.Protocol):
    """uvicorn's WebSocket protocol slot: one client connection whose upgrade is relayed.

    Built per gateway by ``tunnel_protocol(config)``; uvicorn creates one per upgrade request and
    hands it the request head as its first data.
    """

    gateway: ClassVar[TunnelSettings]

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.server_state = server_state
        self.client: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: _Upstream | None = None
        #: After the upstream's 101: frames flow both ways.
        self.open = False
        #: After an answer other than 101: its body goes to the client, then both connections end.
        self.refused_by_upstream = False
        self._refusal_left: int | None = None
        self.closing = False
        self.client_lost = False
        self._head = b""
        self._task: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[None] = self.loop.create_future()
        self._answer_head = b""
        self._to_upstream = FrameMeter(self.gateway.max_message)
        self._to_client = FrameMeter(self.gateway.max_message)
        self._last = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # -- the client's connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport  # type: ignore[assignment]
        # Listed until both connections are gone, so a server's shutdown waits for both.
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # the gateway ended this WebSocket; what the client still sends goes nowhere
        if self.open:
            self._last = self.loop.time()
            cut = self._to_upstream.feed(data)
            if cut is None:
                self._write_upstream(data)
            else:
                self._write_upstream(data[:cut])
                self._close_both(MESSAGE_TOO_BIG, f"a client message over {self.gateway.max_message} bytes")
        elif self._task is None:
            # uvicorn hands the whole request head over in one call.
            self._task = self.loop.create_task(self._handshake(data))
        else:
            # Frames before the upstream's 101 are not the client's to send: held until then.
            self._head += data
            self.client.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        self._forget_if_done()
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.upstream is not None and self.upstream.transport is not None:
            # The client went away: the upstream learns it the same way, by the connection's end.
            close_soon(self.upstream.transport)

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()  # the client reads slowly: so does the gateway

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def shutdown(self) -> None:
        """The server stops: both ends are told the gateway is going away."""
        if self.open:
            self._close_both(GOING_AWAY, "the gateway is shutting down")
        else:
            close_soon(self.client)

    # -- the upstream's connection
    def from_upstream(self, data: bytes) -> None:
        if self.closing:
            return
        self._last = self.loop.time()
        if self.open:
            cut = self._to_client.feed(data)
            if cut is None:
                self.client.write(data)
            else:
                self.client.write(data[:cut])
                self._close_both(MESSAGE_TOO_BIG, f"an upstream message over {self.gateway.max_message} bytes")
        elif self.refused_by_upstream:
            self._relay_refusal(data)
        else:
            self._answer_head += data
            if b"\r\n\r\n" in self._answer_head or len(self._answer_head) > MAX_HEAD_BYTES:
                if not self._answer.done():
                    self._answer.set_result(None)

    def upstream_lost(self) -> None:
        self._forget_if_done()
        if not self._answer.done():
            self._answer.set_result(None)  # the handshake sees an answer cut short
        elif self.open or self.refused_by_upstream:
            close_soon(self.client)  # once what the upstream sent is written

    def _forget_if_done(self) -> None:
        if self.client_lost and (self.upstream is None or self.upstream.transport is None):
            self.server_state.connections.discard(self)

    # -- the handshake
    async def _handshake(self, data: bytes) -> None:
        try:
            method, target, headers = parse_head(data)
        except ValueError:
            self._refuse(BadRequest("the upgrade request could not be read", code="malformed_request"))
            return
        scope = self._scope(method, target, headers)
        refusal = self._refusal(scope)
        if refusal is not None:
            self._refuse(refusal)
            return
        gateway = self.gateway
        try:
            async with asyncio.timeout(gateway.connect_timeout):
                _, self.upstream = await self.loop.create_connection(
                    lambda: _Upstream(self),
                    gateway.host,
                    gateway.port,
                    ssl=gateway.ssl,
                    server_hostname=gateway.host if gateway.ssl is not None else None,
                )
        except (OSError, TimeoutError) as exc:
            logger.warning("WebSocket upstream unreachable: %s", exc.__class__.__name__)
            self._refuse(BadGateway("the upstream could not be reached"))
            return
        self._write_upstream(self._upstream_head(scope, target, headers))
        try:
            async with asyncio.timeout(gateway.read_timeout):
                await self._answer
        except TimeoutError:
            self._refuse(GatewayTimeout("the upstream did not answer in time"))
            return
        self._relay_answer()

    def _scope(self, method: bytes, target: bytes, headers: RawHeaders) -> Scope:
        path, _, query = target.partition(b"?")
        return {
            "type": "websocket",
            "method": method.decode("latin-1"),
            "http_version": "1.1",
            "raw_path": path,
            "path": unquote(path.decode("latin-1")),
            "query_string": query,
            "headers": headers,
            "client": self.client.get_extra_info("peername"),
            "scheme": "wss" if self.client.get_extra_info("sslcontext") is not None else "ws",
        }

    def _refusal(self, scope: Scope) -> HTTPError | None:
        gateway = self.gateway
        problem = gateway.check(scope)
        if problem is not None:
            return BadRequest(problem, code="malformed_request")
        if not scope["raw_path"].startswith(b"/"):
            return BadRequest("the request target must be a path", code="invalid_target")
        path: str = scope["path"]
        if path == gateway.prefix or path.startswith(gateway.prefix + "/"):
            return NotFound("the gateway's own API has no WebSocket endpoint")
        try:
            intent = classify(scope, gateway.limits_for(scope))
        except HTTPError as error:
            return error
        if intent is not None:
            return BadRequest("a WebSocket cannot be asynchronous: drop the async flag", code="websocket_not_async")
        return None

    def _refuse(self, error: HTTPError) -> None:
        if not self.client.is_closing():
            self.client.write(_json_response(error))
            close_soon(self.client)
        if self.upstream is not None and self.upstream.transport is not None:
            close_soon(self.upstream.transport)

    def _upstream_head(self, scope: Scope, target: bytes, headers: RawHeaders) -> bytes:
        gateway = self.gateway
        upgrade = next((value for name, value in headers if name == UPGRADE_RAW), b"websocket")
        parts = [b"GET ", gateway.base_path, target, b" HTTP/1.1\r\nHost: ", gateway.host_header, b"\r\n"]
        for name, value in forwarded_headers(scope):
            parts += (name, b": ", value, b"\r\n")
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
        return b"".join(parts)

    def _relay_answer(self) -> None:
        answer = self._answer_head
        head_end = answer.find(b"\r\n\r\n")
        if head_end < 0:
            self._refuse(BadGateway("the upstream broke off its answer"))
            return
        self._answer_head = b""
        if answer[9:12] != b"101":
            # A refusal (403, 404...) goes back as the upstream gave it; both connections end
            # once its body is through (or when the upstream ends it, or falls silent).
            self.refused_by_upstream = True
            length = _CONTENT_LENGTH.search(answer, 0, head_end + 2)
            self._refusal_left = int(length.group(1)) if length is not None else None
            self.client.write(answer[: head_end + 4])
            self._relay_refusal(answer[head_end + 4 :])
            self._arm_idle()
            return
        self.client.write(answer[: head_end + 4])
        self.open = True
        if len(answer) > head_end + 4:
            self.from_upstream(answer[head_end + 4 :])  # frames that came with the 101
        held, self._head = self._head, b""
        if held:
            self.data_received(held)
        self.client.resume_reading()
        self._arm_idle()

    def _relay_refusal(self, data: bytes) -> None:
        if self._refusal_left is not None:
            data = data[: self._refusal_left]
            self._refusal_left -= len(data)
        if data:
            self.client.write(data)
        if self._refusal_left == 0:
            self._end()

    def _end(self) -> None:
        self.closing = True
        close_soon(self.client)
        if self.upstream is not None and self.upstream.transport is not None:
            close_soon(self.upstream.transport)

    # -- relaying
    def _write_upstream(self, data: bytes) -> None:
        if data and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def _close_both(self, code: int, why: str) -> None:
        if self.closing:
            return
        self.closing = True
        logger.info("closing a WebSocket with code %d: %s", code, why)
        self.open = False
        if not self.client.is_closing():
            self.client.write(close_frame(code, masked=False))
            close_soon(self.client)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(close_frame(code, masked=True))
            close_soon(self.upstream.transport)

    def _arm_idle(self) -> None:
        self._timer = self.loop.call_at(self._last + self.gateway.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._timer = None
        if self.closing:
            return
        if self.loop.time() < self._last + self.gateway.idle_timeout:
            self._arm_idle()
        elif self.open:
            self._close_both(GOING_AWAY, f"no frame either way for {self.gateway.idle_timeout:g}s")
        else:
            self._end()  # the upstream's refusal stalled mid-body


def tunnel_protocol(config: Config, check: Check) -> type[WebSocketTunnel]:
    """The WebSocket protocol class for ``uvicorn.Config(ws=...)``, relaying to ``config.upstream``;
    ``check`` says why a request head could be misread (``server.request_problem``)."""
    parts = urlsplit(config.upstream)
    secure = parts.scheme == "https"
    settings = TunnelSettings(
        host=parts.hostname or "",
        port=parts.port or (443 if secure else 80),
        host_header=parts.netloc.rpartition("@")[2].encode("idna"),
        base_path=parts.path.rstrip("/").encode("latin-1"),
        ssl=ssl.create_default_context() if secure else None,
        prefix=config.server.prefix,
        limits_for=RouteLimits(config),
        check=check,
        connect_timeout=config.proxy.connect_timeout,
        read_timeout=config.proxy.read_timeout,
        max_message=config.proxy.websocket_max_message_bytes,
        idle_timeout=config.proxy.websocket_idle_timeout,
    )
    return type("WebSocketTunnel", (WebSocketTunnel,), {"gateway": settings})
