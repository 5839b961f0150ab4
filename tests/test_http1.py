"""The upstream HTTP/1.1 client against scripted servers on real sockets.

Each server parses requests with h11 (an independent implementation) and answers with exact
bytes, so framing on both sides is checked against something other than the client itself.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest

from asyncgate.errors import UpstreamError, UpstreamTimeout
from asyncgate.http1 import HIGH_WATER, ConnectionPool, Response

WAIT = 5.0


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Script:
    """A server: ``answer(seen, connection_number, request_number)`` gives the raw bytes to send
    back (None: close without answering)."""

    answer: Callable[[Seen, int, int], Awaitable[bytes | None]]
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    close_after_answer: bool = False


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    script.connections += 1
    number = script.connections
    script.open_now += 1
    script.most_open = max(script.most_open, script.open_now)
    parser = h11.Connection(h11.SERVER)
    served = 0
    try:
        while True:
            seen = await _read_request(parser, reader)
            if seen is None:
                return
            script.requests.append(seen)
            served += 1
            data = await script.answer(seen, number, served)
            if data is None:
                return
            writer.write(data)
            await writer.drain()
            if script.close_after_answer:
                return
            # The answers are raw bytes h11 never saw, so each request gets a fresh parser.
            parser = h11.Connection(h11.SERVER)
    except (ConnectionError, h11.RemoteProtocolError):
        return
    finally:
        script.open_now -= 1
        writer.close()


async def _read_request(parser: h11.Connection, reader: asyncio.StreamReader) -> Seen | None:
    request: h11.Request | None = None
    body = b""
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            parser.receive_data(data)
            if not data and request is None:
                return None
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return Seen(request.method, request.target, [(k, v) for k, v in request.headers], body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def server(answer: Callable[[Seen, int, int], Awaitable[bytes | None]]) -> tuple[Script, asyncio.Server, str]:
    script = Script(answer)
    srv = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    return script, srv, f"http://127.0.0.1:{port}"


def fixed(data: bytes) -> Callable[[Seen, int, int], Awaitable[bytes | None]]:
    async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
        return data

    return answer


def pool_for(origin: str, limit: int = 8) -> ConnectionPool:
    return ConnectionPool(origin, limit=limit, connect_timeout=2.0)


async def read_all(response: Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.chunks()])
    finally:
        response.release()


CHUNKED_WITH_TRAILER = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
)
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def test_keep_alive_reuses_one_connection_and_writes_a_clean_head() -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(OK_HELLO))
        pool = pool_for(origin)
        headers = [(b"accept", b"*/*"), (b"host", b"client.example"), (b"content-length", b"99")]
        for _ in range(3):
            response = await pool.request(b"GET", b"/a%20b?x=1", headers)
            assert response.status == 200
            assert (b"Content-Type", b"text/plain") in response.raw_headers
            assert await read_all(response) == b"hello"
        assert script.connections == 1
        seen = script.requests[0]
        assert (seen.method, seen.target) == (b"GET", b"/a%20b?x=1")
        # Host is the upstream's; a caller's framing fields never reach the wire.
        assert seen.headers == [(b"host", origin.removeprefix("http://").encode()), (b"accept", b"*/*")]
        await pool.close()
        srv.close()

    run(test)


def test_bytes_body_goes_with_content_length_and_post_without_body_says_zero() -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(OK_HELLO))
        pool = pool_for(origin)
        await read_all(await pool.request(b"POST", b"/p", [(b"transfer-encoding", b"chunked")], b"x" * 70000))
        await read_all(await pool.request(b"POST", b"/p", [], None))
        assert script.requests[0].body == b"x" * 70000
        assert (b"content-length", b"70000") in script.requests[0].headers
        assert all(name != b"transfer-encoding" for name, _ in script.requests[0].headers)
        assert (b"content-length", b"0") in script.requests[1].headers
        await pool.close()
        srv.close()

    run(test)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def test_streamed_body_is_chunked_without_a_length_and_raw_with_one() -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(OK_HELLO))
        pool = pool_for(origin)
        await read_all(await pool.request(b"PUT", b"/u", [], _chunks(b"ab", b"", b"cde")))
        await read_all(await pool.request(b"PUT", b"/u", [], _chunks(b"ab", b"cde"), content_length=5))
        first, second = script.requests
        assert first.body == second.body == b"abcde"
        assert (b"transfer-encoding", b"chunked") in first.headers
        assert (b"content-length", b"5") in second.headers
        assert script.connections == 1
        await pool.close()
        srv.close()

    run(test)


@pytest.mark.parametrize(
    ("raw", "body", "reusable"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", b"", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + OK_HELLO, b"hello", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    ],
    ids=["chunked-with-trailer", "204-ignores-length", "interim-answers-skipped", "connection-close", "http-1.0"],
)
def test_response_framings(raw: bytes, body: bytes, reusable: bool) -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(raw))
        pool = pool_for(origin)
        for _ in range(2):
            response = await pool.request(b"GET", b"/", [])
            assert response.status in (200, 204)
            assert all(name not in (b"X-T", b"Link") for name, _ in response.raw_headers)
            assert await read_all(response) == body
        assert script.connections == (1 if reusable else 2)
        await pool.close()
        srv.close()

    run(test)


def test_body_until_close_ends_at_the_close() -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"))
        script.close_after_answer = True
        pool = pool_for(origin)
        for _ in range(2):
            assert await read_all(await pool.request(b"GET", b"/", [])) == b"until the end"
        # Such a connection carries one answer only.
        assert script.connections == 2
        await pool.close()
        srv.close()

    run(test)


def test_head_answer_ends_at_its_headers_and_the_connection_is_reused() -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"))
        pool = pool_for(origin)
        for _ in range(2):
            response = await pool.request(b"HEAD", b"/", [])
            assert response.complete
            assert (b"Content-Length", b"1000") in response.raw_headers
            assert await read_all(response) == b""
        assert script.connections == 1
        await pool.close()
        srv.close()

    run(test)


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b"garbage\r\n\r\n", b""],
    ids=["cut-mid-body", "not-http", "closed-before-answer"],
)
def test_broken_answers_raise_upstream_error(raw: bytes) -> None:
    async def test() -> None:
        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            return raw or None

        script, srv, origin = await server(answer)
        script.close_after_answer = True
        pool = pool_for(origin)
        with pytest.raises(UpstreamError):
            response = await pool.request(b"GET", b"/", [])
            # The status arrived; the body breaks off when the server closes mid-way.
            await read_all(response)
        await pool.close()
        srv.close()

    run(test)


def test_stale_keep_alive_is_retried_for_get_and_not_for_post() -> None:
    async def test() -> None:
        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            # Each connection answers once, then closes on the next request without a word:
            # what a server does when its keep-alive timer fires as a request goes out.
            return OK_HELLO if request == 1 else None

        script, srv, origin = await server(answer)
        pool = pool_for(origin)
        assert await read_all(await pool.request(b"GET", b"/", [])) == b"hello"
        assert await read_all(await pool.request(b"GET", b"/", [])) == b"hello"
        assert script.connections == 2
        with pytest.raises(UpstreamError):
            await pool.request(b"POST", b"/", [], b"once")
        # The POST went out once, on the stale connection, and was not sent again.
        assert [seen.method for seen in script.requests].count(b"POST") == 1
        assert script.connections == 2
        await pool.close()
        srv.close()

    run(test)


def test_read_timeout_on_silence() -> None:
    async def test() -> None:
        never = asyncio.Event()

        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            await never.wait()
            return None

        _, srv, origin = await server(answer)
        pool = pool_for(origin)
        with pytest.raises(UpstreamTimeout):
            await pool.request(b"GET", b"/", [], read_timeout=0.2)
        never.set()
        await pool.close()
        srv.close()

    run(test)


def test_read_timeout_on_a_reused_connection_is_not_retried() -> None:
    """A silent upstream took the request: a GET is sent again only when a stale connection dropped it."""

    async def test() -> None:
        never = asyncio.Event()

        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            if request == 1 and connection == 1:
                return OK_HELLO
            await never.wait()
            return None

        script, srv, origin = await server(answer)
        pool = pool_for(origin)
        assert await read_all(await pool.request(b"GET", b"/", [])) == b"hello"
        with pytest.raises(UpstreamTimeout):
            await pool.request(b"GET", b"/slow", [], read_timeout=0.2)
        assert [seen.target for seen in script.requests] == [b"/", b"/slow"]
        assert script.connections == 1
        never.set()
        await pool.close()
        srv.close()

    run(test)


def test_refused_connection_is_an_upstream_error() -> None:
    async def test() -> None:
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        pool = pool_for(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.request(b"GET", b"/", [])

    run(test)


def test_slow_reader_pauses_the_upstream_socket() -> None:
    size = 8 * 1024 * 1024

    async def test() -> None:
        _, srv, origin = await server(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size))
        pool = pool_for(origin)
        response = await pool.request(b"GET", b"/big", [])
        deadline = asyncio.get_running_loop().time() + WAIT
        while not response._reading_paused:
            assert asyncio.get_running_loop().time() < deadline, "the socket was never paused"
            await asyncio.sleep(0.01)
        # Paused: what is held is bounded by the high-water mark plus one read, not the body.
        assert response._buffered < HIGH_WATER + 512 * 1024
        assert len(await read_all(response)) == size
        await pool.close()
        srv.close()

    run(test)


def test_pool_never_opens_more_than_its_limit() -> None:
    async def test() -> None:
        gate = asyncio.Event()

        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            await gate.wait()
            return OK_HELLO

        script, srv, origin = await server(answer)
        pool = pool_for(origin, limit=2)

        async def one() -> bytes:
            return await read_all(await pool.request(b"GET", b"/", []))

        calls = [asyncio.create_task(one()) for _ in range(5)]
        deadline = asyncio.get_running_loop().time() + WAIT
        while len(script.requests) < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        gate.set()
        assert await asyncio.gather(*calls) == [b"hello"] * 5
        assert script.most_open == 2
        await pool.close()
        srv.close()

    run(test)


def test_early_answer_stops_the_upload_and_drops_the_connection() -> None:
    async def test() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await reader.read()  # take what the client still sends until it gives up
            writer.close()

        early = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = pool_for(f"http://127.0.0.1:{early.sockets[0].getsockname()[1]}")

        async def endless() -> AsyncIterator[bytes]:
            while True:
                await asyncio.sleep(0.001)
                yield b"x" * 1024

        response = await pool.request(b"POST", b"/", [], endless())
        assert response.status == 413
        writer = response.writer
        assert writer is not None and not writer.done()
        assert await read_all(response) == b""
        # Released: the rest of the body is not sent, and the connection is not kept.
        await asyncio.wait([writer], timeout=WAIT)
        assert writer.cancelled()
        assert pool._idle == []
        await pool.close()
        early.close()

    run(test)


@pytest.mark.parametrize(
    "field",
    [(b"x-a", b"1\r\nx-b: 2"), (b"x-a", b"1\nx-b: 2"), (b"x-a", b"1\r"), (b"x-a\r\n", b"1"), (b"x:a", b"1")],
)
def test_header_injection_is_refused_naming_the_field(field: tuple[bytes, bytes]) -> None:
    async def test() -> None:
        pool = pool_for("http://127.0.0.1:9")
        # Among sound fields, before and after it.
        headers = [(b"accept", b"*/*"), field, (b"x-z", b"a: b")]
        with pytest.raises(ValueError, match=re.escape(f"invalid header field {field[0]!r}")):
            await pool.request(b"GET", b"/", headers)

    run(test)


def test_target_must_be_a_path() -> None:
    async def test() -> None:
        pool = pool_for("http://127.0.0.1:9")
        for target in (b"http://x/", b"/a b", b"/a\r\n"):
            with pytest.raises(ValueError, match="invalid request target"):
                await pool.request(b"GET", target, [])

    run(test)


def test_a_large_answer_taken_whole_leaves_its_connection_reading() -> None:
    # One byte over the high-water mark: the read that completes the body is the one that
    # pauses the socket, so the answer is whole while reading is paused.
    size = HIGH_WATER + 1

    async def test() -> None:
        big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size

        async def answer(seen: Seen, connection: int, request: int) -> bytes | None:
            return big if seen.target == b"/big" else OK_HELLO

        script, srv, origin = await server(answer)
        pool = pool_for(origin)
        response = await pool.request(b"GET", b"/big", [])
        async with asyncio.timeout(WAIT):
            while not response.complete:
                await response._wait()  # woken by each read
        assert response._reading_paused
        assert len(response.buffered()) == size  # what the proxy does with a complete answer
        response.release()
        # The same connection, back in the pool, must read the next answer.
        assert await read_all(await pool.request(b"GET", b"/small", [], read_timeout=2)) == b"hello"
        assert script.connections == 1
        await pool.close()
        srv.close()

    run(test)


def test_a_reset_does_not_end_a_body_that_runs_until_close() -> None:
    async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"partial": tr')
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        writer.transport.abort()

    async def test() -> None:
        srv = await asyncio.start_server(reset_mid_body, "127.0.0.1", 0)
        pool = pool_for(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        response = await pool.request(b"GET", b"/", [], read_timeout=WAIT)
        with pytest.raises(UpstreamError, match="ConnectionResetError"):
            await read_all(response)
        assert not response.complete
        await pool.close()
        srv.close()

    run(test)


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        (b"GET", OK_HELLO + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<evil>"),
        (b"GET", CHUNKED_WITH_TRAILER.replace(b"abc", b"hel").replace(b"de", b"lo") + OK_HELLO),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ],
    ids=["second-answer-after-length", "second-answer-after-chunked", "body-after-head"],
)
def test_bytes_past_the_answer_in_the_same_read_are_dropped_with_the_connection(method: bytes, raw: bytes) -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(raw))
        pool = pool_for(origin)
        for _ in range(2):
            response = await pool.request(method, b"/", [])
            assert response.status == 200
            assert await read_all(response) == (b"" if method == b"HEAD" else b"hello")
        assert script.connections == 2  # never reused: the stream is out of step
        await pool.close()
        srv.close()

    run(test)


@pytest.mark.parametrize(
    ("parts", "content_length"),
    [((b"hello", b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"), 5), ((b"hel", b"lo"), 10)],
    ids=["longer", "shorter"],
)
def test_a_streamed_body_must_match_its_content_length(parts: tuple[bytes, ...], content_length: int) -> None:
    async def test() -> None:
        script, srv, origin = await server(fixed(OK_HELLO))
        pool = pool_for(origin)
        with pytest.raises(UpstreamError, match="Content-Length|bytes"):
            response = await pool.request(b"POST", b"/upload", [], _chunks(*parts), content_length=content_length)
            await read_all(response)
        # Whatever the upstream read, it never saw bytes past the declared length as a request.
        assert all(seen.target == b"/upload" for seen in script.requests)
        assert [seen.body for seen in script.requests] in ([], [b"hello"])
        await pool.close()
        srv.close()

    run(test)


@pytest.mark.parametrize(
    ("coding", "until_close"), [(b"identity", True), (b"gzip, chunked", False)], ids=["identity", "chunked-last"]
)
def test_transfer_encoding_frames_a_body_only_when_chunked_is_last(coding: bytes, until_close: bool) -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n" if not until_close else b"all of it"

    async def test() -> None:
        script, srv, origin = await server(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n" % coding + body))
        script.close_after_answer = until_close
        pool = pool_for(origin)
        response = await pool.request(b"GET", b"/", [], read_timeout=WAIT)
        assert await read_all(response) == (b"all of it" if until_close else b"hello")
        await pool.close()
        srv.close()

    run(test)
