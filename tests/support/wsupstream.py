"""A real WebSocket upstream for tests: the ``websockets`` library's server, in a thread.

Paths choose the behaviour: ``/echo`` echoes every message, ``/hello`` sends what it saw of the
handshake, ``/close/<code>`` closes with that code, ``/ping`` pings the client and reports the
pong, ``/vanish`` sends half a frame and drops the connection, ``/refuse`` answers 403, ``/big/<n>``
sends one message of n bytes, ``/flood/<n>`` sends n messages of 64 KiB, ``/sink`` reads nothing.
Every connection's end is recorded with its close code.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tests.support.wait import wait_until


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """The upstream's preference among what the client offers; none is fine too."""
    for mine in ("chat.v2", "chat.v1"):
        if mine in offered:
            return Subprotocol(mine)
    return None


class WebSocketUpstream:
    """Runs on 127.0.0.1 and a free port until ``stop()``."""

    def __init__(self) -> None:
        self.closed: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        wait_until(lambda: self._server is not None, 10, message="WebSocket upstream start")
        assert self._server is not None
        self.port: int = next(iter(self._server.sockets)).getsockname()[1]
        self.url: str = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.loop.close()

    def ends(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [end for end in self.closed if end["path"] == path]

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            "127.0.0.1",
            0,
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            max_size=None,
            ping_interval=None,
            max_queue=4,
            close_timeout=1,
        ) as server:
            self._server = server
            await self._stop.wait()

    @staticmethod
    def _process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/refuse"):
            body = b'{"refused": true}'
            headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return Response(403, "Forbidden", headers, body)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        path = request.path.split("?", 1)[0]
        try:
            await self._behave(ws, path, request)
        except Exception:
            pass
        finally:
            with self._lock:
                self.closed.append(
                    {
                        "path": path,
                        "code": ws.close_code,
                        "reason": ws.close_reason,
                        "received": ws.protocol.close_rcvd is not None,
                    }
                )

    async def _behave(self, ws: ServerConnection, path: str, request: Request) -> None:
        if path == "/echo":
            async for message in ws:
                await ws.send(message)
        elif path == "/hello":
            extensions = [ext.name for ext in ws.protocol.extensions]
            seen = {"path": request.path, "headers": list(request.headers.raw_items()), "extensions": extensions}
            await ws.send(json.dumps({**seen, "subprotocol": ws.subprotocol}))
            await ws.wait_closed()
        elif path.startswith("/close/"):
            await ws.recv()
            await ws.close(int(path.rsplit("/", 1)[1]), "bye")
        elif path == "/ping":
            latency = await (await ws.ping(b"are you there"))
            await ws.send(f"pong after {latency >= 0}")
            await ws.wait_closed()
        elif path == "/vanish":
            await ws.recv()
            transport = ws.transport
            transport.write(b"\x82\x7e\x10\x00" + b"x" * 100)  # a 4096-byte frame, cut at 100
            transport.abort()
        elif path.startswith("/flood/"):
            for _ in range(int(path.rsplit("/", 1)[1])):
                await ws.send(b"f" * 65536)
            await ws.wait_closed()
        elif path == "/sink":
            await ws.wait_closed()  # reads nothing: past max_queue messages, the connection is not read
        elif path.startswith("/big/"):
            await ws.send(b"b" * int(path.rsplit("/", 1)[1]))
            await ws.wait_closed()
