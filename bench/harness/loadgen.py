"""Open-loop and probing load that wrk cannot do; run as `python -m harness.loadgen CMD ...`.

Each command is bounded in count and in time and prints one JSON object on stdout:
  capacity  submit N async runs, probe health and status while they are held, wait for all
  rate      submit async runs at a fixed rate and time each until its webhook (or its done state)
  wave      submit N async runs that the upstream answers all at one moment; time each webhook
  transfer  stream a large upload or download through a URL, checking the byte count
  ws        WebSocket connections each echoing one message at a time: messages per second
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import random
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

BODY_1K = b"a" * 1024
#: Every async request names its caller: the gateway ties runs to it (the peers ignore it).
CLIENT_AUTH = "Bearer asyncgate-bench-client"
HEADERS = {"Authorization": CLIENT_AUTH}
TERMINAL = {"succeeded", "failed", "cancelled", "SUCCESS", "FAILURE", "REVOKED"}
OK_STATES = {"succeeded", "SUCCESS"}
CHUNK = bytes(1024 * 1024)
#: How often the Celery pattern's status endpoint is polled for one run's end (it has no webhook).
POLL_S = 0.005


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    pick = {q: percentile(ms, q) for q in (50, 90, 99)}
    return {
        "n": len(ms),
        "p50_ms": _r(pick[50]),
        "p90_ms": _r(pick[90]),
        "p99_ms": _r(pick[99]),
        "max_ms": _r(max(ms) if ms else None),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


@dataclass(frozen=True)
class Api:
    """Where a system takes runs and tells their state: the gateway or the Celery pattern."""

    base: str
    mode: str  # "gateway" | "celery"

    def submit_url(self, path: str, webhook: str | None = None) -> str:
        if self.mode == "celery":
            return f"{self.base}{path}"
        url = f"{self.base}{path}?async=true"
        if webhook:
            url += "&webhookEndpoint=" + urllib.parse.quote(webhook, safe="")
        return url

    def status_url(self, run_id: str) -> str:
        if self.mode == "celery":
            return f"{self.base}/tasks/{run_id}"
        return f"{self.base}/_asyncgate/runs/{run_id}"

    def health_url(self) -> str:
        return f"{self.base}/_asyncgate/healthz" if self.mode == "gateway" else f"{self.base}/docs"

    @staticmethod
    def run_id(payload: dict[str, Any]) -> str:
        return str(payload.get("run_id") or payload.get("task_id"))


async def submit(session: aiohttp.ClientSession, url: str) -> tuple[str | None, float, int]:
    start = time.monotonic()
    try:
        async with session.post(url, data=BODY_1K, headers={"Content-Type": "application/octet-stream"}) as resp:
            payload = await resp.json(content_type=None) if resp.status == 202 else {}
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None, time.monotonic() - start, 0
    run_id = Api.run_id(payload) if status == 202 else None
    return run_id, time.monotonic() - start, status


async def get_status(session: aiohttp.ClientSession, url: str) -> tuple[str | None, float]:
    start = time.monotonic()
    try:
        async with session.get(url) as resp:
            payload = await resp.json(content_type=None) if resp.status == 200 else {}
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None, time.monotonic() - start
    return payload.get("status"), time.monotonic() - start


async def bounded_gather(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# --- capacity ---------------------------------------------------------------------------------


@dataclass
class Probes:
    health: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)
    health_hold: list[float] = field(default_factory=list)
    status_hold: list[float] = field(default_factory=list)
    failures: int = 0


async def _probe(session: aiohttp.ClientSession, api: Api, ids: list[str], probes: Probes, hold_end: float,
                 stop: asyncio.Event, health_every: float, status_every: float) -> None:  # fmt: skip
    async def health_loop() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                async with session.get(api.health_url()) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            took = time.monotonic() - start
            probes.failures += not ok
            probes.health.append(took)
            if start < hold_end:
                probes.health_hold.append(took)
            await _sleep_or_stop(stop, health_every)

    async def status_loop() -> None:
        while not stop.is_set() and ids:
            start = time.monotonic()
            state, took = await get_status(session, api.status_url(random.choice(ids)))
            probes.failures += state is None
            probes.status.append(took)
            if start < hold_end:
                probes.status_hold.append(took)
            await _sleep_or_stop(stop, status_every)

    await asyncio.gather(health_loop(), status_loop())


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def capacity(args: argparse.Namespace) -> dict[str, Any]:
    api = Api(args.url, args.mode)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers=HEADERS) as session:
        t0 = time.monotonic()
        results = await bounded_gather(
            args.concurrency, [lambda: submit(session, api.submit_url("/anything")) for _ in range(args.n)]
        )
        submit_s = time.monotonic() - t0
        ids = [r[0] for r in results if r[0]]
        probes = Probes()
        stop = asyncio.Event()
        hold_end = t0 + args.hold
        prober = asyncio.create_task(_probe(session, api, ids, probes, hold_end, stop, 0.05, 0.02))
        try:
            states = await _wait_all(session, api, ids, t0 + args.deadline, hold_end)
        finally:
            stop.set()
            await prober
    counts: dict[str, int] = {}
    for state in states.values():
        counts[str(state)] = counts.get(str(state), 0) + 1
    return {
        "submitted": args.n,
        "accepted": len(ids),
        "refused": dict(collections.Counter(str(r[2] or "no answer") for r in results if not r[0])),
        "submit_seconds": round(submit_s, 3),
        "submit_latency": summary([r[1] for r in results]),
        "all_done_seconds": round(time.monotonic() - t0, 3),
        "states": counts,
        "succeeded": sum(n for s, n in counts.items() if s in OK_STATES),
        "health_hold": summary(probes.health_hold),
        "status_hold": summary(probes.status_hold),
        "health_all": summary(probes.health),
        "status_all": summary(probes.status),
        "probe_failures": probes.failures,
    }


async def _wait_all(session: aiohttp.ClientSession, api: Api, ids: list[str], deadline: float,
                    hold_end: float) -> dict[str, str | None]:  # fmt: skip
    """Poll every run until it is terminal or the deadline passes; the sweep starts near hold end."""
    states: dict[str, str | None] = dict.fromkeys(ids)
    await asyncio.sleep(max(0.0, min(hold_end, deadline) - time.monotonic() - 1.0))
    while time.monotonic() < deadline:
        pending = [i for i, s in states.items() if s not in TERMINAL]
        if not pending:
            break
        got = await bounded_gather(16, [functools.partial(get_status, session, api.status_url(i)) for i in pending])
        for run_id, (state, _) in zip(pending, got, strict=True):
            states[run_id] = state
        await asyncio.sleep(0.5)
    return states


# --- rate ---------------------------------------------------------------------------------------


async def rate(args: argparse.Namespace) -> dict[str, Any]:
    api = Api(args.url, args.mode)
    arrivals: dict[str, float] = {}
    arrived = asyncio.Event()
    duplicates = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal duplicates
        now = time.monotonic()
        await request.read()
        run_id = request.headers.get("Asyncgate-Run-Id", "")
        duplicates += run_id in arrivals
        arrivals.setdefault(run_id, now)
        arrived.set()
        return web.Response(status=204)

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    webhook = f"http://127.0.0.1:{port}/hook" if api.mode == "gateway" else None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=HEADERS) as session:
            return await _drive_rate(args, api, session, webhook, arrivals, arrived, lambda: duplicates)
    finally:
        await runner.cleanup()


async def _drive_rate(args: argparse.Namespace, api: Api, session: aiohttp.ClientSession, webhook: str | None,
                      arrivals: dict[str, float], arrived: asyncio.Event,
                      duplicates: Callable[[], int]) -> dict[str, Any]:  # fmt: skip
    total = int(args.rate * args.duration)
    started: dict[str, float] = {}
    submit_lat: list[float] = []
    done_at: dict[str, float] = {}
    failed = 0
    refused: collections.Counter[str] = collections.Counter()

    async def one(at: float) -> None:
        nonlocal failed
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        start = time.monotonic()
        run_id, took, status = await submit(session, api.submit_url("/anything", webhook))
        submit_lat.append(took)
        if run_id is None:
            failed += 1
            refused[str(status or "no answer")] += 1
            return
        started[run_id] = start
        if api.mode == "celery":
            await _poll_done(session, api, run_id, done_at, start + args.wait, args.poll_ms / 1000)

    t0 = time.monotonic() + 0.1
    await asyncio.gather(*(one(t0 + i / args.rate) for i in range(total)))
    if api.mode == "gateway":
        deadline = time.monotonic() + args.wait
        while len(set(started) & set(arrivals)) < len(started) and time.monotonic() < deadline:
            arrived.clear()
            await _sleep_or_stop(arrived, deadline - time.monotonic())
        done_at = arrivals
    end_to_end = [done_at[i] - s for i, s in started.items() if i in done_at]
    return {
        "offered": total,
        "rate": args.rate,
        "accepted": len(started),
        "submit_failures": failed,
        "refused": dict(refused),
        "completed": len(end_to_end),
        "duplicates": duplicates(),
        "submit_latency": summary(submit_lat),
        "end_to_end": summary(end_to_end),
        "poll_interval_ms": args.poll_ms if api.mode == "celery" else None,
    }


async def _poll_done(session: aiohttp.ClientSession, api: Api, run_id: str, done_at: dict[str, float],
                     deadline: float, interval: float) -> None:  # fmt: skip
    while time.monotonic() < deadline:
        state, _ = await get_status(session, api.status_url(run_id))
        if state in TERMINAL:
            done_at[run_id] = time.monotonic()
            return
        await asyncio.sleep(interval)


# --- transfer ---------------------------------------------------------------------------------------


async def transfer(args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        if args.direction == "up":
            status, seen = await _upload(session, args.url, args.bytes)
        else:
            status, seen = await _download(session, args.url, args.bytes)
    took = time.monotonic() - start
    return {
        "direction": args.direction,
        "bytes": args.bytes,
        "status": status,
        "bytes_seen": seen,
        "ok": status == 200 and seen == args.bytes,
        "seconds": round(took, 3),
        "mib_per_s": round(args.bytes / 2**20 / took, 1),
    }


async def _upload(session: aiohttp.ClientSession, url: str, size: int) -> tuple[int, int]:
    async def body() -> Any:
        sent = 0
        while sent < size:
            chunk = CHUNK[: min(len(CHUNK), size - sent)]
            sent += len(chunk)
            yield chunk

    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    async with session.post(url + "/upload", data=body(), headers=headers) as resp:
        payload = await resp.json(content_type=None) if resp.status == 200 else {}
        return resp.status, int(payload.get("received", -1))


async def _download(session: aiohttp.ClientSession, url: str, size: int) -> tuple[int, int]:
    seen = 0
    async with session.get(f"{url}/__download?bytes={size}") as resp:
        async for chunk in resp.content.iter_chunked(1024 * 1024):
            seen += len(chunk)
        return resp.status, seen


# --- wave ---------------------------------------------------------------------------------------


async def wave(args: argparse.Namespace) -> dict[str, Any]:
    """N runs held until one wall-clock moment, then answered together: how soon each webhook comes.

    The upstream (peers/upstream_app.py, ``?until=``) stamps its answer with the wall-clock time
    it was sent, and the gateway delivers that body as the webhook's: each lag is the receiver's
    clock minus that stamp, one machine's clock on both sides.
    """
    lags: dict[str, float] = {}
    duplicates = 0
    expected = args.n
    all_in = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        nonlocal duplicates
        arrived = time.time()
        body = await request.read()
        run_id = request.headers.get("Asyncgate-Run-Id", "")
        duplicates += run_id in lags
        lags.setdefault(run_id, arrived - json.loads(body)["answered_at"])
        if len(lags) >= expected:
            all_in.set()
        return web.Response(status=204)

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    until = time.time() + args.hold
    webhook = urllib.parse.quote(f"http://127.0.0.1:{port}/hook", safe="")
    url = f"{args.url}/wave?until={until:.3f}&async=true&webhookEndpoint={webhook}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=HEADERS) as session:
            t0 = time.monotonic()
            results = await bounded_gather(args.concurrency, [lambda: submit(session, url) for _ in range(args.n)])
            submit_s = time.monotonic() - t0
            expected = accepted = sum(1 for r in results if r[0])
            if len(lags) >= expected:
                all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), max(0.0, until + args.wait - time.time()))
    finally:
        await runner.cleanup()
    values = list(lags.values())
    return {
        "submitted": args.n,
        "accepted": accepted,
        "refused": dict(collections.Counter(str(r[2] or "no answer") for r in results if not r[0])),
        "submit_seconds": round(submit_s, 3),
        "delivered": len(values),
        "within_2s": sum(1 for v in values if v <= 2.0),
        "lag": summary(values),
        "duplicates": duplicates,
    }


# --- command line -----------------------------------------------------------------------------------


# --- ws: WebSocket echo throughput -----------------------------------------------------------------

WS_HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _WsEcho(asyncio.Protocol):
    """One connection: the handshake, then a binary message sent each time the last one came back.

    Frames are built once: masked with a zero key (legal, and nothing to compute), so the cost
    measured is the relay's, not the load generator's.
    """

    def __init__(self, frame: bytes, echo_size: int) -> None:
        self.frame = frame
        self.echo_size = echo_size
        self.received = 0
        self.count = 0
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.open.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                head, _, rest = self.head.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 101"):
                    self.open.set_exception(RuntimeError(head.split(b"\r\n", 1)[0].decode()))
                    return
                self.open.set_result(None)
                self.received = len(rest)
            return
        self.received += len(data)
        while self.received >= self.echo_size:
            self.received -= self.echo_size
            self.count += 1
            if self.running and self.transport is not None:
                self.transport.write(self.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(RuntimeError("closed during the handshake"))
        self.running = False


async def ws(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    url = urllib.parse.urlsplit(args.url)
    payload = b"m" * args.size
    frame = bytes([0x82, 0x80 | 126]) + args.size.to_bytes(2, "big") + b"\0\0\0\0" + payload
    echo_size = 4 + args.size
    conns: list[_WsEcho] = []
    for _ in range(args.connections):
        _, conn = await loop.create_connection(lambda: _WsEcho(frame, echo_size), url.hostname, url.port)
        assert conn.transport is not None
        conn.transport.write(WS_HANDSHAKE.format(host=url.netloc).encode())
        await asyncio.wait_for(conn.open, 10)
        conns.append(conn)
    for conn in conns:
        assert conn.transport is not None
        conn.transport.write(frame)
    await asyncio.sleep(args.warmup)
    start, started = sum(c.count for c in conns), time.monotonic()
    await asyncio.sleep(args.seconds)
    done, elapsed = sum(c.count for c in conns), time.monotonic() - started
    for conn in conns:
        conn.running = False
        if conn.transport is not None:
            conn.transport.close()
    closed = sum(1 for c in conns if c.transport is None or c.transport.is_closing())
    return {"messages": done - start, "seconds": elapsed, "msgs_per_s": (done - start) / elapsed,
            "connections": args.connections, "closed": closed}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadgen")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capacity")
    cap.add_argument("--url", required=True)
    cap.add_argument("--mode", choices=["gateway", "celery"], default="gateway")
    cap.add_argument("--n", type=int, required=True)
    cap.add_argument("--concurrency", type=int, default=64)
    cap.add_argument("--hold", type=float, required=True, help="the upstream's delay, seconds")
    cap.add_argument("--deadline", type=float, required=True, help="give up this long after the first submit")
    rat = sub.add_parser("rate")
    rat.add_argument("--url", required=True)
    rat.add_argument("--mode", choices=["gateway", "celery"], default="gateway")
    rat.add_argument("--rate", type=float, required=True)
    rat.add_argument("--duration", type=float, required=True)
    rat.add_argument("--wait", type=float, default=15.0, help="longest wait for one run to end, seconds")
    rat.add_argument("--poll-ms", type=float, default=POLL_S * 1000)
    wav = sub.add_parser("wave")
    wav.add_argument("--url", required=True)
    wav.add_argument("--n", type=int, required=True)
    wav.add_argument("--concurrency", type=int, default=64)
    wav.add_argument("--hold", type=float, required=True, help="seconds from the first submit to the answers")
    wav.add_argument("--wait", type=float, default=60.0, help="longest wait for the webhooks after the answers")
    tra = sub.add_parser("transfer")
    tra.add_argument("--url", required=True)
    tra.add_argument("--direction", choices=["up", "down"], required=True)
    tra.add_argument("--bytes", type=int, required=True)
    tra.add_argument("--timeout", type=float, default=300.0)
    wsp = sub.add_parser("ws")
    wsp.add_argument("--url", required=True)
    wsp.add_argument("--connections", type=int, default=64)
    wsp.add_argument("--size", type=int, default=1024, help="message size in bytes (126 to 65535)")
    wsp.add_argument("--warmup", type=float, default=2.0)
    wsp.add_argument("--seconds", type=float, default=10.0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = {"capacity": capacity, "rate": rate, "wave": wave, "transfer": transfer, "ws": ws}[args.cmd]
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(command(args))
    else:
        result = uvloop.run(command(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
