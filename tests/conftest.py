from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.receiver import Deliveries, receiver_app
from tests.support.redis_server import RedisServer
from tests.support.servers import ServerThread


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


@pytest.fixture
def deliveries() -> Deliveries:
    """What the ``hook_server`` received, and the answers it is to give."""
    return Deliveries()


@pytest.fixture
def hook_server(deliveries: Deliveries) -> Iterator[ServerThread]:
    """A webhook receiver on a free port of its own, recording into ``deliveries``."""
    with ServerThread(receiver_app(deliveries)) as server:
        yield server
