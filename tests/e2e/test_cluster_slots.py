"""One deployment over a real three-master Cluster's shards (store.slots): every master holds
runs, the flows pass, a SIGKILL'd gateway's runs are recovered and a master's failover is survived."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.e2e.test_async import submit
from tests.e2e.test_faults import arrivals, final
from tests.e2e.test_run_control import calls_with, read_events
from tests.support.gateway_process import Replicas
from tests.support.redis_server import RedisCluster
from tests.support.wait import wait_until

#: As many slots as masters: with the tags spread over the slot ranges, one per master.
SLOTS = 3
#: Runs enough that a master holding none of them is a failure, not bad luck: (2/3)^30 per master.
SPREAD_RUNS = 30


@pytest.fixture(scope="module")
def slotted_server() -> Iterator[RedisCluster]:
    """Three masters with a replica each, and failures detected within a second."""
    cluster = RedisCluster(replicas=1, node_timeout_ms=1000)
    cluster.start()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def store_kind() -> str:
    return "slotted"


def spread(make_gateway: GatewayFactory, **settings: object) -> Gateway:
    return make_gateway({"store.slots": SLOTS, **settings})


def runs_per_master(cluster: RedisCluster, prefix: str) -> list[int]:
    """The run hashes under the deployment's prefix on each master, read behind the gateway's back."""
    counts = []
    for node in cluster.masters():
        reply = node.command(b"KEYS", b"{%s:*}:run:*" % prefix.encode())
        counts.append(int(re.match(rb"\*(\d+)", reply).group(1)) if reply.startswith(b"*") else -1)  # type: ignore[union-attr]
    return counts


def accepted(gateway: Gateway, body: bytes) -> str:
    """A run submitted again while the gateway answers 503, as a client following Retry-After does."""
    response = wait_until(
        lambda: (reply := gateway.client.post("/mirror?async=true", content=body)).status_code != 503 and reply,
        timeout=30,
        message="the gateway to accept runs again",
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def test_every_master_holds_runs_and_they_all_succeed(
    make_gateway: GatewayFactory, receiver: Receiver, slotted_server: RedisCluster
) -> None:
    gateway = spread(make_gateway)
    hook = quote(f"{receiver.url}/hook", safe="")
    run_ids = [submit(gateway, f"/mirror?async=true&webhookEndpoint={hook}", b"run %d" % i) for i in range(SPREAD_RUNS)]

    for index, run_id in enumerate(run_ids):
        assert gateway.wait_final(run_id)["status"] == "succeeded"
        assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").content == b"run %d" % index
    assert wait_until(lambda: all(receiver.deliveries.for_run(run_id) for run_id in run_ids), timeout=15)

    prefix = gateway.config.store.key_prefix
    assert prefix is not None
    counts = runs_per_master(slotted_server, prefix)
    assert len(counts) == 3 and all(count > 0 for count in counts) and sum(counts) == SPREAD_RUNS, counts
    # Listing merges the slots newest first, page after page.
    listed: list[str] = []
    cursor = None
    while True:
        query = "?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = gateway.client.get(f"{gateway.prefix}/runs{query}").json()
        listed += [r["run_id"] for r in page["runs"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert listed == run_ids[::-1]


def test_cancel_idempotency_and_events_across_slots(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    holder = spread(make_gateway)
    other = spread(make_gateway)
    tag = uuid.uuid4().hex[:12]
    running = holder.client.get(f"/sleep?seconds=60&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: calls_with(upstream, tag))
    assert other.client.delete(f"{other.prefix}/runs/{running}").json()["status"] == "cancelled"
    assert holder.wait_final(running)["status"] == "cancelled"
    key = {"Idempotency-Key": f"k-{tag}"}
    first = other.client.post("/echo?async=true", content=b"i", headers=key).json()["run_id"]
    again = holder.client.post("/echo?async=true", content=b"i", headers=key)
    assert again.json()["run_id"] == first
    assert again.headers["asyncgate-idempotent-replay"] == "true"
    assert other.wait_final(first)["status"] == "succeeded"
    events = read_events(other.client, f"{other.prefix}/runs/{first}/events")
    assert [e["event"] for e in events][:3] == ["queued", "running", "succeeded"]


def test_a_killed_gateways_runs_in_every_slot_are_recovered(
    slotted_server: RedisCluster, upstream: Upstream, tmp_path: Path
) -> None:
    replicas = Replicas(upstream.url, slotted_server, tmp_path)
    env = {"ASYNCGATE_STORE_SLOTS": str(SLOTS)}
    try:
        first = replicas(**env)
        tag = uuid.uuid4().hex[:8]
        run_ids = [first.client.get(f"/echo?delay=3&tag={tag}&async=true").json()["run_id"] for _ in range(9)]
        wait_until(lambda: len(arrivals(upstream, tag)) == 9, message="every call reached the upstream")
        first.process.kill()
        second = replicas(**env)

        for run_id in run_ids:
            recovered = final(second, run_id)
            assert (recovered["status"], recovered["attempt"]) == ("succeeded", 2)
        assert len(arrivals(upstream, tag)) == 18
    finally:
        for replica in replicas.started:
            replica.stop()


def test_runs_go_on_through_a_masters_failover(
    make_gateway: GatewayFactory, upstream: Upstream, slotted_server: RedisCluster
) -> None:
    # A lease longer than the failover (a few seconds) and short enough that a queue entry whose
    # read the failover cut is taken over (after one lease) within the test's patience.
    gateway = spread(make_gateway, **{"runs.lease": 10, "runs.lease_renewal": 1})
    before = [submit(gateway, "/mirror?async=true", b"before %d" % i) for i in range(9)]
    for run_id in before:
        assert gateway.wait_final(run_id)["status"] == "succeeded"

    victim = slotted_server.masters()[0]
    assert victim.process is not None
    victim.process.kill()
    victim.process.wait()
    wait_until(lambda: len(slotted_server.masters()) == 3, timeout=30, message="a replica took the master's place")

    # Until the gateway's client learns the new master, a submission may be refused (503, retry later).
    after = [accepted(gateway, b"after %d" % i) for i in range(9)]
    for index, run_id in enumerate(after):
        assert gateway.wait_final(run_id, timeout=30)["status"] == "succeeded"
        assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").content == b"after %d" % index
    for index, run_id in enumerate(before):
        assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").content == b"before %d" % index
    prefix = gateway.config.store.key_prefix
    assert prefix is not None
    assert all(count > 0 for count in runs_per_master(slotted_server, prefix))
