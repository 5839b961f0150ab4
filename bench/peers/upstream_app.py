"""A small ASGI upstream for the scenarios nginx cannot serve: slow runs and big transfers.

Every path reads the request body to the end, waits BENCH_DELAY seconds (0: answers at once),
or until the wall-clock time ``?until=<epoch seconds>`` when the query names one (a wave of runs
all answered at one moment), and answers 200 {"received": <bytes>, "answered_at": <epoch seconds>};
GET /__download?bytes=N streams N zero bytes;
GET /__stats reports requests in flight now, the peak and the total; POST /__reset zeroes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNK = bytes(1024 * 1024)


class Upstream:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.inflight = 0
        self.peak = 0
        self.total = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/__stats":
            await _json(send, {"inflight": self.inflight, "peak": self.peak, "total": self.total})
        elif path == "/__reset":
            self.peak, self.total = self.inflight, 0
            await _json(send, {"ok": True})
        elif path == "/__download":
            size = int(parse_qs(scope["query_string"].decode())["bytes"][0])
            await _download(send, size)
        else:
            until = parse_qs(scope["query_string"].decode()).get("until")
            await self._run(receive, send, float(until[0]) if until else None)

    async def _run(self, receive: Receive, send: Send, until: float | None) -> None:
        self.inflight += 1
        self.total += 1
        self.peak = max(self.peak, self.inflight)
        try:
            received = 0
            while True:
                message = await receive()
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            if until is not None:
                await asyncio.sleep(max(0.0, until - time.time()))
            elif self.delay > 0:
                await asyncio.sleep(self.delay)
            await _json(send, {"received": received, "answered_at": time.time()})
        finally:
            self.inflight -= 1


async def _json(send: Send, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _download(send: Send, size: int) -> None:
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sent = 0
    while sent < size:
        chunk = CHUNK[: min(len(CHUNK), size - sent)]
        sent += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": sent < size})


app = Upstream(float(os.environ.get("BENCH_DELAY", "0")))
