"""What a client sees when the Redis store goes away."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_async import submit
from tests.support.redis_server import RedisServer


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
