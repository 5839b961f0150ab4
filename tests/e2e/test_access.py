"""Security over real sockets: runs belong to their caller, secrets stay secret."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from cryptography.fernet import Fernet

from asyncgate import logs
from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.wait import wait_until

TENANT_A = {"Authorization": "Bearer tenant-a-token"}
TENANT_B = {"Authorization": "Bearer tenant-b-token"}
ADMIN_TOKEN = "admin-token-0123456789"
HEADER_MODE = {"access.mode": "header", "access.admin_token": ADMIN_TOKEN}


def submit_as(gateway: Gateway, headers: dict[str, str], path: str = "/echo?async=true", body: bytes = b"x") -> str:
    response = gateway.client.post(path, content=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def test_other_callers_get_exactly_the_unknown_run_answer(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(HEADER_MODE)
    run_id = submit_as(gateway, TENANT_A)
    wait_until(
        lambda: gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=TENANT_A).json()["status"] == "succeeded"
    )
    p = gateway.prefix
    attempts = [
        ("GET", f"{p}/runs/{{}}"),
        ("GET", f"{p}/runs/{{}}/result"),
        ("GET", f"{p}/runs/{{}}/events"),
        ("DELETE", f"{p}/runs/{{}}"),
        ("POST", f"{p}/runs/{{}}/webhook"),
    ]
    for method, template in attempts:
        theirs = gateway.client.request(method, template.format(run_id), headers=TENANT_B)
        unknown = gateway.client.request(method, template.format("x" * 22), headers=TENANT_B)
        assert theirs.status_code == unknown.status_code == 404, template
        assert theirs.content == unknown.content
        assert theirs.headers["content-type"] == unknown.headers["content-type"]
    mine = gateway.client.get(f"{p}/runs/{run_id}/result", headers=TENANT_A)
    assert mine.status_code == 200
    listed_b = gateway.client.get(f"{p}/runs", headers=TENANT_B).json()["runs"]
    assert run_id not in {r["run_id"] for r in listed_b}
    listed_a = gateway.client.get(f"{p}/runs", headers=TENANT_A).json()["runs"]
    assert [r["run_id"] for r in listed_a] == [run_id]


def test_admin_token_sees_and_controls_every_run(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(HEADER_MODE)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    run_a = submit_as(gateway, TENANT_A, "/sleep?seconds=30&async=true")
    run_b = submit_as(gateway, TENANT_B)
    listed = {r["run_id"] for r in gateway.client.get(f"{gateway.prefix}/runs", headers=admin).json()["runs"]}
    assert {run_a, run_b} <= listed
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_b}", headers=admin).status_code == 200
    cancelled = gateway.client.delete(f"{gateway.prefix}/runs/{run_a}", headers=admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


def test_credentials_are_required_unless_access_is_open(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(HEADER_MODE)
    for response in (
        gateway.client.post("/echo?async=true", content=b"x"),
        gateway.client.get(f"{gateway.prefix}/runs/whatever"),
        gateway.client.get(f"{gateway.prefix}/runs"),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == {
            "code": "credentials_required",
            "message": "send the Authorization header: runs belong to the caller that submits them",
        }
    assert gateway.stored_run_count() == 0
    # Synchronous requests are the upstream's business: they pass without credentials.
    assert gateway.client.get("/echo").status_code == 200


def test_a_custom_caller_header(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway({"access.mode": "header", "access.header": "X-Team-Key"})
    run_id = submit_as(gateway, {"X-Team-Key": "team-1"})
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers={"X-Team-Key": "team-2"}).status_code == 404
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers={"X-Team-Key": "team-1"}).status_code == 200


def test_guessing_unknown_ids_is_rate_limited(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({**HEADER_MODE, "access.unknown_run_limit": 5})
    codes = [gateway.client.get(f"{gateway.prefix}/runs/guess{n}", headers=TENANT_B).status_code for n in range(7)]
    assert codes == [404] * 5 + [429, 429]
    limited = gateway.client.get(f"{gateway.prefix}/runs/guess", headers=TENANT_B)
    assert limited.json()["error"]["code"] == "too_many_unknown_runs"
    assert int(limited.headers["retry-after"]) > 0
    # Another caller is not affected.
    assert gateway.client.get(f"{gateway.prefix}/runs/guess", headers=TENANT_A).status_code == 404


CANARIES = ("canary-auth-7f3a", "canary-cookie-91bd", "canary-apikey-c0de", "canary-hookpw-5e5e", "canary-hookq-1d1d")


def store_dump(gateway: Gateway) -> bytes:
    store = gateway.config.store
    if store.redis_url:
        client = redis.Redis.from_url(store.redis_url)
        try:
            chunks = [client.dump(key) or b"" for key in client.scan_iter(match=f"{{{store.key_prefix}}}:*")]
            return b"".join(chunks)
        finally:
            client.close()
    data = b""
    for path in Path(store.data_dir).glob("asyncgate.db*"):
        data += path.read_bytes()
    with sqlite3.connect(Path(store.data_dir) / "asyncgate.db") as db:
        data += str(db.execute("SELECT * FROM runs").fetchall()).encode()
    return data


@pytest.fixture
def production_logging() -> Iterator[None]:
    """The logging set-up `asyncgate serve` installs, at its most verbose."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    logs.configure("json", "debug")
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


def test_canary_secrets_appear_nowhere(
    make_gateway: GatewayFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture, production_logging: None
) -> None:
    caplog.set_level(logging.DEBUG)
    key = Fernet.generate_key().decode()
    gateway = make_gateway({**HEADER_MODE, "store.encryption_key": [key], "limits.max_inflight": 1})
    auth = {"Authorization": f"Bearer {CANARIES[0]}"}
    hook_url = receiver.url.replace("http://", f"http://user:{CANARIES[3]}@") + f"/hook?token={CANARIES[4]}"
    blocker = submit_as(gateway, auth, "/sleep?seconds=1&async=true")
    headers = {**auth, "Cookie": f"sid={CANARIES[1]}", "X-Api-Key": CANARIES[2]}
    run_id = submit_as(gateway, headers, f"/status/200?async=true&webhookEndpoint={quote(hook_url, safe='')}")
    seen: list[bytes] = [store_dump(gateway)]  # queued: the credentials are sealed
    responses: list[httpx.Response] = []
    wait_until(lambda: receiver.deliveries.for_run(run_id), timeout=20)
    wait_until(
        lambda: (
            gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=auth).json()["webhook"]["state"]
            == "delivered"
        )
    )
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/events", "/runs", f"/runs/{blocker}"):
        responses.append(gateway.client.get(gateway.prefix + path, headers=auth))
    seen.append(store_dump(gateway))  # finished: the credentials are gone
    stored = b"\n".join(seen)
    # Request credentials are sealed while the run lives and deleted when it ends. (The webhook
    # URL is stored as given, since it is needed until its delivery is final.)
    for canary in CANARIES[:3]:
        assert canary.encode() not in stored, canary
    shown = [r.content + str(r.headers).encode() for r in responses]
    shown.extend(d["body"] + str(d["headers"]).encode() for d in receiver.deliveries.all())
    shown.append("\n".join(record.getMessage() for record in caplog.records).encode())
    for canary in CANARIES:
        assert canary.encode() not in b"\n".join(shown), canary
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=auth).json()["webhook"]["url"] == (
        f"http://***@127.0.0.1:{receiver.server.port}/hook?token=***"
    )


def test_sealed_credentials_survive_key_rotation(make_gateway: GatewayFactory) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings: dict[str, Any] = {"access.mode": "header", "limits.max_inflight": 1, "shutdown.drain_timeout": 0.1}
    first = make_gateway({**settings, "store.encryption_key": [old]})
    blocker = submit_as(first, TENANT_A, "/sleep?seconds=30&async=true")
    wait_until(
        lambda: first.client.get(f"{first.prefix}/runs/{blocker}", headers=TENANT_A).json()["status"] == "running"
    )
    queued = submit_as(first, TENANT_A, "/echo?async=true", b"sealed")
    first.stop()
    second = make_gateway({**settings, "store.encryption_key": [new, old]})
    wait_until(
        lambda: second.client.get(f"{second.prefix}/runs/{queued}", headers=TENANT_A).json()["status"] == "succeeded",
        timeout=20,
    )
    echoed = second.client.get(f"{second.prefix}/runs/{queued}/result", headers=TENANT_A).json()
    assert dict(echoed["headers"])["authorization"] == TENANT_A["Authorization"]
