"""An upstream that holds tens of thousands of requests cheaply, then answers them on a word.

    python hold_upstream.py PORT HOST[,HOST...] MAX_HOLD_S [replay|wave]

Raw asyncio (uvloop when installed) and httptools, one small protocol object and one timer per
connection: 50,000 held requests cost it about what their sockets do. It listens on PORT of every
HOST given (loopback addresses: 127.0.0.2, 127.0.0.3, ...), so that the gateways, each sent to
an address of its own, do not share one address pair's ephemeral ports.

Every request is held until ``POST /__release`` or until MAX_HOLD_S after it arrived, whichever
comes first; the answer is 200 with a small JSON body. At the release, ``replay`` (the default)
answers the held requests in the order and at the pace they arrived, so that every one is held
for the same time, as runs of one length are; ``wave`` answers them all at once. Requests that
arrive after the release are answered at once. ``GET /__stats``: requests held now, the peak,
the total received and answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import cast

import httptools


@dataclass
class Counts:
    held: int = 0
    peak: int = 0
    total: int = 0
    answered: int = 0


class Hold:
    """The server's state: what is held, and whether the release was given."""

    def __init__(self, max_hold: float, wave: bool) -> None:
        self.max_hold = max_hold
        self.wave = wave
        self.counts = Counts()
        self.released = False
        #: Held requests in the order they arrived (dicts keep it), with their arrival times.
        self.waiting: dict[Connection, float] = {}

    def release(self) -> None:
        self.released = True
        loop = asyncio.get_running_loop()
        first = min(self.waiting.values(), default=0.0)
        for connection, arrived in list(self.waiting.items()):
            if self.wave:
                connection.answer()
            else:
                loop.call_later(arrived - first, connection.answer)


ANSWER = b'{"ok":true}'
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class Connection(asyncio.Protocol):
    def __init__(self, hold: Hold) -> None:
        self.hold = hold
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not asyncio's class

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop()

    # httptools' callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        if url.startswith(b"/__stats"):
            self._send(json.dumps(vars(self.hold.counts)).encode())
        elif url.startswith(b"/__release"):
            self.hold.release()
            self._send(ANSWER)
        elif self.hold.released:
            self.hold.counts.total += 1
            self.hold.counts.answered += 1
            self._send(ANSWER)
        else:
            self._hold()

    def _hold(self) -> None:
        counts = self.hold.counts
        counts.total += 1
        counts.held += 1
        counts.peak = max(counts.peak, counts.held)
        loop = asyncio.get_running_loop()
        self.hold.waiting[self] = loop.time()
        self.timer = loop.call_later(self.hold.max_hold, self.answer)

    def answer(self) -> None:
        if self in self.hold.waiting:
            self._drop()
            self.hold.counts.answered += 1
            self._send(ANSWER)

    def _drop(self) -> None:
        if self.hold.waiting.pop(self, None) is not None:
            self.hold.counts.held -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _send(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(HEAD % len(body) + body)

    def _close(self) -> None:
        self._drop()
        if self.transport is not None:
            self.transport.close()


async def serve(port: int, hosts: list[str], max_hold: float, wave: bool) -> None:
    hold = Hold(max_hold, wave)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: Connection(hold), host, port, backlog=16384) for host in hosts]
    print(f"holding on {', '.join(hosts)} port {port}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    port, hosts, max_hold = int(sys.argv[1]), sys.argv[2].split(","), float(sys.argv[3])
    wave = sys.argv[4:5] == ["wave"]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, hosts, max_hold, wave))
    else:
        uvloop.run(serve(port, hosts, max_hold, wave))


if __name__ == "__main__":
    main()
