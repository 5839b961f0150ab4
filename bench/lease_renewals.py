"""Redis commands per second while one gateway holds N runs, waiting on a slow upstream (#22).

    python bench/lease_renewals.py                      # 1,000 runs, the tree's src/
    python bench/lease_renewals.py --src /other/src     # the same against another checkout

Everything is real: a redis-server, the gateway as ``python -m asyncgate serve``, an upstream
whose /sleep holds each call. Once all runs are running, INFO stats and INFO commandstats are
read twice, ``--seconds`` apart; the difference is what holding costs (renewals, heartbeats,
recovery passes, the idle claim loop).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.servers import ServerThread  # noqa: E402
from tests.support.upstream import Calls, upstream_app  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402


def stats(redis: RedisServer) -> tuple[int, dict[str, int]]:
    """total_commands_processed, and calls per command (scripts' own commands included)."""
    total = int(re.search(rb"total_commands_processed:(\d+)", redis.command(b"INFO", b"stats")).group(1))  # type: ignore[union-attr]
    calls = {
        name.decode(): int(count)
        for name, count in re.findall(rb"cmdstat_([a-z|]+):calls=(\d+)", redis.command(b"INFO", b"commandstats"))
    }
    return total, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the asyncgate sources to measure")
    args = parser.parse_args()

    redis = RedisServer()
    redis.start()
    upstream = ServerThread(upstream_app(Calls())).start()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": args.src,
        "ASYNCGATE_LIMITS_MAX_INFLIGHT": str(args.runs),
        "ASYNCGATE_ACCESS_MODE": "open",
        "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
    }
    serve = ["serve", "--upstream", upstream.url, "--port", str(port), "--redis-url", redis.url]
    gateway = subprocess.Popen([sys.executable, "-m", "asyncgate", *serve], env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as client:
            wait_until(lambda: _ready(client), timeout=20, message="gateway ready")
            for _ in range(args.runs):
                assert client.get("/sleep?seconds=600&async=true").status_code == 202
        leases = b"{asyncgate}:leases"
        wait_until(
            lambda: redis.command(b"ZCARD", leases) == b":%d\r\n" % args.runs,
            timeout=60,
            message="every run running",
        )
        total0, calls0 = stats(redis)
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started >= args.seconds, timeout=args.seconds + 5)
        total1, calls1 = stats(redis)
        elapsed = time.monotonic() - started
        print(f"src: {args.src}; {args.runs} runs held; {elapsed:.1f} s")
        print(f"total_commands_processed: {(total1 - total0) / elapsed:.1f}/s")
        for name in sorted(calls1):
            rate = (calls1[name] - calls0.get(name, 0)) / elapsed
            if rate >= 0.05:
                print(f"  {name}: {rate:.1f}/s")
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
