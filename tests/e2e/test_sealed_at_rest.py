"""Nothing sensitive rests in the clear in any default setup: the raw bytes of Redis (every value
of every key) and of the SQLite files are searched for canary credentials and webhook tokens
while runs are queued, running and finished."""

from __future__ import annotations

import functools
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.at_rest import redis_key, sqlite_files
from tests.support.wait import wait_until

AUTH = "canary-auth-3e3e"
COOKIE = "canary-cookie-4f4f"
API_KEY = "canary-apikey-5a5a"
HOOK_PASSWORD = "canary-hookpw-6b6b"
HOOK_TOKEN = "canary-hooktoken-7c7c"
CANARIES = (AUTH, COOKIE, API_KEY, HOOK_PASSWORD, HOOK_TOKEN)


@pytest.fixture(params=["embedded", "redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def redis_clients(request: pytest.FixtureRequest, store_kind: str) -> list[redis.Redis]:
    if store_kind == "cluster":
        nodes = request.getfixturevalue("cluster_server").nodes
        return [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
    return [redis.Redis.from_url(request.getfixturevalue("redis_server").url)]


def at_rest(gateway: Gateway, clients: list[redis.Redis]) -> bytes:
    """Every byte the store holds: each key's DUMP and its values, or every SQLite file and row."""
    if not clients:
        return sqlite_files(Path(gateway.config.store.data_dir))
    # Every key, not only the gateway's prefix.
    return b"\n".join(redis_key(client, key) for client in clients for key in client.scan_iter(count=1000))


def assert_no_canary(stored: bytes, moment: str) -> None:
    for canary in CANARIES:
        assert canary.encode() not in stored, f"{canary} rests in the clear while {moment}"


def status(gateway: Gateway, run_id: str) -> dict[str, Any]:
    return gateway.run(run_id)


def delivered(gateway: Gateway, run_id: str) -> bool:
    state: str = status(gateway, run_id)["webhook"]["state"]
    return state == "delivered"


def test_no_credential_or_webhook_token_rests_in_the_clear(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    receiver: Receiver,
    store_kind: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = uuid.uuid4().hex
    caplog.set_level(logging.INFO, logger="asyncgate")
    # The default setups: the embedded store with no key configured (it makes its own), and
    # Redis with the key a gateway on Redis must be given.
    gateway = make_gateway({"limits.max_inflight": 1})
    clients = redis_clients(request, store_kind) if store_kind != "embedded" else []
    hook = receiver.url.replace("http://", f"http://user:{HOOK_PASSWORD}@") + f"/hook?token={HOOK_TOKEN}"
    webhook = f"webhookEndpoint={quote(hook, safe='')}"
    headers = {"Authorization": f"Bearer {AUTH}", "Cookie": f"sid={COOKIE}", "X-Api-Key": API_KEY}
    try:
        running = gateway.client.post(f"/sleep?seconds=1.5&async=true&{webhook}", headers=headers)
        assert running.status_code == 202
        running_id = running.json()["run_id"]
        # /status answers without echoing the request: what rests is only what the gateway stored.
        queued = gateway.client.post(f"/status/200?async=true&marker={marker}&{webhook}", content=b"q", headers=headers)
        assert queued.status_code == 202
        queued_id = queued.json()["run_id"]
        wait_until(lambda: status(gateway, running_id)["status"] == "running")
        assert status(gateway, queued_id)["status"] == "queued"
        assert_no_canary(at_rest(gateway, clients), "one run is queued and one running")
        for run_id in (running_id, queued_id):
            assert gateway.wait_final(run_id)["status"] == "succeeded"
        assert_no_canary(at_rest(gateway, clients), "the runs are finished")
        for run_id in (running_id, queued_id):
            wait_until(functools.partial(delivered, gateway, run_id))
        assert_no_canary(at_rest(gateway, clients), "the webhooks are delivered")
        # The receiver got the real URL, with its token; the status shows it masked.
        deliveries = receiver.deliveries.for_run(queued_id)
        assert deliveries and deliveries[0]["path"] == "/hook"
        assert (
            status(gateway, queued_id)["webhook"]["url"]
            == f"http://***@127.0.0.1:{receiver.server.port}/hook?token=***"
        )
        (call,) = [c for c in upstream.calls.all() if marker in str(c["query"])]
        assert dict(call["headers"])["authorization"] == f"Bearer {AUTH}"  # replayed to the upstream
        assert dict(call["headers"])["x-api-key"] == API_KEY
        ready = gateway.client.get(f"{gateway.prefix}/readyz").json()
        assert ready["sealing"] == "sealed"
        started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("asyncgate ready")]
        assert started and "credentials and webhook URLs sealed at rest" in started[0]
        assert f"deployment {gateway.config.deployment}" in started[0]
    finally:
        for client in clients:
            client.close()


def test_the_webhook_url_is_deleted_from_the_run_once_delivered(
    make_gateway: GatewayFactory, receiver: Receiver, store_kind: str, request: pytest.FixtureRequest
) -> None:
    gateway = make_gateway()
    run_id = gateway.client.post(f"/echo?async=true&webhookEndpoint={quote(receiver.url + '/hook', safe='')}").json()[
        "run_id"
    ]
    wait_until(lambda: status(gateway, run_id)["webhook"]["state"] == "delivered")
    if store_kind == "embedded":
        with sqlite3.connect(Path(gateway.config.store.data_dir) / "asyncgate.db") as db:
            assert db.execute("SELECT webhook_url FROM runs WHERE run_id = ?", (run_id,)).fetchone() == (None,)
        db.close()
    else:
        client: redis.Redis | redis.RedisCluster = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        if store_kind == "cluster":
            client = redis.RedisCluster(host="127.0.0.1", port=request.getfixturevalue("cluster_server").nodes[0].port)
        try:
            fields = client.hgetall(f"{{{gateway.config.store.key_prefix}}}:run:{run_id}")
            assert b"webhook_url" not in fields and fields[b"webhook"] == b"1"
        finally:
            client.close()
    # Redelivery names the URL again; without one, 409.
    refused = gateway.client.post(f"{gateway.prefix}/runs/{run_id}/webhook")
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "webhook_url_deleted",
        "message": "the run's webhook URL was deleted when its last delivery ended; name it again with "
        "?webhookEndpoint=",
    }
    again = gateway.client.post(
        f"{gateway.prefix}/runs/{run_id}/webhook", headers={"Asyncgate-Webhook": receiver.url + "/again"}
    )
    assert again.status_code == 202
    wait_until(lambda: len(receiver.deliveries.for_run(run_id)) == 2)
    assert [d["path"] for d in receiver.deliveries.for_run(run_id)] == ["/hook", "/again"]
