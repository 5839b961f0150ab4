"""Commands to a single Redis are packed by hiredis, byte for byte as redis-py packs them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from asyncgate.store.connect import connect
from tests.store.conftest import Runner
from tests.support.redis_server import RedisServer

COMMANDS: list[tuple[Any, ...]] = [
    ("XREAD", "BLOCK", 1000, "STREAMS", *(f"{{p}}:events:{n}" for n in range(500)), *(["1-0"] * 500)),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", 0.1, 1e-7, 1_700_000_000.123456, -5, 10**20, "ünïcode", b"\x00\xff"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"name"),
    ("SET", "key", memoryview(b"view")),
]


@pytest.mark.parametrize("pool_size", [None, 4], ids=["plain", "pool"])
def test_commands_are_packed_by_hiredis_as_redis_py_packs_them(
    redis_server: RedisServer, pool_size: int | None
) -> None:
    client = connect(redis_server.url, pool_size=pool_size)
    assert isinstance(client, aioredis.Redis)
    connection_class = client.connection_pool.connection_class
    assert connection_class.pack_command is not Connection.pack_command
    for command in COMMANDS:
        packed: list[bytes] = connection_class().pack_command(*command)
        assert packed == [b"".join(Connection().pack_command(*command))]


def test_bytearrays_are_sent_and_a_value_redis_cannot_take_is_refused_without_its_value(
    redis_server: RedisServer, run: Runner
) -> None:
    key = f"test-{uuid.uuid4().hex}"

    async def exchange() -> bytes | None:
        client = connect(redis_server.url, pool_size=2)
        try:
            await client.set(key, bytearray(b"value"))
            with pytest.raises(DataError) as refused:
                await client.set(key, True)
            assert "True" not in str(refused.value)  # values may be secrets: never in an error
            got = await client.get(key)
            assert got is None or isinstance(got, bytes)
            return got
        finally:
            await client.delete(key)
            await client.aclose()

    assert run(exchange()) == b"value"
