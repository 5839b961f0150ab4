"""On a real Cluster and behind a real Sentinel: scripts by SHA1, reloaded when a server forgot them."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_async import submit
from tests.support.redis_server import RedisServer


@pytest.fixture(params=["cluster", "sentinel"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def data_nodes(store_kind: str, request: pytest.FixtureRequest) -> list[RedisServer]:
    server = request.getfixturevalue(f"{store_kind}_server")
    return list(server.nodes) if store_kind == "cluster" else [server.primary]


def test_runs_go_on_after_every_node_forgot_the_scripts(
    make_gateway: GatewayFactory, store_kind: str, request: pytest.FixtureRequest
) -> None:
    intake = make_gateway({"runs.execute": False})
    worker = make_gateway()
    before = submit(intake, "/mirror?async=true", b"before")
    assert worker.wait_final(before)["status"] == "succeeded"
    # What a restart or a failover does to the script cache.
    for node in data_nodes(store_kind, request):
        assert node.command(b"SCRIPT", b"FLUSH").startswith(b"+OK")
    after = submit(intake, "/mirror?async=true", b"after")
    assert worker.wait_final(after)["status"] == "succeeded"
    assert intake.client.get(f"{intake.prefix}/runs/{after}/result").content == b"after"
    assert intake.client.get(f"{intake.prefix}/runs/{before}/result").content == b"before"
