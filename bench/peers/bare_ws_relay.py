"""The WebSocket relay floor: a raw asyncio splice, the least a Python relay can do.

It reads the upgrade request's head, opens a connection to the upstream, sends the head on (Host
rewritten), and then copies bytes both ways with backpressure: no HTTP parsing beyond the head,
no frame reading, no limits. Run as `python bare_ws_relay.py PORT UPSTREAM_PORT` (uvloop when
installed).
"""

from __future__ import annotations

import asyncio
import re
import sys

HOST = re.compile(rb"\r\nhost:[^\r]*", re.IGNORECASE)


class Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Client(Side):
    upstream_port = 0

    def data_received(self, data: bytes) -> None:
        if self.peer is not None or self.pending and b"\r\n\r\n" in self.pending:
            super().data_received(data)
            return
        self.pending += data
        if b"\r\n\r\n" in self.pending:
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Side, "127.0.0.1", self.upstream_port)
        head = HOST.sub(b"\r\nHost: 127.0.0.1:%d" % self.upstream_port, self.pending, count=1)
        self.pending = b""
        self.peer, upstream.peer = upstream, self
        assert upstream.transport is not None and self.transport is not None
        upstream.transport.write(head)
        self.transport.resume_reading()


async def main(port: int, upstream_port: int) -> None:
    Client.upstream_port = upstream_port
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    else:
        uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
