"""A cheap client for tens of thousands of runs: `python -m harness.fleetload submit|verify ...`.

Raw asyncio and httptools over keep-alive connections (aiohttp costs several times more CPU per
request, and on a two-core machine the client shares the cores with what it measures):

  submit  POST N async runs, spread over the gateways' URLs round robin, `--concurrency` at once;
          writes the run ids to `--ids`, prints one JSON object: accepted, refused, seconds, latency
  verify  GET the status of every run in `--ids`, spread over the gateways the same way; prints
          one JSON object: the count of runs in each state
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any, cast

import httptools

from .loadgen import CLIENT_AUTH, summary

#: Answers must come within this; a gateway that takes longer is counted as refusing.
ANSWER_TIMEOUT_S = 60.0
#: A connection idle this long is closed, not reused: uvicorn closes idle ones at 5 s, and a
#: request sent as it does is reset (40 of 50,000 submits were, before this).
IDLE_S = 2.0


class Exchange(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer's status and body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.done: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not asyncio's class

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("closed by the gateway"))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result((self.parser.get_status_code(), bytes(self.body)))

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body.clear()
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.done, ANSWER_TIMEOUT_S)


class Client:
    """Connections to one gateway, opened as needed and reused."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[Exchange] = []

    async def send(self, data: bytes) -> tuple[int, bytes]:
        exchange = self._reusable() or await self._open()
        try:
            answer = await exchange.request(data)
        except BaseException:
            if exchange.transport is not None:
                exchange.transport.close()
            raise
        if not exchange.closed:
            exchange.idle_since = time.monotonic()
            self.idle.append(exchange)
        return answer

    def _reusable(self) -> Exchange | None:
        while self.idle:
            exchange = self.idle.pop()
            if not exchange.closed and time.monotonic() - exchange.idle_since < IDLE_S:
                return exchange
            if exchange.transport is not None:
                exchange.transport.close()
        return None

    async def _open(self) -> Exchange:
        loop = asyncio.get_running_loop()
        _, exchange = await loop.create_connection(Exchange, self.host, self.port)
        return exchange

    def close(self) -> None:
        for exchange in self.idle:
            if exchange.transport is not None:
                exchange.transport.close()


def _post(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: {CLIENT_AUTH}\r\n"
            f"content-type: application/octet-stream\r\ncontent-length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: bench\r\nauthorization: {CLIENT_AUTH}\r\n\r\n".encode()


async def _spread(clients: list[Client], requests: list[bytes], concurrency: int) -> list[tuple[int, bytes, float]]:
    """Each request to clients[i % len(clients)], `concurrency` at once; (status, body, seconds) each."""
    results: list[tuple[int, bytes, float]] = [(0, b"", 0.0)] * len(requests)
    following = iter(range(len(requests)))

    async def worker() -> None:
        for i in following:
            start = time.monotonic()
            try:
                status, body = await clients[i % len(clients)].send(requests[i])
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                status, body = 0, type(exc).__name__.encode()  # what went wrong, for the count of refusals
            results[i] = (status, body, time.monotonic() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def submit(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    clients = [Client(url) for url in args.urls.split(",")]
    request = _post("/anything?async=true", b"a" * args.body)
    started = time.monotonic()
    results = await _spread(clients, [request] * args.n, args.concurrency)
    seconds = time.monotonic() - started
    for client in clients:
        client.close()
    ids = [json.loads(body)["run_id"] if status == 202 else "" for status, body, _ in results]
    refused = collections.Counter(str(status or body.decode()) for status, body, _ in results if status != 202)
    figures = {
        "submitted": args.n,
        "accepted": sum(1 for i in ids if i),
        "refused": dict(refused),
        "seconds": round(seconds, 3),
        "latency": summary([took for _, _, took in results]),
    }
    return figures, ids


async def verify(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    clients = [Client(url) for url in args.urls.split(",")]
    started = time.monotonic()
    results = await _spread(clients, [_get(f"/_asyncgate/runs/{i}") for i in ids], args.concurrency)
    for client in clients:
        client.close()
    states = collections.Counter(
        str(json.loads(body).get("status")) if status == 200 else f"HTTP {status}" if status else body.decode()
        for status, body, _ in results
    )
    return {"runs": len(ids), "states": dict(states), "seconds": round(time.monotonic() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["submit", "verify"])
    parser.add_argument("--urls", required=True, help="the gateways' base URLs, comma-separated")
    parser.add_argument("--ids", required=True, help="the file of run ids (written by submit, read by verify)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--body", type=int, default=1024, help="request body size in bytes")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    path = Path(args.ids)
    if args.command == "submit":
        figures, ids = run(submit(args))
        path.write_text("\n".join(ids) + "\n")
    else:
        figures = run(verify(args, [line for line in path.read_text().splitlines() if line]))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
