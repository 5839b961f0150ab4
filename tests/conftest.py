from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server for the whole session; tests use distinct key prefixes."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that reconfigure it (maxmemory, stops)."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()
