"""Many deployments on one Redis (and one Cluster): each gateway takes only its own deployment's
runs, refuses keys accepted for another upstream, and follows an upstream change it is told of."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.types import Message

from asyncgate.app import Gateway as GatewayApp
from asyncgate.config import Config, load
from asyncgate.errors import ConfigError
from tests.e2e.conftest import Gateway, GatewayFactory, Upstream
from tests.e2e.test_async import submit
from tests.support.redis_server import free_port
from tests.support.sealing import ENCRYPTION_KEY_ENV
from tests.support.wait import wait_until

DERIVED = {"store.key_prefix": None}  # what a gateway gets when it sets no prefix


@pytest.fixture(params=["redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def other_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.server.stop()


def tagged(upstream: Upstream, tag: str) -> list[str]:
    return [str(c["query"]) for c in upstream.calls.all() if tag in str(c.get("query", ""))]


def refusal(config: Config) -> str:
    """Start a gateway that must refuse to start; the one line it refuses with."""
    app = GatewayApp(config)
    inbox: list[Message] = [{"type": "lifespan.startup"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]
    assert app.refused is not None
    return str(app.refused)


def test_two_upstreams_on_one_store_run_only_their_own_runs(
    make_gateway: GatewayFactory, upstream: Upstream, other_upstream: Upstream
) -> None:
    # Loopback upstreams need a deployment named (see the test below); any other is derived.
    name_a, name_b = f"model-a-{uuid.uuid4().hex[:8]}", f"model-b-{uuid.uuid4().hex[:8]}"
    model_a = make_gateway({**DERIVED, "deployment": name_a, "limits.max_inflight": 2})
    model_b = make_gateway({**DERIVED, "deployment": name_b, "upstream": other_upstream.url, "limits.max_inflight": 2})
    assert model_a.config.store.key_prefix == f"asyncgate:{name_a}"
    assert model_b.config.store.key_prefix == f"asyncgate:{name_b}"
    tag_a, tag_b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    runs_a = [submit(model_a, f"/echo?tag={tag_a}&n={n}&async=true", b"a") for n in range(6)]
    runs_b = [submit(model_b, f"/echo?tag={tag_b}&n={n}&async=true", b"b") for n in range(6)]
    for gateway, run_ids in ((model_a, runs_a), (model_b, runs_b)):
        for run_id in run_ids:
            assert gateway.wait_final(run_id)["status"] == "succeeded"
    assert len(tagged(upstream, tag_a)) == 6
    assert len(tagged(other_upstream, tag_b)) == 6
    assert tagged(upstream, tag_b) == tagged(other_upstream, tag_a) == []
    # Each deployment sees only its own runs: the other's ids are unknown to it.
    assert model_b.client.get(f"{model_b.prefix}/runs/{runs_a[0]}").status_code == 404
    assert model_a.client.get(f"{model_a.prefix}/runs/{runs_b[0]}").status_code == 404


def test_a_deployments_queued_runs_wait_for_it_not_for_another_upstream(
    make_gateway: GatewayFactory, upstream: Upstream, other_upstream: Upstream
) -> None:
    settings = {
        **DERIVED,
        "deployment": f"model-a-{uuid.uuid4().hex[:8]}",
        "limits.max_inflight": 1,
        "shutdown.drain_timeout": 0.2,
    }
    model_a = make_gateway(settings)
    blocker = submit(model_a, "/sleep?seconds=2&async=true")
    wait_until(lambda: model_a.run(blocker)["status"] == "running")
    tag = f"q{uuid.uuid4().hex[:8]}"
    queued = [submit(model_a, f"/echo?tag={tag}&n={n}&async=true") for n in range(3)]
    model_a.stop()  # its held run goes back to its queue
    model_b = make_gateway({**DERIVED, "deployment": f"model-b-{uuid.uuid4().hex[:8]}", "upstream": other_upstream.url})
    probe = submit(model_b, "/echo?async=true")
    assert model_b.wait_final(probe)["status"] == "succeeded"
    # Back on its own deployment, the runs are done by model A's upstream, never by B's.
    model_a_again = make_gateway(settings)
    for run_id in queued:
        assert model_a_again.wait_final(run_id, timeout=30)["status"] == "succeeded"
    # The interrupted POST is not re-sent blindly (see docs/state-machine.md); it ends on A's side.
    assert model_a_again.wait_final(blocker, timeout=30)["status"] in {"succeeded", "failed"}
    assert len(tagged(upstream, tag)) == 3
    assert tagged(other_upstream, tag) == []
    assert [c for c in other_upstream.calls.all() if c["path"] == "/sleep"] == []


def test_another_upstream_on_a_deployments_keys_is_refused_unless_intended(
    make_gateway: GatewayFactory, upstream: Upstream, other_upstream: Upstream
) -> None:
    deployment = f"model-{uuid.uuid4().hex[:8]}"
    old = make_gateway({**DERIVED, "deployment": deployment, "limits.max_inflight": 1})
    blocker = submit(old, "/sleep?seconds=1&async=true")
    wait_until(lambda: old.run(blocker)["status"] == "running")
    tag = f"u{uuid.uuid4().hex[:8]}"
    queued = [submit(old, f"/echo?tag={tag}&n={n}&async=true") for n in range(3)]
    moved = {**DERIVED, "deployment": deployment, "upstream": other_upstream.url}
    config = load(None, environ={}, overrides=_overrides(old, moved))
    assert refusal(config) == (
        f"upstream: Redis key prefix 'asyncgate:{deployment}' holds the runs of deployment '{deployment}', "
        f"accepted for {upstream.url}, not {other_upstream.url}; if the upstream changed on purpose, start once "
        "with --allow-upstream-change (store.allow_upstream_change: true), else give this gateway a deployment "
        "of its own (--deployment)"
    )
    # A rolling upgrade to a new Service name: said to be intended, the new gateway takes over.
    new = make_gateway({**moved, "store.allow_upstream_change": True})
    old.stop()
    for run_id in queued:
        assert new.wait_final(run_id, timeout=20)["status"] == "succeeded"
    assert len(tagged(other_upstream, tag)) + len(tagged(upstream, tag)) == 3
    # From now on the deployment is the new upstream's: the old one is refused in turn.
    assert f"accepted for {other_upstream.url}, not {upstream.url};" in refusal(
        load(None, environ={}, overrides=_overrides(old, {}))
    )


def _overrides(gateway: Gateway, changes: dict[str, Any]) -> dict[str, Any]:
    """The settings ``gateway`` was started with, changed by ``changes``."""
    config = gateway.config
    base: dict[str, Any] = {
        "upstream": config.upstream,
        "deployment": config.deployment,
        "store.redis_url": config.store.redis_url,
        "store.encryption_key": [str(key) for key in config.store.encryption_key],
        "store.data_dir": config.store.data_dir,
        "access.mode": "open",
        "webhooks.allow": ["127.0.0.0/8"],
        "shutdown.drain_timeout": 1,
    }
    return {**base, **changes}


def test_a_loopback_upstream_on_redis_needs_a_deployment_named(make_gateway: GatewayFactory) -> None:
    # Every sidecar's upstream is http://127.0.0.1:<port>: derived from it, sidecars of two models
    # on one Redis would share runs.
    with pytest.raises(ConfigError) as caught:
        make_gateway(DERIVED)
    assert caught.value.key == "deployment"
    assert "loopback" in caught.value.message


def test_serve_refuses_another_upstream_in_one_line(
    redis_server: Any, upstream: Upstream, other_upstream: Upstream, tmp_path: Path
) -> None:
    deployment = f"cli-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.hset(
            f"{{asyncgate:{deployment}}}:deployment", mapping={"upstream": upstream.url, "deployment": deployment}
        )
    finally:
        client.close()
    env = {"PATH": "/usr/bin:/bin", **ENCRYPTION_KEY_ENV, "ASYNCGATE_SERVER_LOG_LEVEL": "warning"}
    args = ["serve", "--upstream", other_upstream.url, "--redis-url", redis_server.url, "--deployment", deployment]
    result = subprocess.run(
        [sys.executable, "-m", "asyncgate", *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"asyncgate: configuration error: upstream: Redis key prefix 'asyncgate:{deployment}' holds the runs of "
        f"deployment '{deployment}', accepted for {upstream.url}, not {other_upstream.url}; if the upstream "
        "changed on purpose, start once with --allow-upstream-change (store.allow_upstream_change: true), else "
        "give this gateway a deployment of its own (--deployment)"
    )
    assert "Traceback" not in result.stderr


def test_intake_only_replicas_and_workers_of_one_deployment_share_its_runs(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    deployment = f"shared-{uuid.uuid4().hex[:8]}"
    intake = make_gateway({**DERIVED, "deployment": deployment, "runs.execute": False})
    worker = make_gateway({**DERIVED, "deployment": deployment})
    assert intake.config.store.key_prefix == worker.config.store.key_prefix == f"asyncgate:{deployment}"
    run_id = submit(intake, "/echo?async=true", b"one deployment")
    assert worker.wait_final(run_id)["status"] == "succeeded"
    assert intake.client.get(f"{intake.prefix}/runs/{run_id}/result").json()["body"] == "one deployment"
