"""``asyncgate serve`` as a real process: for what only a process shows (signals, exports at exit, restarts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.clients import client_for
from tests.support.redis_server import RedisCluster, RedisServer, free_port
from tests.support.sealing import ENCRYPTION_KEY_ENV
from tests.support.wait import wait_until


class GatewayProcess:
    """``asyncgate serve ARGS`` on a free port of 127.0.0.1, its stderr appended to ``log``; ready when
    its readiness check answers 200.

    Settings come from ``env`` alone, not from ASYNCGATE_* variables of the shell running the tests
    (or the chaos test's own knobs, which the gateway would refuse as unknown).
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("ASYNCGATE_")}
        command = [sys.executable, "-m", "asyncgate", "serve", "--port", str(self.port), *args]
        # A file rather than a pipe: nobody reads a pipe while the gateway runs, and a full one would stall it.
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(command, env={**inherited, **env}, stdout=subprocess.DEVNULL, stderr=stderr)
        self.client = client_for(self.url, timeout=10)
        wait_until(self._ready, timeout=20, message="gateway process ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"the gateway exited:\n{self.log_text()}"
        try:
            return self.client.get("/_asyncgate/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def run(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(f"/_asyncgate/runs/{run_id}").json()
        return data

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> str:
        """SIGTERM, as an orchestrator stops it (drain, hand back, flush), then its log."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        return self.log_text()

    def stop(self) -> None:
        """Kill it at once (woken first, in case a test paused it with SIGSTOP)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


#: Leases, renewals and polls short enough that a test sees a lost gateway's runs taken over in seconds.
FAST_LEASES = {
    "ASYNCGATE_RUNS_LEASE": "1.5",
    "ASYNCGATE_RUNS_LEASE_RENEWAL": "0.3",
    "ASYNCGATE_RUNS_RECOVERY_INTERVAL": "0.3",
    "ASYNCGATE_RUNS_POLL_INTERVAL": "0.2",
    "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
    "ASYNCGATE_ACCESS_MODE": "open",
}


def start_replica(upstream: str, redis_url: str, prefix: str, env: Mapping[str, str], log: Path) -> GatewayProcess:
    """One gateway of a fleet sharing ``redis_url`` under ``prefix``, on FAST_LEASES unless ``env`` says otherwise."""
    environ = {**FAST_LEASES, **ENCRYPTION_KEY_ENV, **env, "ASYNCGATE_STORE_KEY_PREFIX": prefix}
    return GatewayProcess(["--upstream", upstream, "--redis-url", redis_url], environ, log)


class Replicas:
    """Starts gateway processes sharing one Redis, each logging to a file of its own."""

    def __init__(self, upstream: str, redis: RedisServer | RedisCluster, logs: Path) -> None:
        self.upstream = upstream
        self.redis = redis
        self.logs = logs
        self.prefix = f"f{uuid.uuid4().hex[:10]}"
        self.started: list[GatewayProcess] = []

    def __call__(self, **env: str) -> GatewayProcess:
        log = self.logs / f"replica-{len(self.started)}.log"
        replica = start_replica(self.upstream, self.redis.url, self.prefix, env, log)
        self.started.append(replica)
        return replica
