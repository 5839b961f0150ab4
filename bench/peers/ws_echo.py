"""The WebSocket scenario's upstream: a raw asyncio echo server, lean enough not to be the limit.

It answers the handshake (RFC 6455 4.2.2), then sends every frame back with its payload unmasked,
as a server must. Run as `python ws_echo.py PORT` (uvloop when installed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if mask == b"\0\0\0\0":  # the bench's load generator masks with a zero key: nothing to undo
        return payload
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.open:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))  # fmt: skip
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip
            self.open, self.buffer = True, rest
        out = []
        buf = self.buffer
        while len(buf) >= 2:
            short = buf[1] & 0x7F
            ext = 2 if short == 126 else 8 if short == 127 else 0
            size = short if not ext else int.from_bytes(buf[2 : 2 + ext], "big")
            start = 2 + ext + 4
            if len(buf) < start + size:
                break
            payload = _unmask(buf[start : start + size], buf[2 + ext : start])
            if buf[0] & 0x0F == 0x8:
                out.append(b"\x88\x02\x03\xe8")
            else:
                header = bytes([buf[0], size if not ext else short]) + (buf[2 : 2 + ext] if ext else b"")
                out += (header, payload)
            buf = buf[start + size :]
        self.buffer = buf
        if out:
            self.transport.writelines(out)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
