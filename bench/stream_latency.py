"""Live output latency: upstream token write to SSE listener receipt, listeners on the replica not holding the run.

    python bench/stream_latency.py --runs 1 --listeners 100 --seconds 10
    python bench/stream_latency.py --runs 100 --listeners 1 --seconds 10
    python bench/stream_latency.py --runs 1000 --listeners 1 --seconds 10 --clients 8
    python bench/stream_latency.py --runs 1 --listeners 1000 --interval 0.5      # memory per listener
    python bench/stream_latency.py --runs 1000 --listeners 10 --interval 1 --clients 8
    python bench/stream_latency.py ... --source /path/to/other/checkout            # the same, another version
    python bench/stream_latency.py --runs 1000 --listeners 1 --clients 8 --direct  # the floor: no gateway

Starts a throwaway redis-server, a token-streaming upstream (one SSE event every --interval s,
carrying the time it was written), a gateway that executes runs and one that executes none
(``runs.execute: false``), submits --runs runs through the first and follows each with
--listeners event streams on the second, from --clients processes. The upstream answers each
call at once and holds its tokens until every listener is connected (``--join-late``: until
the runs are submitted, so that listeners first replay what they missed); each stream then
writes its tokens at a random phase of the interval (``--aligned``: all at the same moments).
``--direct`` measures the floor: the same listeners reading the upstream's streams themselves.

Prints the latency percentiles of every output event received, split at the moment the holder
parsed it and the moment Redis added it, the gateways' resident memory before and after the
listeners connected, the CPU seconds each gateway spent per relayed event, and the cores every
process of the bench used: all of them share this machine's cores, so a latency that grows
with the load says which held them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx
import orjson
import uvloop

#: The gateway under cProfile counting CPU time, not wall time: idle waits and the time other
#: processes hold the shared cores do not count (``--profile-listener``, ``--profile-holder``).
PROFILE = """
import cProfile, sys, time
from asyncgate.cli import main
out = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main)
finally:
    profile.dump_stats(out)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _TokenServer(asyncio.Protocol):
    """One connection of the token-streaming upstream, on a bare asyncio socket: it shares the
    machine's two cores with what it measures, and a starlette app under uvicorn took a quarter
    of a core for 20,000 tokens a second. ``GET /tokens?count=N&interval=S`` answers a stream at
    once and holds its tokens until ``POST /go``; each stream then starts at a random point of
    its first interval (all at once with ``aligned=1``), as independent model servers do."""

    def __init__(self, gate: asyncio.Event) -> None:
        self._gate = gate
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, though not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            return
        self._buffer = rest  # the gateway sends no body, and the next request only after this answer
        method, target = head.split(b" ", 2)[:2]
        path, _, query = target.decode().partition("?")
        if path != "/tokens":
            if method == b"POST" and path == "/go":
                self._gate.set()
            self._write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        params = dict(pair.split("=", 1) for pair in query.split("&") if "=" in pair)
        self._write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        asyncio.get_running_loop().create_task(
            self._stream(int(params["count"]), float(params["interval"]), params.get("aligned") == "1")
        )

    async def _stream(self, count: int, interval: float, aligned: bool) -> None:
        await self._gate.wait()
        if not aligned:
            await asyncio.sleep(random.uniform(0, interval))
        for index in range(count):
            token = f"data: {index} {time.time():.6f}\n\n".encode()
            self._write(b"%x\r\n%s\r\n" % (len(token), token))
            await asyncio.sleep(interval)
        self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def upstream_main(port: int) -> None:
    async def serve() -> None:
        gate = asyncio.Event()
        server = await asyncio.get_running_loop().create_server(lambda: _TokenServer(gate), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def wait_ready(url: str, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


#: The events that end a run's stream.
FINALS = (b"succeeded", b"failed", b"cancelled", b"lost")


@dataclasses.dataclass
class Tally:
    """What one client process of listeners measured (latencies in seconds, CPU once connected)."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    #: Upstream write to the holder's parse, and to Redis's add, of each live event.
    stamped: list[float] = dataclasses.field(default_factory=list)
    stored: list[float] = dataclasses.field(default_factory=list)
    replayed: int = 0
    finals: list[str] = dataclasses.field(default_factory=list)
    cpu: float = 0.0

    def add(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.stamped += other.stamped
        self.stored += other.stored
        self.replayed += other.replayed
        self.finals += other.finals
        self.cpu += other.cpu


class _Response:
    """httptools' callbacks for one event stream: the headers' end, then the body as it comes."""

    def __init__(self) -> None:
        self.headers_done = False
        self.complete = False
        self.body: list[bytes] = []

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def listen(url: str, tally: Tally, ready: asyncio.Event, connecting: asyncio.Semaphore, direct: bool) -> None:
    """Follow one event stream on a bare socket, parsed by httptools: the listeners share the
    machine's cores with the gateways they measure, and with httpx's line iteration they took
    more CPU than either gateway (0.69 of a core for 1,000 runs' 5,000 events/s; now 0.35).
    ``direct``: the stream is the upstream's own, read without a gateway (``--direct``)."""
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    writer: asyncio.StreamWriter | None = None
    try:
        async with connecting:  # browsers do not all connect in the same millisecond either
            reader, writer = await asyncio.open_connection(host, port)
            path = f"{target.path}?{target.query}" if target.query else target.path
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            while not response.headers_done:  # connected once the stream's headers came
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("closed before the headers")
                parser.feed_data(data)
    except (OSError, httptools.HttpParserError) as exc:
        tally.finals.append(f"not connected ({type(exc).__name__})")
        if writer is not None:
            writer.close()
        return
    finally:
        ready.set()  # connected, or given up: the measurement must not wait for it
    if parser.get_status_code() != 200:
        tally.finals.append(f"refused ({parser.get_status_code()})")
        writer.close()
        return
    since = time.time()
    pending = b""
    event_id = b"0-0"
    try:
        while True:
            if response.body:
                received = time.time()
                lines = (pending + b"".join(response.body)).split(b"\n")
                response.body.clear()
                pending = lines.pop()
                for line in lines:
                    if line.startswith(b"id: "):
                        event_id = line[4:]
                    elif line.startswith(b"data: ") and b'"event":"output"' in line:
                        event = orjson.loads(line[6:])
                        written = float(event["data"].split()[1])
                        if written < since:
                            tally.replayed += 1
                            continue  # written before this listener connected: replayed from the log, not live
                        tally.latencies.append(received - written)
                        # The holder stamps each event (ms precision) as it parses it: the split
                        # shows whether time goes reading the upstream or relaying through the store.
                        tally.stamped.append(unix(event["at"]) - written)
                        # A Redis stream id begins with the time (ms) Redis added the event.
                        tally.stored.append(int(event_id.split(b"-")[0]) / 1000 - written)
                    elif line.startswith(b"event: ") and line[7:] in FINALS:
                        tally.finals.append(line[7:].decode())
                        return
                    elif line.startswith(b"data: ") and direct:  # the upstream's own token: "data: N TIME"
                        tally.latencies.append(received - float(line.split()[2]))
            if response.complete:
                tally.finals.append("ended" if direct else "stream ended before the run")
                return
            data = await reader.read(65536)
            if not data:
                tally.finals.append("stream broken (closed)")
                return
            parser.feed_data(data)
    except (OSError, httptools.HttpParserError) as exc:
        tally.finals.append(f"stream broken ({type(exc).__name__})")
    finally:
        writer.close()


async def listen_all(urls: list[str], direct: bool, ready: Any, results: Any) -> None:
    tally = Tally()
    readies = [asyncio.Event() for _ in urls]
    connecting = asyncio.Semaphore(50)
    tasks = [asyncio.create_task(listen(url, tally, readies[n], connecting, direct)) for n, url in enumerate(urls)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in readies)), 600)
    connected = time.process_time()
    ready.set()
    await asyncio.gather(*tasks)
    tally.cpu = time.process_time() - connected
    results.put(dataclasses.asdict(tally))  # a dict: the class is this script's, named otherwise in its children


def listeners_main(urls: list[str], direct: bool, ready: Any, results: Any) -> None:
    """One of --clients processes, so that the listeners' side of the bench is not the bottleneck."""
    uvloop.run(listen_all(urls, direct, ready, results))


def submit_runs(holder: str, runs: int, count: int, interval: float, aligned: bool) -> list[str]:
    async def submit() -> list[str]:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            url = f"{holder}/tokens?count={count}&interval={interval}&aligned={int(aligned)}&async=true"
            responses = await asyncio.gather(*(client.get(url) for _ in range(runs)))
            return [response.json()["run_id"] for response in responses]

    return asyncio.run(submit())


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def spent(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


def measure(args: argparse.Namespace, upstream: str, holder: str, other: str, pids: dict[str, int]) -> None:
    """``pids``: the gateways (``holder``, ``listener replica``) and the harness's own processes,
    whose CPU is reported beside theirs."""
    gateways = (pids["holder"], pids["listener replica"])
    count = int(args.seconds / args.interval)
    rss_before = [rss_kib(pid) for pid in gateways]
    if args.direct:  # the floor: each listener reads a stream of its own from the upstream, no gateway
        stream = f"{upstream}/tokens?count={count}&interval={args.interval}&aligned={int(args.aligned)}"
        urls = [stream] * (args.runs * args.listeners)
    else:
        run_ids = submit_runs(holder, args.runs, count, args.interval, args.aligned)
        urls = [f"{other}/_asyncgate/runs/{run_id}/events" for run_id in run_ids for _ in range(args.listeners)]
    if args.join_late:
        httpx.post(f"{upstream}/go", trust_env=False).raise_for_status()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    clients = max(1, min(args.clients, len(urls)))
    readies = [context.Event() for _ in range(clients)]
    cpu_before = cpu_of(pids)
    started = time.monotonic()
    processes = [
        context.Process(target=listeners_main, args=(urls[n::clients], args.direct, readies[n], results), daemon=True)
        for n in range(clients)
    ]
    for process in processes:
        process.start()
    for ready in readies:
        if not ready.wait(600):
            raise SystemExit("the listeners did not all connect")
    # CPU from here on is the streams': what connecting the listeners cost is reported apart.
    cpu_connected = cpu_of(pids)
    connecting = time.monotonic() - started
    started = time.monotonic()
    if not args.join_late:
        httpx.post(f"{upstream}/go", trust_env=False).raise_for_status()  # every listener is there: tokens now
    time.sleep(args.seconds / 2)  # the one sleep: the streams are mid-flight, measured now
    rss_during = [rss_kib(pid) for pid in gateways]
    tally = Tally()
    for _ in processes:
        tally.add(Tally(**results.get(timeout=args.seconds * 4 + 120)))
    for process in processes:
        process.join(30)
    cpu = spent(cpu_of(pids), cpu_connected)
    joins = spent(cpu_connected, cpu_before)
    latencies, stamped, stored, replayed = tally.latencies, tally.stamped, tally.stored, tally.replayed
    elapsed = time.monotonic() - started
    latencies.sort()
    listeners = args.runs * args.listeners
    phases = "aligned" if args.aligned else "random phases"
    phases += "; DIRECT from the upstream, no gateway" if args.direct else ""
    joined = "listeners joined mid-stream" if args.join_late else "listeners connected before the first token"
    print(
        f"runs {args.runs}, listeners per run {args.listeners},",
        f"token every {args.interval * 1000:g} ms ({phases}; {joined})",
    )
    ends = dict(collections.Counter(tally.finals))
    print(f"output events received: {len(latencies)} live, {replayed} replayed; runs ended {ends}")
    if latencies:
        for quantile in (0.5, 0.9, 0.99):
            print(f"  p{quantile * 100:g}: {latencies[int(quantile * (len(latencies) - 1))] * 1000:.1f} ms")
        print(f"  max: {latencies[-1] * 1000:.1f} ms")
    if stamped:
        for name, part in (("holder parsed it", stamped), ("Redis added it", stored)):
            part.sort()
            split = ", ".join(f"p{q * 100:g} {part[int(q * (len(part) - 1))] * 1000:.0f} ms" for q in (0.5, 0.99))
            print(f"  of which upstream write -> {name} (ms precision): {split}")
    if not latencies:
        print("no output event was received live (the listeners connected too late): raise --seconds for latencies")
    for name, before, during in zip(("holder", "listener replica"), rss_before, rss_during, strict=True):
        per_listener = (during - before) / listeners
        print(f"{name}: RSS {before} -> {during} KiB ({per_listener:.1f} KiB per listener), CPU {cpu[name]:.2f} s")
    joining = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in joins.items())
    print(f"connecting the listeners took {connecting:.1f} s; CPU meanwhile: {joining}")
    relayed = args.runs * count
    print("once every listener was connected:")
    print(f"CPU per relayed output event (holder, writes): {cpu['holder'] / relayed * 1e6:.0f} us")
    delivered = max(1, len(latencies) + replayed)
    per_delivered = cpu["listener replica"] / delivered * 1e6
    print(f"CPU per delivered output event, live or replayed (listener replica): {per_delivered:.0f} us")
    # Every process of the bench shares this machine's cores: where the latency grows with the
    # load, this says whether the gateways or the harness itself held the cores.
    shares = {**cpu, "listener clients": tally.cpu}
    used = ", ".join(f"{name} {spent / elapsed:.2f}" for name, spent in shares.items())
    print(f"cores used over {elapsed:.0f} s (of {os.cpu_count()}): {used}; total {sum(shares.values()) / elapsed:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--listeners", type=int, default=100, help="listeners per run")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=4, help="processes the listeners are spread over")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="the floor: listeners read the upstream's streams themselves, no gateway between (one stream each)",
    )
    parser.add_argument(
        "--join-late",
        action="store_true",
        help="the streams start before the listeners connect: each listener first replays what it missed",
    )
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="every stream writes its tokens at the same moments (default: at random phases)",
    )
    parser.add_argument(
        "--source", type=Path, help="run the gateways from this checkout's src/ (compare a branch with another)"
    )
    parser.add_argument(
        "--profile-listener", type=Path, help="run the listening gateway under cProfile, its stats written to this file"
    )
    parser.add_argument("--profile-holder", type=Path, help="the same for the gateway holding the runs")
    parser.add_argument("--upstream-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_server:
        upstream_main(args.upstream_server)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the servers
    # Each listener is a socket in a client process and one in the listening gateway.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.runs * args.listeners + 1000:
        print(f"warning: at most {hard} open files per process (ulimit -Hn)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="asyncgate-stream-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_port, upstream_port, holder_port, other_port = (free_port() for _ in range(4))
        redis = shutil.which("redis-server") or "redis-server"
        spawn = processes.append
        spawn(
            subprocess.Popen(
                [redis, "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(work)],
                stdout=subprocess.DEVNULL,
            )
        )
        spawn(subprocess.Popen([sys.executable, __file__, "--upstream-server", str(upstream_port)]))
        environ = {
            **os.environ,
            "ASYNCGATE_ACCESS_MODE": "open",
            "ASYNCGATE_STORE_PLAINTEXT": "true",
            **({"PYTHONPATH": str(args.source.resolve() / "src")} if args.source else {}),
            "ASYNCGATE_DEPLOYMENT": "stream-bench",
            "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
            "ASYNCGATE_LIMITS_MAX_INFLIGHT": str(max(64, args.runs)),
        }
        for port, execute in ((holder_port, "true"), (other_port, "false")):
            profile = args.profile_listener if execute == "false" else args.profile_holder
            command = [sys.executable, *(["-c", PROFILE, str(profile)] if profile else ["-m", "asyncgate"])]
            command += ["serve", "--port", str(port)]
            command += [
                "--upstream",
                f"http://127.0.0.1:{upstream_port}",
                "--redis-url",
                f"redis://127.0.0.1:{redis_port}",
            ]
            spawn(subprocess.Popen(command, env={**environ, "ASYNCGATE_RUNS_EXECUTE": execute}))
        holder, other = f"http://127.0.0.1:{holder_port}", f"http://127.0.0.1:{other_port}"
        for url in (f"http://127.0.0.1:{upstream_port}/", f"{holder}/_asyncgate/readyz", f"{other}/_asyncgate/readyz"):
            wait_ready(url)
        pids = {"holder": processes[2].pid, "listener replica": processes[3].pid}
        pids |= {"redis": processes[0].pid, "upstream": processes[1].pid}
        measure(args, f"http://127.0.0.1:{upstream_port}", holder, other, pids)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
