"""A thousand runs pass through a short retention, and the store comes back to its starting size."""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.redis_server import RedisCluster, RedisServer
from tests.support.wait import wait_until

RUNS = 1000
CALLERS = 40
#: Bytes Redis may hold above its starting point once everything is purged (allocator slack,
#: a dictionary not yet shrunk); thousands of runs left behind would be megabytes.
MEMORY_SLACK = 256 * 1024
#: The keys an idle gateway keeps under its prefix. Some are written by its first heartbeat and
#: first claim, moments after it answers: the empty store is measured once they are all there.
STANDING = {"alive", "counters", "deployment", "gateways", "progress_key", "queue"}
SETTINGS: dict[str, Any] = {
    "access.mode": "header",
    "runs.retention": 2,
    "runs.recovery_interval": 0.2,
    "runs.poll_interval": 0.1,
    "webhooks.schedule": [0],
}


@pytest.fixture(params=["redis", "cluster", "embedded"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# A Redis of its own, so that no other test's keys come and go while its size is measured.
@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def cluster_server() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.cleanup()


class Size:
    """How big the gateway's store is: keys and bytes (Redis), or rows per table (SQLite)."""

    def __init__(self, gateway: Gateway, request: pytest.FixtureRequest, store_kind: str) -> None:
        self.data_dir = Path(gateway.config.store.data_dir)
        self.prefix = gateway.config.store.key_prefix
        self.nodes: list[RedisServer] = []
        if store_kind == "redis":
            self.nodes = [request.getfixturevalue("redis_server")]
        elif store_kind == "cluster":
            self.nodes = request.getfixturevalue("cluster_server").nodes

    def keys_or_rows(self) -> dict[str, int]:
        if not self.nodes:
            with sqlite3.connect(self.data_dir / "asyncgate.db") as db:
                # sqlite_sequence holds one row per AUTOINCREMENT table, whatever the number of runs.
                sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence'"
                tables = [name for (name,) in db.execute(sql)]
                return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}
        sizes = {}
        for node in self.nodes:
            with self._client(node) as client:
                sizes[f"dbsize:{node.port}"] = client.dbsize()
        return sizes

    def standing(self) -> set[str]:
        """The names (after ``{prefix}:``) of the gateway's keys, on every node."""
        names = set()
        for node in self.nodes:
            with self._client(node) as client:
                names |= {key.decode().split(":", 1)[1] for key in client.scan_iter(match=f"{{{self.prefix}}}:*")}
        return names

    def memory(self) -> int:
        """Redis's used memory less its clients' buffers (connections the gateway keeps open)."""
        total = 0
        for node in self.nodes:
            with self._client(node) as client:
                info = client.info("memory")
            total += info["used_memory"] - info.get("mem_clients_normal", 0)
        return total

    def queue(self) -> tuple[int, int]:
        """Entries in the queue stream, and entries its consumer group read but did not ack."""
        queue = f"{{{self.prefix}}}:queue"
        cluster = len(self.nodes) > 1
        port = self.nodes[0].port
        with redis.RedisCluster(host="127.0.0.1", port=port) if cluster else redis.Redis(port=port) as client:
            (group,) = client.xinfo_groups(queue)
            return int(client.xlen(queue)), int(group["pending"])

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port)


def push(gateway: Gateway, receiver: Receiver, tag: str, count: int, offset: int = 0) -> list[str]:
    """Submit ``count`` runs from many callers, some with an idempotency key or a webhook.

    Run ``index`` calls ``/echo/<tag>/<index>``: the upstream is shared with other tests,
    whose late calls must not count as this test's.
    """
    hook = quote(f"{receiver.url}/hook", safe="")

    def one(index: int) -> str:
        headers = {"Authorization": f"Bearer caller-{index % CALLERS}"}
        path = f"/echo/{tag}/{index}?async=true"
        if index % 7 == 0:
            headers["Idempotency-Key"] = f"key-{offset + index}"
        if index % 5 == 0:
            path += f"&webhookEndpoint={hook}"
        response = gateway.client.post(path, content=b"x" * 200, headers=headers)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(offset, offset + count)))


@pytest.mark.slow
def test_a_thousand_runs_leave_nothing_behind_after_retention(
    make_gateway: GatewayFactory,
    receiver: Receiver,
    upstream: Upstream,
    store_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    gateway = make_gateway(SETTINGS)
    size = Size(gateway, request, store_kind)
    if size.nodes:
        wait_until(lambda: STANDING <= size.standing(), timeout=10, message=f"the idle gateway's keys {STANDING}")
    empty = size.keys_or_rows()
    # A first round, so that what is made once (scripts, connections) is there before measuring.
    tag = uuid.uuid4().hex
    push(gateway, receiver, tag, CALLERS)
    wait_until(lambda: size.keys_or_rows() == empty, timeout=20, message=f"the first round purged, to {empty}")
    memory = size.memory()

    def executed() -> Counter[int]:
        """How many times the upstream was called for each run of the measured round."""
        mine = f"/echo/{tag}/"
        indices = (
            int(call["path"][len(mine) :]) for call in upstream.calls.all() if call.get("path", "").startswith(mine)
        )
        return Counter(index for index in indices if index >= CALLERS)

    run_ids = push(gateway, receiver, tag, RUNS, offset=CALLERS)

    assert len(set(run_ids)) == RUNS
    # Runs are purged while others are still submitted: those of the last seconds are there.
    grown = size.keys_or_rows()
    assert sum(grown.values()) > sum(empty.values()) + CALLERS, grown
    wait_until(lambda: len(executed()) == RUNS, timeout=60, message="every run executed")
    wait_until(lambda: size.keys_or_rows() == empty, timeout=30, message=f"the store back to {empty}")
    wait_until(lambda: size.memory() <= memory + MEMORY_SLACK, timeout=10, message="the memory given back")
    if size.nodes:
        assert size.queue() == (0, 0)
    assert executed() == Counter(range(CALLERS, CALLERS + RUNS)), "a run executed twice"
    assert len(receiver.deliveries.all()) == len(range(0, CALLERS + RUNS, 5))
    for caller in range(CALLERS):
        listing = gateway.client.get(f"{gateway.prefix}/runs", headers={"Authorization": f"Bearer caller-{caller}"})
        assert (listing.status_code, listing.json()["runs"]) == (200, [])
    first = gateway.client.get(f"{gateway.prefix}/runs/{run_ids[0]}", headers={"Authorization": "Bearer caller-0"})
    assert first.status_code == 404
