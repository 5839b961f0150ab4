"""Synchronous pass-through: stream the request to the upstream and its response back, untouched."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from starlette.types import Receive, Scope, Send

from asyncgate.errors import BadGateway, ClientDisconnected, GatewayTimeout, HTTPError, UpstreamError, UpstreamTimeout
from asyncgate.headers import CONTENT_LENGTH_RAW, TRANSFER_ENCODING_RAW, forwarded_headers, raw_target, response_headers
from asyncgate.metrics import Metrics
from asyncgate.responses import send_error
from asyncgate.upstream import Body, Response, Upstream

logger = logging.getLogger("asyncgate.proxy")
#: One line per synchronous request: method, path (never the query), status, time to headers.
access_log = logging.getLogger("asyncgate.access")


def body_framing(scope: Scope) -> tuple[bool, int | None]:
    """Whether the request has a body, and its Content-Length when it gives one."""
    chunked = False
    for name, value in scope["headers"]:
        if name == CONTENT_LENGTH_RAW:
            length = int(value)  # the server parsed it already: one valid value
            return length > 0, length
        if name == TRANSFER_ENCODING_RAW:
            chunked = True
    return chunked, None


async def request_body(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    """The client's body, chunk by chunk as it arrives: never held whole in memory."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class Proxy:
    """An ASGI app relaying every request to the upstream."""

    def __init__(self, upstream: Upstream, metrics: Metrics) -> None:
        self.upstream = upstream
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        upstream = self.upstream
        target = upstream.target(*raw_target(scope))
        body: Body = None
        has_body, length = body_framing(scope)
        if has_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            # A body that came whole in one message (most do) goes out in the request's one write.
            body = request_body(chunk, receive) if message.get("more_body", False) else chunk
        try:
            response = await upstream.request(
                scope["method"].encode("ascii"),
                target,
                forwarded_headers(scope),
                body,
                content_length=length,
                read_timeout=upstream.read_timeout,
            )
        except ClientDisconnected:
            return
        except UpstreamTimeout:
            await self._fail(scope, send, GatewayTimeout("the upstream did not answer in time"), started)
            return
        except UpstreamError as exc:
            logger.warning("upstream unreachable: %s", exc)
            await self._fail(scope, send, BadGateway("the upstream could not be reached"), started)
            return
        try:
            self._done(scope, response.status, started)
            await self._relay(response, send)
        finally:
            response.release()

    def _done(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.sync_request(status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            ms = round(seconds * 1000, 1)
            fields = {"method": scope["method"], "path": scope["path"], "status": status, "duration_ms": ms}
            access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, ms, extra=fields)

    async def _fail(self, scope: Scope, send: Send, error: HTTPError, started: float) -> None:
        self._done(scope, error.status_code, started)
        await send_error(send, error)

    async def _relay(self, response: Response, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers(response.raw_headers),
            }
        )
        if response.complete:
            # The whole answer is in already (most small ones are): one message, no waiting.
            await send({"type": "http.response.body", "body": response.buffered()})
            return
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamError, ClientDisconnected) as exc:
            # The status line is gone already: the only honest signal left is to cut the
            # connection, which the ASGI server does when the response is left incomplete.
            logger.warning("upstream broke off its response: %s", exc.__class__.__name__)
            response.close()
            return
        await send({"type": "http.response.body", "body": b""})
