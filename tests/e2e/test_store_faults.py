"""What a client sees when the Redis store goes away."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_async import submit
from tests.support.redis_server import RedisCluster, RedisServer
from tests.support.wait import wait_until


@pytest.fixture
def store_kind() -> str:
    return "redis"


def test_store_down_answers_503_not_202(make_gateway: GatewayFactory) -> None:
    private = RedisServer()
    private.start()
    try:
        gateway = make_gateway({"store.redis_url": private.url})
        submit(gateway, "/echo?async=true")
        private.stop()
        response = gateway.client.post("/echo?async=true", content=b"x")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "store_unavailable"
        assert gateway.client.get(f"{gateway.prefix}/readyz").status_code == 503
        assert gateway.client.get(f"{gateway.prefix}/healthz").status_code == 200
    finally:
        private.cleanup()


def test_readiness_reports_durability_and_evicting_policies(make_gateway: GatewayFactory) -> None:
    private = RedisServer(appendonly=True)
    private.start()
    try:
        gateway = make_gateway({"store.redis_url": private.url})
        ready = gateway.client.get(f"{gateway.prefix}/readyz").json()
        assert ready["status"] == "ready"
        assert ready["durability"].startswith("appendfsync always")
        assert ready["warnings"] == []
        private.command(b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru")
        ready = gateway.client.get(f"{gateway.prefix}/readyz").json()
        assert ready["warnings"] == ["maxmemory-policy allkeys-lru can evict run data; use noeviction"]
    finally:
        private.cleanup()


def test_redis_restarted_from_its_aof_loses_no_accepted_run(make_gateway: GatewayFactory) -> None:
    private = RedisServer(appendonly=True)
    private.start()
    try:
        gateway = make_gateway({"store.redis_url": private.url, "limits.max_inflight": 1})
        blocker = submit(gateway, "/sleep?seconds=1&async=true")
        queued = [submit(gateway, f"/echo?n={n}&async=true", b"keep") for n in range(3)]
        private.stop()
        down = gateway.client.post("/echo?async=true", content=b"x")
        assert down.status_code == 503
        private.start()
        for run_id in [blocker, *queued]:
            assert gateway.wait_final(run_id, timeout=30)["status"] == "succeeded", run_id
        assert gateway.client.get(f"{gateway.prefix}/readyz").status_code == 200
    finally:
        private.cleanup()


def test_redis_restarted_empty_is_used_again(make_gateway: GatewayFactory) -> None:
    private = RedisServer()
    private.start()
    try:
        gateway = make_gateway({"store.redis_url": private.url})
        old = submit(gateway, "/echo?async=true")
        gateway.wait_final(old)
        private.stop()
        private.start()  # no persistence: an empty Redis
        assert gateway.client.get(f"{gateway.prefix}/runs/{old}").status_code == 404
        new = wait_until(lambda: gateway.client.post("/echo?async=true", content=b"x"), timeout=10)
        assert new.status_code == 202
        assert gateway.wait_final(new.json()["run_id"], timeout=20)["status"] == "succeeded"
    finally:
        private.cleanup()


def test_gateway_starts_while_redis_is_down_and_serves_once_it_is_up(make_gateway: GatewayFactory) -> None:
    private = RedisServer()
    try:
        gateway = make_gateway({"store.redis_url": private.url})
        assert gateway.client.get(f"{gateway.prefix}/readyz").status_code == 503
        assert gateway.client.post("/echo?async=true", content=b"x").status_code == 503
        private.start()
        wait_until(lambda: gateway.client.get(f"{gateway.prefix}/readyz").status_code == 200)
        run_id = submit(gateway, "/echo?async=true")
        assert gateway.wait_final(run_id, timeout=20)["status"] == "succeeded"
    finally:
        private.cleanup()


def test_strict_durability_is_refused_while_the_replica_has_not_taken_the_run(make_gateway: GatewayFactory) -> None:
    """A replica still connected but confirming nothing (stopped) is not a confirmation: no 202."""
    primary, replica = RedisServer(), RedisServer()
    primary.start()
    replica.extra = ["--replicaof", "127.0.0.1", str(primary.port)]
    try:
        replica.start()
        wait_until(lambda: b"master_link_status:up" in replica.command(b"INFO", b"replication"), timeout=20)
        gateway = make_gateway({"store.redis_url": primary.url, "store.durability": "strict"})
        submit(gateway, "/echo?async=true")
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)  # connected, but takes and confirms nothing
        try:
            refused = gateway.client.post("/echo?async=true", content=b"x")
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable"
    finally:
        replica.cleanup()
        primary.cleanup()


def test_strict_durability_waits_for_a_replica(make_gateway: GatewayFactory) -> None:
    primary, replica = RedisServer(), RedisServer()
    primary.start()
    replica.extra = ["--replicaof", "127.0.0.1", str(primary.port)]
    try:
        gateway = make_gateway({"store.redis_url": primary.url, "store.durability": "strict"})
        # No replica yet: the run may be on the primary, but no 202 is promised.
        refused = gateway.client.post("/echo?async=true", content=b"x")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
        replica.start()
        wait_until(lambda: b"master_link_status:up" in replica.command(b"INFO", b"replication"), timeout=20)
        accepted = submit(gateway, "/echo?async=true")
        assert gateway.wait_final(accepted)["status"] == "succeeded"
        assert "strict" in gateway.client.get(f"{gateway.prefix}/readyz").json()["durability"]
    finally:
        replica.cleanup()
        primary.cleanup()


@pytest.fixture
def replicated_cluster() -> Iterator[RedisCluster]:
    """Three masters with a replica each, and Redis's own 15 s failure detection: a replica
    stopped for a few seconds stays a replica. Stopped after the gateway (fixtures end in reverse)."""
    cluster = RedisCluster(replicas=1)
    cluster.start()
    yield cluster
    cluster.cleanup()


def test_strict_durability_on_a_cluster_waits_for_the_replica_of_the_runs_master(
    replicated_cluster: RedisCluster, make_gateway: GatewayFactory
) -> None:
    """The create script and its WAIT go to the master of the run's slot on one connection: WAIT
    counts only its own connection's writes, so anywhere else it would confirm nothing."""
    cluster = replicated_cluster
    gateway = make_gateway({"store.redis_url": cluster.url, "store.durability": "strict"})
    accepted = submit(gateway, "/echo?async=true")
    assert gateway.wait_final(accepted)["status"] == "succeeded"
    replicas = [node for node in cluster.live() if node not in cluster.masters()]
    for replica in replicas:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)  # connected, but takes and confirms nothing
    try:
        refused = [gateway.client.post("/echo?async=true", content=b"x") for _ in range(3)]
    finally:
        for replica in replicas:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGCONT)
    assert [response.status_code for response in refused] == [503] * 3, [r.text for r in refused]
    assert {response.json()["error"]["code"] for response in refused} == {"store_unavailable"}
    assert gateway.wait_final(submit(gateway, "/echo?async=true"))["status"] == "succeeded"
