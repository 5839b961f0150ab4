"""Redis clients from a URL: a single server, Redis Cluster, or a Sentinel-managed primary.

redis://host:6379/0, rediss://..., unix:///path   one server (or a proxy in front of several)
redis+cluster://host:7000[,host:7001...]           Redis Cluster, discovered from any seed node
redis+sentinel://host:26379[,host:26380]/NAME/0    the primary Sentinel names NAME, followed on failover
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from asyncgate.store.packing import pack_with_hiredis

RedisClient = aioredis.Redis | RedisCluster


class WaitingConnectionPool(aioredis.ConnectionPool):
    """A pool that, when all its connections are busy, waits up to ``wait_timeout`` for one.

    redis-py's plain pool fails at once ("Too many connections"), so a burst (10,000 held runs
    loading their bodies together) failed commands a moment's wait would have served. Its
    BlockingConnectionPool waits, but a task cancelled while waiting there was seen to stay
    "cancelling" for good, which hangs a gateway's shutdown; a semaphore's wait is cancelled
    cleanly.
    """

    def __init__(self, *, max_connections: int, wait_timeout: float, **options: Any) -> None:
        super().__init__(max_connections=max_connections, **options)
        self._slots = asyncio.Semaphore(max_connections)
        self._wait_timeout = wait_timeout

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise aioredis.ConnectionError(f"no Redis connection free within {self._wait_timeout:g} s") from None
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._slots.release()


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        hosts.append((host or item, int(port) if port else default_port))
    return hosts


def connect(url: str, *, pool_size: int | None = None, pool_wait: float = 5.0, **options: Any) -> RedisClient:
    """A client for ``url`` with redis-py ``options`` (timeouts, retry, protocol).

    With ``pool_size``, a single server is reached through a pool of up to that many
    connections, where a command finding them all busy waits up to ``pool_wait`` seconds.
    """
    parts = urlsplit(url)
    if parts.scheme.endswith("+cluster"):
        nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
        ssl = parts.scheme.startswith("rediss")
        return RedisCluster(startup_nodes=nodes, ssl=ssl, password=parts.password, username=parts.username, **options)
    if parts.scheme == "redis+sentinel":
        name, _, db = parts.path.strip("/").partition("/")
        hosts = _hosts(parts.netloc, 26379)
        sentinel = Sentinel(hosts, sentinel_kwargs={"password": parts.password}, **options)  # type: ignore[no-untyped-call]
        primary: aioredis.Redis = sentinel.master_for(name or "mymaster", db=int(db or 0), password=parts.password)
        return primary
    if pool_size is not None:
        pool = WaitingConnectionPool.from_url(url, max_connections=pool_size, wait_timeout=pool_wait, **options)
        pack_with_hiredis(pool)
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    client = aioredis.Redis.from_url(url, **options)
    pack_with_hiredis(client.connection_pool)
    return client


async def close_client(client: RedisClient) -> None:
    """Close every connection ``client`` holds, whatever state redis-py left it in.

    redis-py 8.1's ``RedisCluster.aclose()`` does nothing while the client is marked to read the
    Cluster's layout again, which any connection error marks it (a failover, a master down): its
    connections stayed open past the gateway's shutdown, and uvloop's close of the event loop
    was seen to wait on them for more than 30 s.
    """
    await client.aclose()
    if isinstance(client, RedisCluster):
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")
        return
    # A Sentinel-managed client does not close its connections to the Sentinels.
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
