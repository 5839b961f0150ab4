"""The end-to-end flows on a real three-node Redis Cluster and behind a real Sentinel."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.e2e.conftest import GatewayFactory, Receiver, Upstream
from tests.e2e.test_async import submit
from tests.e2e.test_run_control import calls_with, marker, read_events
from tests.support.wait import wait_until


@pytest.fixture(params=["cluster", "sentinel"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_submit_run_result_and_webhook(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway()
    hook = quote(f"{receiver.url}/hook", safe="")
    run_id = submit(gateway, f"/mirror?async=true&webhookEndpoint={hook}", b"on a cluster")
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").content == b"on a cluster"
    assert wait_until(lambda: receiver.deliveries.for_run(run_id))[0]["body"] == b"on a cluster"
    events = read_events(gateway.client, f"{gateway.prefix}/runs/{run_id}/events")
    assert [e["event"] for e in events][:3] == ["queued", "running", "succeeded"]


def test_cancel_idempotency_and_listing(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    holder = make_gateway()
    tag = marker()
    running = holder.client.get(f"/sleep?seconds=60&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: calls_with(upstream, tag))
    other = make_gateway()
    assert other.client.delete(f"{other.prefix}/runs/{running}").json()["status"] == "cancelled"
    key = {"Idempotency-Key": f"k-{tag}"}
    first = other.client.post("/echo?async=true", content=b"i", headers=key).json()["run_id"]
    again = holder.client.post("/echo?async=true", content=b"i", headers=key)
    assert again.json()["run_id"] == first
    assert again.headers["asyncgate-idempotent-replay"] == "true"
    assert other.wait_final(first)["status"] == "succeeded"  # its end extends the key's TTL in the same script
    listed = [r["run_id"] for r in other.client.get(f"{other.prefix}/runs").json()["runs"]]
    assert listed[:2] == [first, running]
