"""Closing a store on a Redis Cluster closes every connection, even after a connection error.

redis-py 8.1's ``RedisCluster.aclose()`` does nothing while the client is marked to read the
Cluster's layout again, as any connection error marks it: the connections outlived the gateway's
shutdown, and uvloop's close of the event loop then waited on them (seen in
tests/e2e/test_cluster_slots.py's failover, once in 20 to 40 runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from redis.crc import key_slot
from starlette.datastructures import Secret

from asyncgate.errors import StoreError
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import Sealer
from tests.store.conftest import Runner
from tests.support.redis_server import RedisCluster, RedisServer
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.wait import wait_until


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    """A Cluster of its own: this test kills one of its masters."""
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.cleanup()


def clients(node: RedisServer) -> int:
    """Client connections to ``node`` other than the one asking."""
    return node.command(b"CLIENT", b"LIST").count(b"id=") - 1


def no_client_but_this(node: RedisServer) -> Callable[[], bool]:
    return lambda: clients(node) == 0


def master_of(cluster: RedisCluster, key: bytes) -> RedisServer:
    slot = key_slot(key)
    (master,) = [node for node in cluster.masters() if owns(node, slot)]
    return master


def owns(node: RedisServer, slot: int) -> bool:
    # CLUSTER NODES: the line marked "myself" ends with the slot ranges the answering node serves.
    reply = node.command(b"CLUSTER", b"NODES").decode()
    for line in reply.splitlines():
        fields = line.split()
        if len(fields) > 8 and "myself" in fields[2]:
            for spec in fields[8:]:
                first, _, last = spec.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return True
    return False


def test_a_store_closed_after_a_connection_error_leaves_no_connection_open(cluster: RedisCluster, run: Runner) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisRunStore(cluster.url, key_prefix=prefix, sealer=Sealer([Secret(ENCRYPTION_KEY)]))
    run(store.open())
    run(store.ping())
    victim = master_of(cluster, f"{{{prefix}}}".encode())
    survivors = [node for node in cluster.nodes if node is not victim]
    assert any(clients(node) for node in survivors)  # the client knows the whole Cluster
    victim.stop()
    with pytest.raises(StoreError):
        run(store.ping())  # marks the client to read the layout again
    run(store.close())
    for node in survivors:
        wait_until(no_client_but_this(node), timeout=5, message=f"every connection to {node.port} closed")
