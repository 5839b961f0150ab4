"""Priorities, queue deadlines and fair shares over real sockets, on both stores and across two replicas."""

from __future__ import annotations

import functools
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.e2e.test_run_control import calls_with
from tests.support.wait import wait_until

FLOOD = {"Authorization": "Bearer flooding-caller"}
VIP = {"Authorization": "Bearer interactive-caller"}
SHARE = 6


def settings(**more: Any) -> dict[str, Any]:
    """One slot per gateway, callers told apart by their token, one route whose callers may raise priority."""
    route = {"name": "work", "path": "/sleep", "priority": 0, "priority_max": 9, "share": SHARE}
    return {
        "access.mode": "header",
        "limits.max_inflight": 1,
        "routes": [route, {"name": "echo", "path": "/echo/**", "queue_deadline": "30s"}],
        **more,
    }


def submit(client: httpx.Client, path: str, headers: dict[str, str]) -> httpx.Response:
    return client.post(f"{path}{'&' if '?' in path else '?'}async=true", headers=headers, content=b"x")


def share_counts(gateway: Gateway) -> dict[str, int]:
    """The share counters, read behind the gateway's back: every run's end must bring its own back."""
    store = gateway.config.store
    if store.redis_url:
        cluster = store.redis_url.startswith("redis+cluster://")
        first = "redis://" + store.redis_url.split("://", 1)[1].split(",")[0]
        client: Any = RedisCluster.from_url(first) if cluster else redis.Redis.from_url(store.redis_url)
        try:
            return {k.decode(): int(v) for k, v in client.hgetall(f"{{{store.key_prefix}}}:shares").items()}
        finally:
            client.close()
    with sqlite3.connect(Path(store.data_dir) / "asyncgate.db") as db:
        return dict(db.execute("SELECT name, runs FROM shares").fetchall())


def succeeded(gateway: Gateway, run_id: str, who: dict[str, str]) -> dict[str, Any] | None:
    """The run's status once it succeeded, else None."""
    status: dict[str, Any] = gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=who).json()
    return status if status["status"] == "succeeded" else None


def started_order(upstream: Upstream, tag: str) -> list[str]:
    """The ``who`` of each upstream call carrying ``tag``, in the order the upstream saw them."""
    return [str(call["query"]).split("who=")[1].split("&")[0] for call in calls_with(upstream, tag)]


def flood_then_vip(first: Gateway, second: Gateway, upstream: Upstream) -> None:
    """A caller floods the one route to its share; another caller's high-priority run overtakes the flood."""
    tag = uuid.uuid4().hex[:8]
    flood = []
    for index in range(SHARE):
        client = (first, second)[index % 2].client
        # Long enough that none ends (giving its share back) before the refusals below.
        response = submit(client, f"/sleep?seconds=1&tag={tag}&who=flood{index}", FLOOD)
        assert response.status_code == 202, response.text
        flood.append(response.json()["run_id"])
    for gateway in (first, second):
        refused = submit(gateway.client, f"/sleep?seconds=0.3&tag={tag}&who=over", FLOOD)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {
            "error": {
                "code": "share_exceeded",
                "message": f"this caller holds {SHARE} runs queued or running on route work; retry once one has ended",
            }
        }
    queued = first.client.get(f"{first.prefix}/runs/{flood[-1]}", headers=FLOOD).json()
    assert queued["status"] == "queued" and queued["queue"]["ahead"] >= 1
    vip = submit(second.client, f"/sleep?seconds=0.3&tag={tag}&who=vip", {**VIP, "Asyncgate-Priority": "9"})
    assert vip.status_code == 202, vip.text
    vip_id = vip.json()["run_id"]
    assert first.client.get(f"{first.prefix}/runs/{vip_id}", headers=VIP).json()["priority"] == 9
    for run_id, who in [(vip_id, VIP), *((run_id, FLOOD) for run_id in flood)]:
        done = wait_until(functools.partial(succeeded, first, run_id, who), timeout=20, message=run_id)
        assert "queue" not in done
    order = started_order(upstream, tag)
    assert "over" not in "".join(order)
    # The flood's runs that had started (one per slot), at most one more taken by a starvation
    # round, then the high-priority run: never behind the rest of the flood.
    slots = 2 if first is not second else 1
    assert order.index("vip") <= slots + 1, order
    assert sorted(order) == sorted(["vip", *(f"flood{i}" for i in range(SHARE))])
    assert share_counts(first) == {}
    assert submit(first.client, f"/sleep?seconds=0&tag={tag}&who=again", FLOOD).status_code == 202


def test_a_flood_is_capped_by_its_share_and_a_high_priority_run_overtakes_it(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gateway = make_gateway(settings())
    flood_then_vip(gateway, gateway, upstream)


# On a Cluster too: every key of a deployment, the new ones included, is in one slot.
@pytest.mark.parametrize("store_kind", ["redis", "cluster"])
def test_two_replicas_share_the_counters_and_the_priority_order(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    first, second = make_gateway(settings()), make_gateway(settings())
    flood_then_vip(first, second, upstream)


def test_a_caller_asking_for_a_priority_outside_the_route_gets_400(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(settings())
    for path, value in (("/sleep?seconds=0", "10"), ("/sleep?seconds=0", "high"), ("/echo/x", "1")):
        response = submit(gateway.client, path, {**VIP, "Asyncgate-Priority": value})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_priority"
    too_long = submit(gateway.client, "/echo/x", {**VIP, "Asyncgate-Queue-Deadline": "31"})
    assert too_long.status_code == 400
    assert too_long.json() == {
        "error": {
            "code": "invalid_queue_deadline",
            "message": "Asyncgate-Queue-Deadline must be a number of seconds in (0, 30]",
        }
    }
    sync = gateway.client.get("/echo/x", headers={**VIP, "Asyncgate-Priority": "0"})
    assert sync.status_code == 400 and sync.json()["error"]["code"] == "webhook_requires_async"


def test_the_global_share_caps_each_caller_apart(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"access.mode": "header", "limits.max_inflight": 1, "limits.max_per_caller": 2})
    blocker = submit(gateway.client, "/hang", VIP).json()["run_id"]
    assert [submit(gateway.client, "/echo/a", FLOOD).status_code for _ in range(3)] == [202, 202, 429]
    assert submit(gateway.client, "/echo/a", VIP).status_code == 202
    assert submit(gateway.client, "/echo/a", VIP).status_code == 429
    assert gateway.client.delete(f"{gateway.prefix}/runs/{blocker}", headers=VIP).status_code == 200
    wait_until(lambda: share_counts(gateway) == {}, timeout=15, message="every share counter back to zero")


def expired_flow(gateway: Gateway, upstream: Upstream, receiver: Receiver, sweep: bool) -> None:
    blocker = submit(gateway.client, "/sleep?seconds=1.5", VIP).json()["run_id"]
    wait_until(
        lambda: gateway.client.get(f"{gateway.prefix}/runs/{blocker}", headers=VIP).json()["status"] == "running"
    )
    tag = uuid.uuid4().hex[:8]
    hook = {"Asyncgate-Webhook": f"{receiver.url}/expired", "Asyncgate-Queue-Deadline": "0.5"}
    late = submit(gateway.client, f"/echo/late?tag={tag}", {**FLOOD, **hook}).json()["run_id"]
    status = wait_until(
        lambda: (
            (r := gateway.client.get(f"{gateway.prefix}/runs/{late}", headers=FLOOD).json())["status"] == "expired"
            and r
        ),
        timeout=15,
        message="the late run expired",
    )
    assert status["error"] == {
        "code": "queue_deadline_exceeded",
        "message": "the run was still queued at its queue deadline; it was never sent",
    }
    assert status["attempt"] == (0 if sweep else 1) and status["upstream_status"] is None
    assert status["queue_deadline"] is not None and status["finished_at"] is not None
    delivery = wait_until(lambda: receiver.deliveries.for_run(late), message="the expired run's webhook")[0]
    assert delivery["path"] == "/expired"
    events = gateway.client.get(f"{gateway.prefix}/runs/{late}/events", headers=FLOOD).text
    assert "event: expired" in events and "queue_deadline_exceeded" in events
    counts = gateway.client.get(f"{gateway.prefix}/runs/counts", headers=FLOOD).json()["counts"]
    assert counts["expired"] == 1
    listed = gateway.client.get(f"{gateway.prefix}/runs", params={"status": "expired"}, headers=FLOOD).json()
    assert [r["run_id"] for r in listed["runs"]] == [late]
    metrics = gateway.client.get(f"{gateway.prefix}/metrics").text
    assert 'asyncgate_runs_finished_total{error_code="queue_deadline_exceeded",status="expired"} 1.0' in metrics
    wait_until(
        lambda: gateway.client.get(f"{gateway.prefix}/runs/{blocker}", headers=VIP).json()["status"] == "succeeded",
        timeout=15,
    )
    assert calls_with(upstream, tag) == []  # never sent


def test_a_run_past_its_queue_deadline_is_swept_to_expired_and_never_sent(
    make_gateway: GatewayFactory, upstream: Upstream, receiver: Receiver
) -> None:
    gateway = make_gateway(settings(**{"runs.recovery_interval": 0.2}))
    expired_flow(gateway, upstream, receiver, sweep=True)


def test_a_run_claimed_past_its_queue_deadline_ends_expired_unsent(
    make_gateway: GatewayFactory, upstream: Upstream, receiver: Receiver
) -> None:
    # No sweep comes in time: the claim itself must refuse to start the run.
    gateway = make_gateway(settings(**{"runs.recovery_interval": 600}))
    expired_flow(gateway, upstream, receiver, sweep=False)
