"""Fault injection with real gateway processes sharing one real Redis: kill -9, SIGSTOP, SIGTERM.

Invariants checked: every accepted run reaches a final state; a run is re-sent only when its
request is safe to repeat; the stored result belongs to the run's last attempt.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Upstream
from tests.support.redis_server import RedisCluster, RedisServer, free_port
from tests.support.sealing import ENCRYPTION_KEY_ENV
from tests.support.wait import wait_until

FAST_LEASES = {
    "ASYNCGATE_RUNS_LEASE": "1.5",
    "ASYNCGATE_RUNS_LEASE_RENEWAL": "0.3",
    "ASYNCGATE_RUNS_RECOVERY_INTERVAL": "0.3",
    "ASYNCGATE_RUNS_POLL_INTERVAL": "0.2",
    "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
    "ASYNCGATE_ACCESS_MODE": "open",
}


class Replica:
    def __init__(self, upstream: str, redis_url: str, prefix: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, **FAST_LEASES, **ENCRYPTION_KEY_ENV, **env, "ASYNCGATE_STORE_KEY_PREFIX": prefix}
        args = ["serve", "--upstream", upstream, "--port", str(self.port), "--redis-url", redis_url]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asyncgate", *args],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)
        wait_until(self._ready, timeout=20, message="replica ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, "replica exited"
        try:
            return self.client.get("/_asyncgate/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def run(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(f"/_asyncgate/runs/{run_id}").json()
        return data

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def replicas(upstream: Upstream, request: pytest.FixtureRequest) -> Iterator[Callable[..., Replica]]:
    """Replica processes sharing one Redis: a single server with AOF, or (param "cluster") a Cluster."""
    redis: RedisServer | RedisCluster = (
        RedisCluster() if getattr(request, "param", "") == "cluster" else (RedisServer(appendonly=True))
    )
    redis.start()
    prefix = f"f{uuid.uuid4().hex[:10]}"
    started: list[Replica] = []

    def start(**env: str) -> Replica:
        replica = Replica(upstream.url, redis.url, prefix, env)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
    redis.cleanup()


def arrivals(upstream: Upstream, tag: str) -> list[dict[str, Any]]:
    return [c for c in upstream.calls.all() if c.get("event") == "arrived" and tag in c["query"]]


def final(replica: Replica, run_id: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(
        lambda: (r := replica.run(run_id))["status"] in ("succeeded", "failed", "cancelled") and r,
        timeout=timeout,
        message=f"run {run_id} final",
    )


@pytest.mark.parametrize("replicas", ["standalone", "cluster"], indirect=True)
def test_sigkill_recovers_safe_runs_and_fails_unsafe_ones(replicas: Callable[..., Replica], upstream: Upstream) -> None:
    first = replicas()
    tag = uuid.uuid4().hex[:8]
    get_run = first.client.get(f"/echo?delay=3&tag={tag}g&async=true").json()["run_id"]
    post_run = first.client.post(f"/echo?delay=3&tag={tag}p&async=true", content=b"charge").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="both calls reached the upstream")
    second = replicas()
    first.process.kill()

    recovered = final(second, get_run)
    assert recovered["status"] == "succeeded"
    assert recovered["attempt"] == 2
    result = second.client.get(f"/_asyncgate/runs/{get_run}/result").json()
    assert dict(result["headers"])["asyncgate-attempt"] == "2"
    lost = final(second, post_run)
    assert lost["status"] == "failed"
    assert lost["error"]["code"] == "lost"
    assert len(arrivals(upstream, f"{tag}g")) == 2
    assert len(arrivals(upstream, f"{tag}p")) == 1  # never re-sent: it may have taken effect


def test_a_paused_holder_cannot_overwrite_the_attempt_that_replaced_it(
    replicas: Callable[..., Replica], upstream: Upstream
) -> None:
    first = replicas()
    tag = uuid.uuid4().hex[:8]
    run_id = first.client.get(f"/echo?delay=2&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, tag), message="first attempt arrived")
    second = replicas()
    first.process.send_signal(signal.SIGSTOP)
    done = final(second, run_id)
    assert done["attempt"] == 2
    first.process.send_signal(signal.SIGCONT)
    # The first attempt's call ends after its pause; its outcome must be refused by the fence.
    wait_until(lambda: len(arrivals(upstream, tag)) == 2)
    result = second.client.get(f"/_asyncgate/runs/{run_id}/result").json()
    assert dict(result["headers"])["asyncgate-attempt"] == "2"
    assert second.run(run_id)["attempt"] == 2


def test_sigterm_drains_and_hands_back_at_once(replicas: Callable[..., Replica], upstream: Upstream) -> None:
    # A long lease proves the hand-back is immediate, not a lease expiring.
    first = replicas(ASYNCGATE_RUNS_LEASE="60", ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT="1")
    second = replicas(ASYNCGATE_RUNS_LEASE="60", ASYNCGATE_LIMITS_MAX_INFLIGHT="1")
    tag = uuid.uuid4().hex[:8]
    # Keep the second replica busy so the run lands on the first.
    busy = second.client.get(f"/echo?delay=2&tag={tag}b&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, f"{tag}b"))
    quick = first.client.get(f"/echo?delay=0.2&tag={tag}q&async=true").json()["run_id"]
    slow = first.client.get(f"/echo?delay=30&tag={tag}s&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, f"{tag}s") and arrivals(upstream, f"{tag}q"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # A synchronous request in flight when the signal comes is answered, not cut.
        sync = pool.submit(first.client.get, f"/echo?delay=1&tag={tag}y")
        wait_until(lambda: arrivals(upstream, f"{tag}y"))
        first.process.send_signal(signal.SIGTERM)
        assert sync.result(timeout=15).status_code == 200
    assert first.process.wait(timeout=15) == 0
    assert final(second, quick)["status"] == "succeeded"
    handed_back = wait_until(lambda: (r := second.run(slow))["attempt"] == 2 and r, timeout=10)
    assert handed_back["status"] == "running"
    assert final(second, busy)["status"] == "succeeded"


def test_a_rolling_restart_under_steady_load_loses_nothing(
    replicas: Callable[..., Replica], upstream: Upstream
) -> None:
    settings = {"ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT": "0.5"}
    pool = [replicas(**settings) for _ in range(3)]
    tag = uuid.uuid4().hex[:8]
    accepted: list[str] = []

    def submit_round() -> None:
        for replica in pool:
            response = replica.client.get(f"/echo?delay=0.3&tag={tag}-{len(accepted)}&async=true")
            assert response.status_code == 202
            accepted.append(response.json()["run_id"])

    for position in range(3):
        submit_round()
        leaving = pool[position]
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(timeout=15) == 0
        pool[position] = replicas(**settings)
        submit_round()
    # The ledger: every accepted run ends, and succeeds (GETs are safe to re-send after a hand-back).
    for run_id in accepted:
        status = final(pool[0], run_id, timeout=30)
        assert status["status"] == "succeeded", status
    assert len(accepted) == 18
