"""What holding runs, and one run's life, cost Redis, counted by Redis itself (#18).

    python bench/holding.py                                  # idle, 1,000 and 10,000 held; 500 runs' lives
    python bench/holding.py --held 1000 --lives 200          # smaller
    python bench/holding.py --src /other/src                 # the same against another checkout
    python bench/holding.py --slots 3                        # runs spread over 3 hash tags (store.slots)

Everything is real: a redis-server, one gateway as ``python -m asyncgate serve`` with its default
settings (lease 30 s, renewal 5 s, recovery 10 s), an upstream in this process. Redis counts every
command it executes, those inside scripts included (INFO ``total_commands_processed``), and the
CPU it used (INFO ``used_cpu_sys`` + ``used_cpu_user``).

1. idle: the gateway holds nothing for ``--seconds``: its heartbeat, recovery passes, claim loop.
2. lives: ``--lives`` runs (``POST /echo``, 1 KiB) submitted together and run to their end, twice:
   the commands executed and Redis's CPU per run; then, under MONITOR (which tells a script's
   commands from the client's), the gateway's own commands per run (round trips at most:
   pipelined ones count each), the idle rate taken off.
3. held: for each N of ``--held``, N runs wait on an upstream that answers after an hour; once
   the gateway holds them all, the same window as idle.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.sealing import ENCRYPTION_KEY_ENV  # noqa: E402
from tests.support.servers import ServerThread  # noqa: E402
from tests.support.upstream import Calls, upstream_app  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

PREFIX = b"{bench}"
BODY = b"x" * 1024
#: Commands that take this long or more are reported: the target is that none takes 1 ms.
SLOW_US = 500


class Monitor:
    """MONITOR on a connection of its own: counts the client's commands and the scripts' apart."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.client = 0
        self.lua = 0
        self.names: dict[str, int] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            with self.lock:
                for line in lines:
                    match = re.match(rb'\+\d+\.\d+ \[\d+ ([^\]]+)\] "([A-Za-z|]+)"', line)
                    if match is None:
                        continue
                    name = match.group(2).decode().lower()
                    if name in ("info", "monitor"):
                        continue  # the bench's own
                    if match.group(1) == b"lua":
                        self.lua += 1
                        name = f"{name} (script)"
                    else:
                        self.client += 1
                    self.names[name] = self.names.get(name, 0) + 1

    def read(self) -> tuple[int, int, dict[str, int]]:
        with self.lock:
            return self.client, self.lua, dict(self.names)

    def close(self) -> None:
        self.sock.close()


def info(redis: RedisServer) -> tuple[int, float]:
    """total_commands_processed, and the CPU seconds Redis used (system + user)."""
    text = redis.command(b"INFO", b"all")
    total = int(re.search(rb"total_commands_processed:(\d+)", text).group(1))  # type: ignore[union-attr]
    cpu = sum(float(x) for x in re.findall(rb"used_cpu_(?:sys|user):([\d.]+)", text))
    return total, cpu


def memory(redis: RedisServer, pid: int) -> tuple[int, int]:
    """Redis's used_memory and the gateway's resident set, in bytes."""
    used = int(re.search(rb"used_memory:(\d+)", redis.command(b"INFO", b"memory")).group(1))  # type: ignore[union-attr]
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    return used, rss


def window(redis: RedisServer, seconds: float) -> tuple[float, float]:
    """Commands per second (the bench's own INFO taken off) and Redis CPU in % of a core."""
    total0, cpu0 = info(redis)
    started = time.monotonic()
    time.sleep(seconds)
    total1, cpu1 = info(redis)
    elapsed = time.monotonic() - started
    return (total1 - total0 - 1) / elapsed, 100 * (cpu1 - cpu0) / elapsed


def finished(client: httpx.Client) -> int:
    text = client.get("/_asyncgate/metrics").text
    return int(sum(float(v) for v in re.findall(r"^asyncgate_runs_finished_total\{[^}]*\} ([\d.e+]+)$", text, re.M)))


def holds(redis: RedisServer, count: int) -> bool:
    return held(redis) >= count


def slowlog(redis: RedisServer) -> str:
    """How many commands blocked Redis for SLOW_US or more, and the latest ones."""
    count = int(re.search(rb":(\d+)", redis.command(b"SLOWLOG", b"LEN")).group(1))  # type: ignore[union-attr]
    reply = redis.command(b"SLOWLOG", b"GET", b"10")
    # Each entry: id, timestamp, duration in microseconds, then the command's arguments.
    entries = re.findall(rb"\*[46]\r\n:\d+\r\n:\d+\r\n:(\d+)\r\n\*\d+\r\n\$\d+\r\n([A-Za-z]+)", reply)
    if not count:
        return f"no command or script blocked Redis for {SLOW_US} us or more"
    slowest = sorted(((int(us), name.decode().lower()) for us, name in entries), reverse=True)
    shown = ", ".join(f"{name} {us} us" for us, name in slowest[:10])
    return f"{count} commands blocked Redis for {SLOW_US} us or more; the latest: {shown}"


def held(redis: RedisServer) -> int:
    # Every slot's index (store.slots: the tags are {bench}, or {bench:k.j} with several).
    names = re.findall(rb"\r\n([^$*\r][^\r]*:(?:held|leases))\r\n", redis.command(b"KEYS", b"{bench*}:[hl]e*"))
    reply = b"".join(redis.command(b"ZCARD", name) for name in names)
    return sum(int(n) for n in re.findall(rb":(\d+)\r\n", reply))


def submit(base: str, path: str, count: int, body: bytes | None = None) -> None:
    def some(n: int) -> None:
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            for _ in range(n):
                response = client.request("POST" if body else "GET", path, content=body)
                assert response.status_code == 202, response.text

    workers = 16
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(some, count // workers + (i < count % workers)) for i in range(workers)]:
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", default="1000,10000", help="numbers of runs held, comma-separated, ascending")
    parser.add_argument("--lives", type=int, default=500, help="runs taken from submit to their end")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the asyncgate sources to measure")
    parser.add_argument("--slots", type=int, default=1, help="store.slots: hash tags the runs are spread over")
    args = parser.parse_args()
    counts = [int(n) for n in args.held.split(",") if n]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    redis = RedisServer()
    redis.start()
    # Every command or script that blocks Redis for SLOW_US or more is logged (SLOWLOG).
    redis.command(b"CONFIG", b"SET", b"slowlog-log-slower-than", b"%d" % SLOW_US)
    redis.command(b"CONFIG", b"SET", b"slowlog-max-len", b"1000")
    upstream = ServerThread(upstream_app(Calls())).start()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCGATE_")},
        **ENCRYPTION_KEY_ENV,
        "PYTHONPATH": args.src,
        "ASYNCGATE_LIMITS_MAX_INFLIGHT": str(max(counts, default=64)),
        "ASYNCGATE_LIMITS_MAX_QUEUED": str(2 * max(counts, default=64)),
        "ASYNCGATE_ACCESS_MODE": "open",
        "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
        "ASYNCGATE_STORE_KEY_PREFIX": "bench",
        **({"ASYNCGATE_STORE_SLOTS": str(args.slots)} if args.slots > 1 else {}),
    }
    serve = [
        "serve",
        "--deployment",
        "bench",
        "--upstream",
        upstream.url,
        "--port",
        str(port),
        "--redis-url",
        redis.url,
    ]
    gateway = subprocess.Popen([sys.executable, "-m", "asyncgate", *serve], env=env)
    base = f"http://127.0.0.1:{port}"
    print(f"src: {args.src}; window {args.seconds:g} s; default lease settings")
    try:
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            wait_until(lambda: _ready(client), timeout=20, message="gateway ready")
            time.sleep(6)  # past the first heartbeat and recovery pass
            idle, idle_cpu = window(redis, args.seconds)
            print(f"idle: {idle:.1f} commands/s, Redis CPU {idle_cpu:.2f} %")
            used0, rss0 = memory(redis, gateway.pid)

            # Once without MONITOR, which costs Redis CPU of its own: commands and CPU per run.
            total0, cpu0 = info(redis)
            done0 = finished(client)
            started = time.monotonic()
            submit(base, "/echo?async=true", args.lives, BODY)
            wait_until(lambda: finished(client) - done0 >= args.lives, timeout=120, message="every run finished")
            elapsed = time.monotonic() - started
            total1, cpu1 = info(redis)
            executed = (total1 - total0 - 1 - idle * elapsed) / args.lives
            print(
                f"one run's life ({args.lives} runs submitted together, {elapsed:.1f} s): "
                f"{executed:.1f} commands executed per run, Redis CPU {(cpu1 - cpu0) / args.lives * 1e6:.0f} us per run"
            )

            monitor = Monitor(redis.port)
            time.sleep(args.seconds / 2)
            idle_client, idle_lua, _ = monitor.read()
            idle_span = args.seconds / 2
            total0, cpu0 = info(redis)
            client0, lua0, names0 = monitor.read()
            done0 = finished(client)
            started = time.monotonic()
            submit(base, "/echo?async=true", args.lives, BODY)
            wait_until(lambda: finished(client) - done0 >= args.lives, timeout=120, message="every run finished")
            elapsed = time.monotonic() - started
            total1, cpu1 = info(redis)
            client1, lua1, names1 = monitor.read()
            monitor.close()
            executed = (total1 - total0 - 1 - idle * elapsed) / args.lives
            trips = (client1 - client0 - idle_client / idle_span * elapsed) / args.lives
            inside = (lua1 - lua0 - idle_lua / idle_span * elapsed) / args.lives
            print(
                f"again under MONITOR: {executed:.1f} commands executed per run, of which {trips:.1f} sent by the "
                f"gateway (round trips at most) and {inside:.1f} run by its scripts"
            )
            per_name = {n: (names1.get(n, 0) - names0.get(n, 0)) / args.lives for n in names1}
            print("  per run: " + ", ".join(f"{n} {c:.2f}" for n, c in sorted(per_name.items()) if c))

            # A finished run leaves {P}:held with the gateway's next heartbeat (runs.lease_renewal):
            # until then the lives' runs would count as held.
            wait_until(lambda: held(redis) == 0, timeout=30, message="the finished runs out of the held index")
            for count in counts:
                more = count - held(redis)
                submit(base, "/sleep?seconds=3600&async=true", more)
                wait_until(functools.partial(holds, redis, count), timeout=300, message=f"{count} runs held")
                time.sleep(6)
                rate, cpu = window(redis, args.seconds)
                used, rss = memory(redis, gateway.pid)
                print(
                    f"held {count}: {rate:.1f} commands/s ({rate - idle:+.1f} vs idle), Redis CPU {cpu:.2f} %; "
                    f"per held run: Redis {(used - used0) / count / 1024:.2f} KiB, gateway RSS "
                    f"{(rss - rss0) / count / 1024:.1f} KiB (the lives' finished runs included)"
                )
        print(slowlog(redis))
    finally:
        gateway.kill()
        gateway.wait()
        upstream.stop()
        redis.cleanup()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/_asyncgate/readyz").status_code == 200
    except httpx.TransportError:
        return False


if __name__ == "__main__":
    main()
