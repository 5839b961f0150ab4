"""Two gateways sharing one Redis: any replica answers for any run, whichever holds it."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.conftest import GatewayFactory, Upstream
from tests.e2e.test_run_control import calls_with, read_events
from tests.support.wait import wait_until


@pytest.fixture
def store_kind() -> str:
    return "redis"


def test_cancel_from_the_replica_that_does_not_hold_the_run(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    holder = make_gateway()
    tag = uuid.uuid4().hex[:8]
    run_id = holder.client.get(f"/sleep?seconds=60&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: calls_with(upstream, tag), message="the holder called the upstream")
    # The second replica starts after the run was claimed: it cannot be the holder.
    other = make_gateway()
    started = time.monotonic()
    response = other.client.delete(f"{other.prefix}/runs/{run_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 1.5
    wait_until(
        lambda: any(c.get("event") == "disconnected" and tag in c.get("query", "") for c in upstream.calls.all()),
        message="the upstream saw the holder's call aborted",
    )
    assert holder.run(run_id)["status"] == "cancelled"


def test_events_and_results_from_either_replica(make_gateway: GatewayFactory) -> None:
    first, second = make_gateway(), make_gateway()
    run_id = first.client.get("/sleep?seconds=0.5&async=true").json()["run_id"]
    events = read_events(second.client, f"{second.prefix}/runs/{run_id}/events")
    assert [e["event"] for e in events] == ["queued", "running", "succeeded"]
    assert second.client.get(f"{second.prefix}/runs/{run_id}/result").json()["slept"] == 0.5
    assert first.run(run_id) == second.run(run_id)


def test_queued_runs_spread_over_replicas(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    first = make_gateway({"limits.max_inflight": 2})
    second = make_gateway({"limits.max_inflight": 2})
    tag = uuid.uuid4().hex[:8]
    run_ids = [first.client.get(f"/sleep?seconds=1&tag={tag}&async=true").json()["run_id"] for _ in range(4)]
    # Each replica holds at most two at once, so four running at once means both took work.
    wait_until(lambda: len(calls_with(upstream, tag)) == 4, message="all four running")
    for run_id in run_ids:
        assert second.wait_final(run_id)["status"] == "succeeded"
