"""The Redis connection pool for ordinary commands: a burst waits for a free connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from asyncgate.store.connect import WaitingConnectionPool, connect
from tests.store.conftest import Runner
from tests.support.redis_server import RedisServer


def _connect(url: str, *, pool_size: int, pool_wait: float) -> aioredis.Redis:
    client = connect(url, pool_size=pool_size, pool_wait=pool_wait)
    assert isinstance(client, aioredis.Redis)  # a standalone URL, not a Cluster
    return client


def _pool(client: aioredis.Redis) -> WaitingConnectionPool:
    pool = client.connection_pool
    assert isinstance(pool, WaitingConnectionPool)
    return pool


async def _until_busy(client: aioredis.Redis) -> None:
    # The pool signals nothing when it lends a connection, so its state is polled, bounded.
    async with asyncio.timeout(5):
        while not _pool(client)._in_use_connections:  # noqa: ASYNC110
            await asyncio.sleep(0.001)


def test_a_burst_larger_than_the_pool_waits_and_every_command_succeeds(redis_server: RedisServer, run: Runner) -> None:
    key = f"test-{uuid.uuid4().hex}"

    async def burst() -> tuple[list[int], int]:
        client = _connect(redis_server.url, pool_size=4, pool_wait=10.0)
        try:
            replies = await asyncio.gather(*(client.incr(key) for _ in range(200)))
            opened = len(_pool(client)._available_connections) + len(_pool(client)._in_use_connections)
            await client.delete(key)
            return sorted(replies), opened
        finally:
            await client.aclose()

    replies, opened = run(burst())
    assert replies == list(range(1, 201))  # redis-py's plain pool fails most of these at once
    assert opened <= 4


def test_a_command_that_waits_too_long_for_a_connection_fails_as_unavailable(
    redis_server: RedisServer, run: Runner
) -> None:
    key = f"test-{uuid.uuid4().hex}"

    async def starved() -> None:
        client = _connect(redis_server.url, pool_size=1, pool_wait=0.2)
        try:
            holder = asyncio.ensure_future(client.blpop([key], timeout=2))  # holds the one connection
            await _until_busy(client)
            with pytest.raises(aioredis.ConnectionError, match="no Redis connection free within 0.2 s"):
                await client.ping()
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
        finally:
            await client.aclose()

    run(starved())


def test_a_waiter_cancelled_in_line_gives_back_nothing_it_did_not_take(redis_server: RedisServer, run: Runner) -> None:
    key = f"test-{uuid.uuid4().hex}"

    async def cancelled_waiter() -> bytes | str | None:
        client = _connect(redis_server.url, pool_size=1, pool_wait=10.0)
        helper = aioredis.Redis.from_url(redis_server.url)
        try:
            holder = asyncio.ensure_future(client.blpop([key], timeout=5))
            await _until_busy(client)
            waiter = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await helper.rpush(key, "x")  # frees the holder, which returns its connection
            assert await asyncio.wait_for(holder, 5) == (key.encode(), b"x")
            # One slot, one connection: had the cancelled waiter released a slot it never held,
            # two commands would now run at once on a pool of one and open a second connection.
            await asyncio.gather(client.ping(), client.ping(), client.ping())
            pool = _pool(client)
            assert len(pool._available_connections) + len(pool._in_use_connections) == 1
            return await client.get(key)
        finally:
            await client.aclose()
            await helper.aclose()

    assert run(cancelled_waiter()) is None
