from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from asyncgate.app import Gateway as GatewayApp
from asyncgate.config import Config, load
from asyncgate.netguard import Resolver
from asyncgate.server import HttpParser, protocol_class, uvicorn_options
from asyncgate.tracing import NO_TRACING, Tracing
from tests.support.browser import Browser
from tests.support.clients import client_for
from tests.support.gateway_process import Replicas
from tests.support.receiver import Deliveries, receiver_app
from tests.support.redis_server import RedisCluster, RedisSentinel, RedisServer
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.servers import ServerThread
from tests.support.upstream import Calls, upstream_app
from tests.support.wait import wait_until

FINAL = {"succeeded", "failed", "cancelled", "expired"}


class Upstream:
    def __init__(self) -> None:
        self.calls = Calls()
        self.server = ServerThread(upstream_app(self.calls)).start()
        self.url = self.server.url


class Receiver:
    def __init__(self) -> None:
        self.deliveries = Deliveries()
        self.server = ServerThread(receiver_app(self.deliveries)).start()
        self.url = self.server.url


class Gateway:
    def __init__(
        self, config: Config, resolver: Resolver | None = None, tracing: Tracing = NO_TRACING, **server_options: Any
    ) -> None:
        self.config = config
        self.app = GatewayApp(config, resolver=resolver, tracing=tracing)
        # The server options `asyncgate serve` uses, unless a test asks for others.
        options = {**uvicorn_options(config), "timeout_graceful_shutdown": 5, **server_options}
        self.server = ServerThread(self.app, **options).start()
        self.url = self.server.url
        self.app.listening(self.server.port)  # bound to port 0: progress URLs name the real one
        self.client = client_for(self.url)

    @property
    def prefix(self) -> str:
        return self.config.server.prefix

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"{self.prefix}/runs/{run_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def stored_run_count(self) -> int:
        """How many runs the store holds, read behind the gateway's back."""
        store = self.config.store
        if store.redis_url:
            client = redis.Redis.from_url(store.redis_url)
            try:
                return sum(1 for _ in client.scan_iter(match=f"{{{store.key_prefix}}}:run:*", count=1000))
            finally:
                client.close()
        with sqlite3.connect(Path(store.data_dir) / "asyncgate.db") as db:
            return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])

    def redis_keys(self) -> set[str]:
        """The kinds of Redis keys under the gateway's prefix (run, events, idem, index...)."""
        store = self.config.store
        prefix = store.key_prefix
        assert prefix is not None  # load() fills it in
        client = redis.Redis.from_url(str(store.redis_url))
        try:
            keys = client.scan_iter(match=f"{{{prefix}}}:*", count=1000)
            return {key.decode()[len(prefix) + 3 :].split(":")[0] for key in keys}
        finally:
            client.close()

    def wait_final(self, run_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return wait_until(lambda: (r := self.run(run_id))["status"] in FINAL and r, timeout, message=f"run {run_id}")

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[RedisCluster]:
    """A real three-node Redis Cluster, for the tests that ask for store_kind "cluster"."""
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def sentinel_server() -> Iterator[RedisSentinel]:
    """A primary and a Sentinel, for the tests that ask for store_kind "sentinel"."""
    sentinel = RedisSentinel()
    sentinel.start()
    yield sentinel
    sentinel.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for a module's dashboard tests (tests/support/browser.py)."""
    started = Browser()
    yield started
    started.quit()


@pytest.fixture
def replicas(upstream: Upstream, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    """Gateway processes sharing one Redis: a single server with AOF, or (param "cluster") a Cluster."""
    redis: RedisServer | RedisCluster = (
        RedisCluster() if getattr(request, "param", "") == "cluster" else RedisServer(appendonly=True)
    )
    redis.start()
    fleet = Replicas(upstream.url, redis, tmp_path)
    yield fleet
    for replica in fleet.started:
        replica.stop()
    redis.cleanup()


@pytest.fixture(params=["redis", "embedded"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(
    store_kind: str, upstream: Upstream, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[GatewayFactory]:
    """Start gateways over the parametrised store; settings as ``{"section.key": value}``."""
    started: list[Gateway] = []
    redis = request.getfixturevalue(f"{store_kind}_server") if store_kind != "embedded" else None
    prefix = f"t{uuid.uuid4().hex[:12]}"

    def factory(
        settings: dict[str, Any] | None = None,
        resolver: Resolver | None = None,
        tracing: Tracing = NO_TRACING,
        **server_options: Any,
    ) -> Gateway:
        # Flows run as one trusted caller; tests/e2e/test_access.py covers per-caller access.
        overrides: dict[str, Any] = {
            "upstream": upstream.url,
            "runs.poll_interval": 0.2,
            "shutdown.drain_timeout": 2,
            "access.mode": "open",
            # The test receivers listen on loopback, which the address guard refuses otherwise.
            "webhooks.allow": ["127.0.0.0/8"],
        }
        if redis is not None:
            overrides["store.redis_url"] = redis.url
            overrides["store.key_prefix"] = prefix
            overrides["store.encryption_key"] = [ENCRYPTION_KEY]
        else:
            overrides["store.data_dir"] = str(tmp_path / "data")
        overrides.update(settings or {})
        gateway = Gateway(load(None, environ={}, overrides=overrides), resolver, tracing, **server_options)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


#: uvicorn's two HTTP/1.1 parsers, each served with the gateway's own corrections (asyncgate.server).
HTTP_PARSERS: list[HttpParser] = ["h11", "httptools"]


@pytest.fixture(params=HTTP_PARSERS)
def parser_gateway(request: pytest.FixtureRequest, make_gateway: GatewayFactory) -> Gateway:
    """A gateway over the parametrised store, served with each of uvicorn's parsers in turn."""
    return make_gateway(http=protocol_class(request.param))
