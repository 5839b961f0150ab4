"""Redis clients from a URL: a single server, Redis Cluster, or a Sentinel-managed primary.

redis://host:6379/0, rediss://..., unix:///path   one server (or a proxy in front of several)
redis+cluster://host:7000[,host:7001...]           Redis Cluster, discovered from any seed node
redis+sentinel://host:26379[,host:26380]/NAME/0    the primary Sentinel names NAME, followed on failover
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

RedisClient = aioredis.Redis | RedisCluster


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        hosts.append((host or item, int(port) if port else default_port))
    return hosts


def connect(url: str, *, pool_size: int | None = None, **options: Any) -> RedisClient:
    """A client for ``url`` with redis-py ``options`` (timeouts, retry, protocol).

    With ``pool_size``, a single server is reached through a pool of up to that many
    connections (redis-py's default is too small for a busy gateway and fails at once when
    it runs out).
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
        # Not a BlockingConnectionPool: a task cancelled while waiting for one of its connections
        # was seen to stay "cancelling" for good, which hangs a gateway's shutdown.
        pool = aioredis.ConnectionPool.from_url(url, max_connections=pool_size, **options)
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    return aioredis.Redis.from_url(url, **options)
