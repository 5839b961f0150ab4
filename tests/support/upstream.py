"""A fake upstream that records every call: echo, sleep, status codes, streams, tokens, uploads, hangs."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PATTERN = bytes(range(256)) * 256  # 64 KiB of every byte value, for binary-safety checks


def pattern_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the repeating pattern /stream serves."""
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


class Calls:
    """A thread-safe log of the requests the upstream received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []

    def add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(item)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The longest an echo waits on its gate: a test that forgets to open it fails rather than hangs.
GATE_TIMEOUT = 60.0


def upstream_app(calls: Calls) -> Starlette:
    # ``?gate=NAME`` holds an echo until ``POST /gates/NAME`` opens it: a run that stays running
    # exactly as long as a test needs, however slow the machine.
    gates: dict[str, asyncio.Event] = {}

    def record(request: Request, **extra: Any) -> dict[str, Any]:
        item = {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
            **extra,
        }
        calls.add(item)
        return item

    async def echo(request: Request) -> Response:
        body = await request.body()
        if "delay" in request.query_params:
            attempt = request.headers.get("asyncgate-attempt")
            calls.add({"event": "arrived", "query": request.url.query, "attempt": attempt})
            await asyncio.sleep(float(request.query_params["delay"]))  # a slow upstream, on purpose
        if "gate" in request.query_params:
            gate = gates.setdefault(request.query_params["gate"], asyncio.Event())
            await asyncio.wait_for(gate.wait(), GATE_TIMEOUT)
        item = record(request, body=body.decode("utf-8", "replace"), body_sha256=hashlib.sha256(body).hexdigest())
        return JSONResponse(item)

    async def open_gate(request: Request) -> Response:
        gates.setdefault(request.path_params["name"], asyncio.Event()).set()
        return Response(status_code=204)

    async def mirror(request: Request) -> Response:
        """The request body back, with the request's content type."""
        body = await request.body()
        record(request, body_len=len(body))
        return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))

    async def upload(request: Request) -> Response:
        """Consume a body of any size without holding it; answer its length and digest."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        record(request, body_len=size)
        return JSONResponse({"size": size, "sha256": digest.hexdigest()})

    async def sleep(request: Request) -> Response:
        seconds = float(request.query_params.get("seconds", "1"))
        item = record(request)

        async def disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        # The behaviour under test: a slow upstream, which notices when its client goes away.
        sleeper = asyncio.create_task(asyncio.sleep(seconds))
        watcher = asyncio.create_task(disconnect())
        try:
            await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            watcher.cancel()
        if not sleeper.cancelled() and sleeper.done():
            return JSONResponse({"slept": seconds, "query": item["query"]})
        calls.add({"event": "disconnected", "path": item["path"], "query": item["query"]})
        return Response(status_code=499)

    async def hang(request: Request) -> Response:
        """Never answers; notices (and records) when its client goes away."""
        item = record(request)
        while (await request.receive())["type"] != "http.disconnect":
            pass
        calls.add({"event": "disconnected", "path": item["path"], "query": item["query"]})
        return Response(status_code=499)

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        record(request)
        if code in (204, 304):
            return Response(status_code=code)
        return JSONResponse({"status": code}, status_code=code)

    async def stream(request: Request) -> Response:
        size = int(request.query_params.get("size", "1048576"))
        chunk = int(request.query_params.get("chunk", "65536"))
        record(request)

        async def body() -> Any:
            sent = 0
            while sent < size:
                n = min(chunk, size - sent)
                offset = sent % len(PATTERN)
                piece = (PATTERN[offset:] + PATTERN)[:n] if n <= len(PATTERN) else pattern_bytes(n)
                yield piece
                sent += n

        return StreamingResponse(body(), media_type="application/octet-stream")

    def token_params(request: Request) -> tuple[int, float, float]:
        query = request.query_params
        return int(query.get("count", "5")), float(query.get("interval", "0.05")), float(query.get("hold", "0"))

    def token_gate(request: Request) -> tuple[asyncio.Event | None, int]:
        """``?gate=NAME&gate_at=I``: the stream stops before token I until the gate is opened."""
        name = request.query_params.get("gate")
        gate = gates.setdefault(name, asyncio.Event()) if name else None
        return gate, int(request.query_params.get("gate_at", "0"))

    async def tokens(
        count: int, interval: float, hold: float, render: Any, gate: tuple[asyncio.Event | None, int] = (None, 0)
    ) -> Any:
        # The behaviour under test: a model emitting a token every ``interval`` s, then
        # holding the response open ``hold`` s more before it ends.
        event, gate_at = gate
        for index in range(count):
            if event is not None and index == gate_at:
                await asyncio.wait_for(event.wait(), GATE_TIMEOUT)
            yield render(index)
            await asyncio.sleep(interval)
        await asyncio.sleep(hold)

    async def sse_tokens(request: Request) -> Response:
        """Server-Sent Events, one per token (``data: token-<i>``), ending with ``event: done``."""
        count, interval, hold = token_params(request)
        gate = token_gate(request)
        record(request)

        async def body() -> Any:
            render = lambda i: f"id: {i}\ndata: token-{i}\n\n".encode()  # noqa: E731
            async for piece in tokens(count, interval, hold, render, gate):
                yield piece
            yield b"event: done\ndata: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def ndjson(request: Request) -> Response:
        """One JSON line per token: ``{"token": "token-<i>", "index": <i>}``."""
        count, interval, hold = token_params(request)
        record(request)

        def line(index: int) -> bytes:
            return b'{"token": "token-%d", "index": %d}\n' % (index, index)

        return StreamingResponse(tokens(count, interval, hold, line), media_type="application/x-ndjson")

    async def progress_sse(request: Request) -> Response:
        """SSE tokens, each followed by an ``asyncgate.progress`` report of the share done."""
        count, interval, hold = token_params(request)
        record(request)

        def render(index: int) -> bytes:
            report = b'{"progress": %.2f, "message": "token %d of %d"}' % ((index + 1) / count, index + 1, count)
            return b"data: token-%d\n\nevent: asyncgate.progress\ndata: %s\n\n" % (index, report)

        return StreamingResponse(tokens(count, interval, hold, render), media_type="text/event-stream")

    async def progress_callback(request: Request) -> Response:
        """A job answering one JSON document at the end, reporting its progress meanwhile by POSTing
        to the URL announced in Asyncgate-Progress-Url; answers the statuses those POSTs got."""
        count, interval, hold = token_params(request)
        record(request)
        url = request.headers.get("asyncgate-progress-url")
        statuses: list[int] = []
        if url is not None:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                for index in range(count):
                    report = {"percent": 100 * (index + 1) / count, "message": f"step {index + 1} of {count}"}
                    statuses.append((await client.post(url, json=report)).status_code)
                    await asyncio.sleep(interval)  # the behaviour under test: a job working
        await asyncio.sleep(hold)
        return JSONResponse({"announced": url is not None, "statuses": statuses})

    async def reset(request: Request) -> Response:
        """Starts an answer, then breaks the connection: an upstream that resets mid-response."""
        record(request)

        async def body() -> Any:
            yield b"partial"
            raise ConnectionResetError("the fake upstream resets the connection")

        return StreamingResponse(body(), media_type="text/plain")

    async def cookies(request: Request) -> Response:
        record(request)
        response = Response(b"ok", media_type="text/plain")
        response.raw_headers.append((b"set-cookie", b"a=1; Path=/"))
        response.raw_headers.append((b"set-cookie", b"b=2; Path=/"))
        response.raw_headers.append((b"x-custom", b"kept"))
        return response

    async def hop(request: Request) -> Response:
        """Answers with hop-by-hop fields the gateway must strip."""
        record(request)
        response = Response(b"hop", media_type="text/plain")
        response.raw_headers.extend([(b"connection", b"x-secret-hop"), (b"x-secret-hop", b"1"), (b"keep-alive", b"5")])
        return response

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
            Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/gates/{name}", open_gate, methods=["POST"]),
            Route("/mirror", mirror, methods=["POST", "PUT"]),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/sleep", sleep, methods=["GET", "POST"]),
            Route("/hang", hang, methods=["GET", "POST"]),
            Route("/status/{code:int}", status, methods=["GET", "POST"]),
            Route("/stream", stream, methods=["GET"]),
            Route("/sse-tokens", sse_tokens, methods=["GET", "POST"]),
            Route("/ndjson", ndjson, methods=["GET", "POST"]),
            Route("/progress-sse", progress_sse, methods=["GET", "POST"]),
            Route("/progress-callback", progress_callback, methods=["GET", "POST"]),
            Route("/cookies", cookies, methods=["GET"]),
            Route("/reset", reset, methods=["GET", "POST"]),
            Route("/hop", hop, methods=["GET"]),
        ]
    )
