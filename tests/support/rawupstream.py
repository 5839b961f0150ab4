"""An upstream on raw sockets that answers each request with exact bytes, for framing tests.

Each request's path names a script (``/s/<name>/...``): the bytes to answer with, whether to read
the request body first, and what to do after (keep the connection, close it, reset it, or stall).
Every request received is recorded with its raw head fields and body, so a test can compare what
reached the upstream directly with what reached it through the gateway.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import socketserver
import struct
import threading
import time
from typing import Literal, TypedDict, Unpack

Fields = list[tuple[bytes, bytes]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclasses.dataclass
class Received:
    method: bytes
    target: bytes
    version: bytes
    headers: Fields
    body: bytes
    trailers: Fields


@dataclasses.dataclass(frozen=True)
class Step:
    """Bytes to send, then a pause (the one sleep a test may hold: it is the behaviour under test)."""

    data: bytes
    pause: float = 0.0


Then = Literal["keep", "close", "reset", "stall"]


class ScriptOptions(TypedDict, total=False):
    """Script's fields after its steps, for answer()."""

    read_body: bool
    then: Then
    interim: bytes
    stall: float


@dataclasses.dataclass(frozen=True)
class Script:
    """How the upstream answers one request."""

    #: The answer, as pieces sent one after the other.
    steps: tuple[Step, ...]
    #: Read the whole request body before answering (False: answer first, then read it).
    read_body: bool = True
    #: After the answer: "keep" the connection, "close" it, "reset" it (RST), or "stall" then close.
    then: Then = "keep"
    #: Interim bytes (a 100 Continue) sent after the head, before the body is read.
    interim: bytes = b""
    #: Seconds a "stall" lasts before the connection is closed.
    stall: float = 1.5


def answer(data: bytes, **options: Unpack[ScriptOptions]) -> Script:
    return Script((Step(data),), **options)


class _Stream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self.fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self.fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def fields(self) -> Fields | None:
        fields: Fields = []
        while True:
            line = self.line()
            if line is None:
                return None
            if not line:
                return fields
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))


def _value(fields: Fields, name: bytes) -> bytes | None:
    for field, value in fields:
        if field.lower() == name:
            return value
    return None


class RawUpstream:
    """A threaded server on 127.0.0.1 and a free port; ``scripts`` maps a name to its Script."""

    def __init__(self, scripts: dict[str, Script] | None = None) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.received: list[Received] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, marker: bytes) -> list[Received]:
        with self._lock:
            return [r for r in self.received if marker in r.target]

    def _script(self, target: bytes) -> Script:
        path = re.sub(rb"^https?://[^/]*", b"", target)  # an absolute-form target names a path too
        parts = path.split(b"?", 1)[0].split(b"/")
        if len(parts) > 2 and parts[1] == b"s":
            found = self.scripts.get(parts[2].decode("latin-1"))
            if found is not None:
                return found
        return answer(OK)

    def _serve(self, sock: socket.socket) -> None:
        stream = _Stream(sock)
        try:
            while self._exchange(sock, stream):
                pass
        finally:
            sock.close()

    def _exchange(self, sock: socket.socket, stream: _Stream) -> bool:
        line = stream.line()
        while line == b"":  # stray CRLF between requests
            line = stream.line()
        if line is None:
            return False
        method, target, version = (line.split(b" ", 2) + [b"", b""])[:3]
        headers = stream.fields()
        if headers is None:
            return False
        script = self._script(target)
        if script.interim:
            sock.sendall(script.interim)
        body: tuple[bytes, Fields] | None = (b"", [])
        if script.read_body:
            body = _read_body(stream, headers)
            if body is None:
                return False
        received = Received(method, target, version, headers, *(body or (b"", [])))
        with self._lock:
            self.received.append(received)
        steps = script.steps
        if method == b"HEAD" and len(steps) == 1 and b"\r\n\r\n" in steps[0].data:
            # The same answer as to GET, without its body, as HEAD asks (RFC 9110 9.3.2).
            steps = (Step(_without_body(steps[0].data)),)
        try:
            for step in steps:
                sock.sendall(step.data)
                if step.pause:
                    time.sleep(step.pause)
        except OSError:
            return False
        if not script.read_body:
            late = _read_body(stream, headers)
            if late is not None:
                received.body, received.trailers = late
        if script.then == "keep":
            return version == b"HTTP/1.1" and (_value(headers, b"connection") or b"").lower() != b"close"
        if script.then == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif script.then == "stall":
            time.sleep(script.stall)
        return False


def _without_body(answer: bytes) -> bytes:
    """The response head in ``answer``, without the body after it."""
    return answer[: answer.index(b"\r\n\r\n") + 4]


def _read_body(stream: _Stream, headers: Fields) -> tuple[bytes, Fields] | None:
    coding = _value(headers, b"transfer-encoding")
    if coding is not None and coding.lower().endswith(b"chunked"):
        body = b""
        while True:
            line = stream.line()
            if line is None:
                return None
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                trailers = stream.fields()
                return (body, trailers) if trailers is not None else None
            data = stream.exact(size)
            if data is None or stream.exact(2) is None:
                return None
            body += data
    length = _value(headers, b"content-length")
    if length:
        data = stream.exact(int(length))
        return None if data is None else (data, [])
    return b"", []
