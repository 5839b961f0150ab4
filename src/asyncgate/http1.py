"""A lean HTTP/1.1 client for one origin: pooled asyncio connections, responses parsed by httptools.

Why not aiohttp or httpx: a relay's own work is small, so its HTTP client is most of its cost.
httpx's native transport collapses under concurrency, and aiohttp's client builds a request
object, a multidict, a stream reader and timer handles for every exchange; this client writes
one buffer per request and hands the response's bytes on as they arrive. bench/README.md ("The
upstream client") has the figures behind the choice.

What it does, as a reverse proxy needs: keep-alive with a bounded pool, streaming both ways
with backpressure, Content-Length or chunked request framing, every response framing (length,
chunked, until close, none for HEAD/204/304), interim 1xx answers skipped, a read timeout on
silence, and the connection closed whenever an exchange ends early, so the upstream sees the
client go away.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import cast
from urllib.parse import urlsplit

import httptools

from asyncgate.errors import ConnectFailed, UpstreamError, UpstreamTimeout
from asyncgate.headers import CONTENT_LENGTH_RAW, HOST_RAW, TRANSFER_ENCODING_RAW

RawHeaders = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterable[bytes] | None

#: Buffered response bytes past which the upstream socket stops being read (the client is slow).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: Idle connections older than this are not reused: common servers close theirs after 5 s
#: (uvicorn) or more, and reusing one the server is closing wastes the request.
IDLE_TIMEOUT = 4.0
#: Request methods safe to send again when a reused connection turns out closed before answering.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
#: Methods whose requests carry content: sent with Content-Length: 0 when they have none,
#: since some servers answer 411 to a POST without any length.
_WITH_CONTENT = frozenset({b"POST", b"PUT", b"PATCH"})
#: Framing is the client's to write; a caller's values would contradict it.
_FRAMING = frozenset({CONTENT_LENGTH_RAW, TRANSFER_ENCODING_RAW, HOST_RAW})


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        #: Whether it carried an exchange before this one (a stale keep-alive may be closed).
        self.reused = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for: the stream is out of step and cannot carry another request.
            self.abort()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        if self.response is not None:
            self.response.eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None  # gone: nothing left to pause, resume or abort
        if self.response is not None:
            if exc is None:
                self.response.eof()
            else:
                # A reset is not the end of a body that runs until close: it is a broken answer.
                self.response._fail(UpstreamError(f"the upstream connection broke ({exc.__class__.__name__})"))
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_exception(UpstreamError("the upstream closed the connection"))
        self.pool._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- used by exchanges
    def write(self, *data: bytes) -> None:
        if self.closed:
            raise UpstreamError("the upstream closed the connection")
        assert self.transport is not None
        if len(data) == 1:
            self.transport.write(data[0])
        else:
            self.transport.writelines(data)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is full (the upstream reads slowly)."""
        if self.closed:
            raise UpstreamError("the upstream closed the connection")
        if self._write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """The upstream's answer: status and headers at once, the body as it arrives.

    Read the body with ``chunks()`` (or take it whole with ``buffered()`` once ``complete``),
    then ``release()``: a connection whose response was read to the end goes back to the pool,
    any other is closed.
    """

    status: int
    raw_headers: RawHeaders

    def __init__(self, connection: _Connection, head_only: bool, read_timeout: float | None) -> None:
        self._connection = connection
        self._head_only = head_only
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._headers: RawHeaders = []
        self._interim = False
        self._has_head = False
        self._until_close = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()
        self._released = False
        #: The task sending a streamed request body, while it runs.
        self.writer: asyncio.Task[None] | None = None
        #: Every byte of the answer has arrived.
        self.complete = False
        #: Whether any byte of the answer arrived (a reused connection closed before any may be retried).
        self.started = False
        self.keep_alive = False

    # -- fed by the connection
    def feed(self, data: bytes) -> None:
        self.started = True
        self._last_activity = self._loop.time()
        if self.complete:
            # More than the one answer asked for: never reuse this connection.
            self.keep_alive = False
            self._connection.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # on_message_begin refused a second answer in the same read: the one asked for is
            # whole, but the stream is out of step and cannot carry another request.
            self.keep_alive = False
            self._connection.abort()
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the upstream switched protocols, which a relay cannot follow"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the upstream's answer is not valid HTTP/1.1 ({exc.__class__.__name__})"))

    def eof(self) -> None:
        if self.complete or self._error is not None:
            return
        if self._has_head and self._until_close:
            # A body delimited by the end of the connection: the end has come.
            self._finish(keep_alive=False)
        else:
            self._fail(UpstreamError("the upstream closed the connection before its answer ended"))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise UpstreamError("the upstream sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._has_head:  # trailers, after a chunked body, are not relayed
            # llhttp leaves the whitespace after a value on it; it is not part of the value
            # (RFC 9110 5.5), and h11 refuses to send a value that ends with it.
            self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self._has_head:
            return
        status = self._parser.get_status_code()
        if status < 200:
            # 100 Continue, 103 Early Hints: interim answers, not the response.
            self._interim = True
            self._headers = []
            return
        self.status = status
        self.raw_headers = self._headers
        self._has_head = True
        if self._head_only:
            # No body follows an answer to HEAD, whatever its Content-Length says.
            self._finish(keep_alive=self._parser.should_keep_alive())
            return
        self._until_close = status not in (204, 304) and not _has_framing(self._headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            # A body after an answer to HEAD: not relayed, and the connection is not reused.
            self.keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._connection.transport is not None:
            self._reading_paused = True
            self._connection.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.complete:
            self._finish(keep_alive=self._parser.should_keep_alive())

    # -- state
    def _finish(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._connection.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something arrives, the answer ends or fails, or the read timeout passes in silence."""
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        if self._read_timeout is not None and self._timer is None:
            self._timer = self._loop.call_at(self._last_activity + self._read_timeout, self._check_silence)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _check_silence(self) -> None:
        self._timer = None
        if self._waiter is None or self.complete or self._error is not None:
            return
        assert self._read_timeout is not None
        due = self._last_activity + self._read_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_silence)
        else:
            self._fail(UpstreamTimeout(f"the upstream was silent for {self._read_timeout:g} s"))

    def touch(self) -> None:
        """Count request bytes sent as activity: an upstream still reading a long upload is not silent."""
        self._last_activity = self._loop.time()

    # -- for the caller
    async def head(self) -> None:
        while not self._has_head:
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises UpstreamError if the upstream breaks it off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < LOW_WATER:
                    self._reading_paused = False
                    self._last_activity = self._loop.time()
                    if self._connection.transport is not None:
                        self._connection.transport.resume_reading()
                yield chunk
            elif self.complete:
                return
            else:
                await self._wait()

    def buffered(self) -> bytes:
        """The whole body, when ``complete``: no waiting, one buffer."""
        assert self.complete
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        return body

    def release(self) -> None:
        """Give the connection back if the answer was read to the end; otherwise close it."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        writer, self.writer = self.writer, None
        body_sent = writer is None or (writer.done() and not writer.cancelled() and writer.exception() is None)
        if writer is not None and not writer.done():
            # The answer ended before the request did: the rest of the body is not wanted.
            writer.cancel()
        connection = self._connection
        connection.response = None
        # The parser holds this answer's callbacks and the answer its parser: a cycle per upstream
        # call that only the garbage collector would free. Nothing feeds a released answer.
        del self._parser
        if self.complete and self.keep_alive and body_sent and not self._chunks and not connection.closed:
            if self._reading_paused and connection.transport is not None:
                # Paused by a large body taken whole (buffered()): the next answer must be read.
                self._reading_paused = False
                connection.transport.resume_reading()
            connection.pool._put_back(connection)
        else:
            connection.abort()
            connection.pool._put_back(None)

    def close(self) -> None:
        """Drop the connection whatever state the answer is in."""
        self.keep_alive = False
        self.release()


def _has_framing(headers: RawHeaders) -> bool:
    """Whether the body's end is marked (RFC 9112 6.3): by chunked coding last in
    Transfer-Encoding, or by Content-Length when there is no Transfer-Encoding; else it runs
    until the connection closes."""
    codings: bytes | None = None
    length = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == TRANSFER_ENCODING_RAW:
            codings = value if codings is None else codings + b"," + value
        elif lowered == CONTENT_LENGTH_RAW:
            length = True
    if codings is not None:
        return codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return length


def _check_fields(fields: list[bytes]) -> None:
    """Refuse header fields that would split the request: ``fields`` is the head's header
    section as ``name, b": ", value, b"\\r\\n"`` for each field.

    Headers come from a parsed request or from the gateway itself; a CR or LF in one would split
    the request, so it is refused outright rather than trusted. Checked for the whole section at
    once (as many CRs and LFs as fields, no colon in a name) rather than field by field: every
    header of every request passes here (bench S6).
    """
    count = len(fields) // 4
    section = b"".join(fields)
    names = fields[0::4]
    if section.count(b"\n") == count and section.count(b"\r") == count and b":" not in b"".join(names):
        return
    for name, value in zip(names, fields[2::4], strict=True):
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name or b":" in name:
            raise ValueError(f"invalid header field {name!r}")


class ConnectionPool:
    """Keep-alive connections to one origin (``http://host:port`` or ``https://...``), at most ``limit``."""

    def __init__(
        self,
        origin: str,
        *,
        limit: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        address: str | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self._host = parts.hostname
        #: Where to connect, when not to the origin's host (an address checked beforehand);
        #: Host and the TLS server name stay the origin's.
        self._address = address or parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.connect_timeout = connect_timeout
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing = False

    # -- connections
    async def _acquire(self, connect_limit: float) -> _Connection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_TIMEOUT:
                return connection
            connection.abort()
            self._open -= 1
            self._wake_one()
        while self._open >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken and cancelled at once: the turn goes to the next
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if self._idle:
                return await self._acquire(connect_limit)
        self._open += 1
        try:
            return await self._connect(connect_limit)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, limit: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    self._address,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to the upstream took longer than {limit:g} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to the upstream ({exc.__class__.__name__})") from exc
        return connection

    def _put_back(self, connection: _Connection | None) -> None:
        """A connection comes back after its exchange: kept if it may carry another, else counted out."""
        if connection is not None and not self._closing and not connection.closed:
            connection.reused = True
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            if connection is not None:
                connection.abort()
            self._open -= 1
        self._wake_one()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed by the other end while idle leaves the pool."""
        if connection.response is None and connection in self._idle:
            self._idle.remove(connection)
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closing = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()
            self._open -= 1

    # -- exchanges
    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: Body = None,
        *,
        content_length: int | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Response:
        """Send a request and return once the answer's status and headers are in.

        ``body`` is bytes (sent with Content-Length) or an async iterable of chunks (sent with
        ``content_length`` when the caller knows it, chunked otherwise). The caller must read the
        response and ``release()`` it. ``read_timeout`` bounds each silence of the upstream
        (None: no bound; a caller may bound the whole exchange instead). A reused connection
        found closed before any answer is replaced once, for idempotent methods with a body that
        can be sent again.
        """
        head = self._head(method, target, headers, body, content_length)
        retry = method in _IDEMPOTENT and not isinstance(body, AsyncIterable)
        connect_limit = self.connect_timeout if connect_timeout is None else connect_timeout
        while True:
            connection = await self._acquire(connect_limit)
            response = Response(connection, method == b"HEAD", read_timeout)
            connection.response = response
            try:
                await self._exchange(connection, response, head, body, content_length)
            except UpstreamTimeout:
                raise  # the upstream took the request and is slow: sending it again would only double the wait
            except UpstreamError:
                # A keep-alive connection the server closed as the request went out: nothing
                # was answered, so a request that may be sent twice goes out on a fresh one.
                if retry and connection.reused and not response.started:
                    retry = False
                    continue
                raise
            return response

    def _head(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: Body,
        content_length: int | None,
    ) -> bytes:
        if not target.startswith(b"/") and target != b"*" or b" " in target or b"\r" in target or b"\n" in target:
            raise ValueError(f"invalid request target {target!r}")
        parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", self.host_header, b"\r\n"]
        start = len(parts)
        for name, value in headers:
            if name.lower() not in _FRAMING:
                parts += (name, b": ", value, b"\r\n")
        _check_fields(parts[start:])
        if isinstance(body, bytes):
            parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        elif body is not None:
            if content_length is not None:
                parts += (b"Content-Length: ", str(content_length).encode(), b"\r\n")
            else:
                parts.append(b"Transfer-Encoding: chunked\r\n")
        elif method in _WITH_CONTENT:
            parts.append(b"Content-Length: 0\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _exchange(
        self, connection: _Connection, response: Response, head: bytes, body: Body, content_length: int | None
    ) -> None:
        try:
            if body is None:
                connection.write(head)
            elif isinstance(body, bytes):
                connection.write(head, body)
            else:
                connection.write(head)
                # The upstream may answer before it has read the whole body (a 413, say), so the
                # body is sent beside the wait for the answer, not before it.
                response.writer = asyncio.create_task(_send_body(connection, response, body, content_length))
            await response.head()
        except BaseException:
            response.close()
            raise


async def _send_body(
    connection: _Connection, response: Response, body: AsyncIterable[bytes], content_length: int | None
) -> None:
    """Send a streamed body: chunked, or exactly the ``content_length`` bytes the head declared
    (more would reach the upstream as the start of another request, fewer would leave it waiting)."""
    sent = 0
    try:
        async for chunk in body:
            if not chunk:
                continue
            if content_length is None:
                connection.write(b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                sent += len(chunk)
                if sent > content_length:
                    # The connection is cut before the upstream misreads the rest as another request.
                    too_long = f"the request body is longer than its Content-Length ({content_length})"
                    response._fail(UpstreamError(too_long))
                    return
                connection.write(chunk)
            response.touch()
            await connection.drain()
        if content_length is None:
            connection.write(b"0\r\n\r\n")
        elif sent != content_length:
            response._fail(UpstreamError(f"the request body ended at {sent} of its {content_length} bytes"))
    except UpstreamError:
        return  # the answer side reports the broken connection
    except BaseException as exc:
        # The client's body failed (it went away): the upstream must not take half a request
        # as whole, so the connection is cut, and the waiting side learns why.
        response._fail(exc if isinstance(exc, Exception) else UpstreamError("the request body was cut off"))
        if not isinstance(exc, Exception):
            raise
