"""Fault injection with real gateway processes sharing one real Redis: kill -9, SIGSTOP, SIGTERM.

Invariants checked: every accepted run reaches a final state; a run is re-sent only when its
request is safe to repeat; the stored result belongs to the run's last attempt.
"""

from __future__ import annotations

import concurrent.futures
import signal
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Upstream
from tests.support.gateway_process import GatewayProcess, Replicas
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until


def arrivals(upstream: Upstream, tag: str) -> list[dict[str, Any]]:
    return [c for c in upstream.calls.all() if c.get("event") == "arrived" and tag in c["query"]]


def final(replica: GatewayProcess, run_id: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(
        lambda: (r := replica.run(run_id))["status"] in ("succeeded", "failed", "cancelled") and r,
        timeout=timeout,
        message=f"run {run_id} final",
    )


@pytest.mark.parametrize("replicas", ["standalone", "cluster"], indirect=True)
def test_sigkill_recovers_safe_runs_and_fails_unsafe_ones(replicas: Replicas, upstream: Upstream) -> None:
    first = replicas()
    tag = uuid.uuid4().hex[:8]
    get_run = first.client.get(f"/echo?delay=3&tag={tag}g&async=true").json()["run_id"]
    post_run = first.client.post(f"/echo?delay=3&tag={tag}p&async=true", content=b"charge").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="both calls reached the upstream")
    # Killed before the next one starts: a slow start must not outlast the calls it interrupts.
    first.process.kill()
    second = replicas()

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


def test_a_paused_holder_cannot_overwrite_the_attempt_that_replaced_it(replicas: Replicas, upstream: Upstream) -> None:
    first = replicas()
    tag = uuid.uuid4().hex[:8]
    run_id = first.client.get(f"/echo?delay=2&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, tag), message="first attempt arrived")
    first.process.send_signal(signal.SIGSTOP)  # before the next one starts, which may take longer than the call
    second = replicas()
    done = final(second, run_id)
    assert done["attempt"] == 2
    first.process.send_signal(signal.SIGCONT)
    # The first attempt's call ends after its pause; its outcome must be refused by the fence.
    wait_until(lambda: len(arrivals(upstream, tag)) == 2)
    result = second.client.get(f"/_asyncgate/runs/{run_id}/result").json()
    assert dict(result["headers"])["asyncgate-attempt"] == "2"
    assert second.run(run_id)["attempt"] == 2


def test_sigterm_drains_and_hands_back_at_once(replicas: Replicas, upstream: Upstream) -> None:
    # A long lease proves the hand-back is immediate, not a lease expiring.
    second = replicas(ASYNCGATE_RUNS_LEASE="60", ASYNCGATE_LIMITS_MAX_INFLIGHT="1")
    tag = uuid.uuid4().hex[:8]
    # The second replica, alone, takes a run held at a gate: full, it leaves the next runs to the
    # first, which starts only then (up together, either could have taken any of them).
    busy = second.client.get(f"/echo?delay=0&gate={tag}&tag={tag}b&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, f"{tag}b"))
    first = replicas(ASYNCGATE_RUNS_LEASE="60", ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT="1")
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
    assert f"run {slow}: handed back on shutdown, queued again after attempt 1" in first.log_text()
    assert final(second, quick)["status"] == "succeeded"
    assert second.run(slow)["status"] == "queued"  # handed back, waiting for room on the second
    assert httpx.post(f"{upstream.url}/gates/{tag}").status_code == 204
    assert final(second, busy)["status"] == "succeeded"
    handed_back = wait_until(lambda: (r := second.run(slow))["attempt"] == 2 and r, timeout=10)
    assert handed_back["status"] == "running"


def test_a_rolling_restart_under_steady_load_loses_nothing(replicas: Replicas, upstream: Upstream) -> None:
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


def completed(upstream: Upstream, tag: str) -> list[dict[str, Any]]:
    """The calls the upstream answered (it records a call once its delay is over)."""
    return [c for c in upstream.calls.all() if c.get("path") == "/echo" and tag in c["query"]]


def test_a_drain_longer_than_the_lease_keeps_its_runs(replicas: Replicas, upstream: Upstream) -> None:
    # Leases of 1.5 s, a drain window of 8 s: only renewals during the drain keep the second
    # replica from reclaiming the runs, re-sending the GET and failing the POST as lost (#22).
    first = replicas(ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT="8")
    tag = uuid.uuid4().hex[:8]
    post = first.client.post(f"/echo?delay=3&tag={tag}p&async=true", content=b"charge").json()["run_id"]
    get = first.client.get(f"/echo?delay=3&tag={tag}g&async=true").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="both calls reached the upstream")
    second = replicas()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=20) == 0
    for run_id in (post, get):
        done = final(second, run_id)
        assert (done["status"], done["attempt"], done["error"]) == ("succeeded", 1, None), done
    assert len(arrivals(upstream, tag)) == 2  # nothing was sent twice
    assert "lease lost" not in first.log_text()
    assert "Traceback" not in first.log_text() + second.log_text()


def test_a_store_outage_longer_than_the_lease_declares_no_live_holder_lost(
    replicas: Replicas, upstream: Upstream
) -> None:
    first, second = replicas(), replicas()
    tag = uuid.uuid4().hex[:8]
    post = first.client.post(f"/echo?delay=4&tag={tag}p&async=true", content=b"charge").json()["run_id"]
    get = second.client.get(f"/echo?delay=4&tag={tag}g&async=true").json()["run_id"]
    wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="both calls reached the upstream")
    assert isinstance(replicas.redis, RedisServer)
    replicas.redis.stop()
    # Down until both answers arrived: about 4 s, more than twice the lease of 1.5 s.
    wait_until(lambda: len(completed(upstream, tag)) == 2, timeout=15, message="the upstream answered both")
    assert first.client.post("/echo?async=true", content=b"x").status_code == 503
    replicas.redis.start()  # from its AOF: every lease in it has run out meanwhile
    for run_id in (post, get):
        done = final(first, run_id)
        assert (done["status"], done["attempt"], done["error"]) == ("succeeded", 1, None), done
    assert len(arrivals(upstream, tag)) == 2  # neither was sent again
    logs = first.log_text() + second.log_text()
    assert "holder lost" not in logs
    assert "Traceback" not in logs
