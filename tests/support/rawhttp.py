"""A raw HTTP/1.x client for tests: exact bytes out, responses read by RFC 9112's framing rules.

It reports what a strict client sees: each interim (1xx) answer, the final status line, every
header field in order with its raw bytes, the body as the framing delimits it, trailers, how the
body was framed, and whether the connection was closed afterwards.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Sequence

Fields = list[tuple[bytes, bytes]]

#: Statuses whose responses never carry a body (RFC 9112 6.3).
NO_BODY = frozenset({204, 304})


class Broken(Exception):
    """The response was cut off or is not valid HTTP/1.x."""


@dataclasses.dataclass
class RawResponse:
    version: bytes
    status: int
    reason: bytes
    headers: Fields
    body: bytes = b""
    #: "length", "chunked", "close" (until the connection closed) or "none".
    framing: str = "none"
    trailers: Fields = dataclasses.field(default_factory=list)
    interim: list[RawResponse] = dataclasses.field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [value for field, value in self.headers if field.lower() == name]

    def first(self, name: bytes) -> bytes | None:
        found = self.values(name)
        return found[0] if found else None

    @property
    def closes(self) -> bool:
        """Whether this response says the connection ends with it."""
        tokens = {t.strip().lower() for v in self.values(b"connection") for t in v.split(b",")}
        return (
            b"close" in tokens
            or self.framing == "close"
            or (self.version == b"HTTP/1.0" and b"keep-alive" not in tokens)
        )


class RawConnection:
    """One client connection; ``send`` bytes, ``read_response`` for each request sent."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.eof = False
        self.reset = False
        #: The response being read when the body broke off: its head, with ``body`` as received.
        self.partial: RawResponse | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False at end of stream (a reset counts as an end, and is recorded)."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise Broken("the connection ended inside a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            if not self._fill(deadline):
                short = size - len(self.buffer)
                if self.partial is not None:
                    self.partial.body += self.buffer
                    self.buffer = b""
                raise Broken(f"the connection ended {short} bytes short")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fields(self, deadline: float) -> Fields:
        fields: Fields = []
        while line := self._line(deadline):
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise Broken(f"not a header field: {line!r}")
            fields.append((name, value.strip(b" \t")))
        return fields

    def _head(self, deadline: float) -> RawResponse:
        if not self.buffer and not self._fill(deadline):
            raise Broken("the connection closed before a response")
        line = self._line(deadline)
        parts = line.split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.0", b"HTTP/1.1") or not parts[1].isdigit():
            raise Broken(f"not a status line: {line!r}")
        return RawResponse(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else b"", self._fields(deadline))

    def read_response(self, method: bytes = b"GET", timeout: float | None = None) -> RawResponse:
        """The next final response, its interim ones in ``interim``; framing as RFC 9112 6.3 says."""
        deadline = time.monotonic() + (timeout or self.timeout)
        interim: list[RawResponse] = []
        while True:
            response = self._head(deadline)
            if response.status >= 200 or response.status == 101:
                break
            interim.append(response)
        response.interim = interim
        self.partial = response  # what a Broken body leaves: the head, and the body so far
        self._body(response, method, deadline)
        self.partial = None
        return response

    def await_continue(self, method: bytes, wait: float = 1.0) -> RawResponse | None:
        """After a head with ``Expect: 100-continue``, what a client waits for before its body.

        A 100 Continue (send the body now), None when nothing came within ``wait`` (send it
        anyway, as curl does), or the final response (the body is not wanted: do not send it).
        """
        try:
            if not self.buffer and not self._fill(time.monotonic() + wait):
                raise Broken("the connection closed before a response")
        except TimeoutError:
            return None
        deadline = time.monotonic() + self.timeout
        response = self._head(deadline)
        if response.status == 100:
            return response
        if response.status < 200:
            final = self.read_response(method)
            final.interim.insert(0, response)
            return final
        self._body(response, method, deadline)
        return response

    def _body(self, response: RawResponse, method: bytes, deadline: float) -> None:
        codings = b",".join(response.values(b"transfer-encoding"))
        lengths = response.values(b"content-length")
        if method == b"HEAD" or response.status in NO_BODY or response.status < 200:
            response.framing = "none"
        elif codings:
            if codings.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                raise Broken(f"Transfer-Encoding without chunked last: {codings!r}")
            response.framing = "chunked"
            response.trailers = self._chunked(deadline, response)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise Broken(f"invalid Content-Length {lengths!r}")
            response.framing = "length"
            response.body = self._exact(int(lengths[0]), deadline)
        else:
            response.framing = "close"
            while self._fill(deadline):
                pass
            if self.reset:
                raise Broken("a close-delimited body ended by a reset")
            response.body, self.buffer = self.buffer, b""

    def _chunked(self, deadline: float, into: RawResponse) -> Fields:
        """Read a chunked body into ``into.body`` (as far as it goes); the trailers."""
        while True:
            size_line = self._line(deadline).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise Broken(f"not a chunk size: {size_line!r}") from None
            if size == 0:
                return self._fields(deadline)
            self.partial = None  # _exact must not add the buffer: the chunk goes in whole or not
            try:
                into.body += self._exact(size, deadline)
            finally:
                self.partial = into
            if self._exact(2, deadline) != b"\r\n":
                raise Broken("a chunk not followed by CRLF")

    def closed_cleanly(self, timeout: float = 2.0) -> bool:
        """Whether the server closed the connection (FIN, nothing more sent) within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return not self.buffer

    def still_serves(self, path: bytes = b"/", host: bytes = b"x", timeout: float = 5.0) -> bool:
        """Whether the connection answers one more request (the buffer must be empty first)."""
        if self.buffer or self.eof:
            return False
        try:
            self.send(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            response = self.read_response(timeout=timeout)
        except (OSError, Broken, TimeoutError):
            return False
        return response.status < 500 or response.status == 501


def request(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request's bytes exactly as given: no field added, not even Host."""
    head = [method + b" " + target + b" " + version]
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
