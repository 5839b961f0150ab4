"""A store that answers but cannot write: readyz says so (503, with the reason) and a submission
gets 503 store_unavailable, as when the store is down; both recover with the store. Also what
readyz says about sealing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_async import submit
from tests.support.redis_server import RedisServer


@pytest.mark.parametrize("store_kind", ["redis"])
def test_redis_out_of_memory_is_reported_by_readyz_and_refuses_submissions(
    make_gateway: GatewayFactory, private_redis: RedisServer
) -> None:
    gateway = make_gateway({"store.redis_url": private_redis.url})
    submit(gateway, "/echo?async=true")
    private_redis.command(b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction")
    private_redis.command(b"CONFIG", b"SET", b"maxmemory", b"1")
    ready = gateway.client.get(f"{gateway.prefix}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "store": "redis",
        "reason": "redis refuses writes: command not allowed when used memory > 'maxmemory'. "
        f"script: {_probe_sha(ready.json()['reason'])}, on @user_script:2.",
    }
    refused = gateway.client.post("/echo?async=true", content=b"x")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "store_unavailable"
    private_redis.command(b"CONFIG", b"SET", b"maxmemory", b"0")
    assert gateway.client.get(f"{gateway.prefix}/readyz").status_code == 200
    assert gateway.wait_final(submit(gateway, "/echo?async=true"))["status"] == "succeeded"


def _probe_sha(reason: str) -> str:
    return reason.split("script: ", 1)[1].split(",", 1)[0]


@pytest.mark.parametrize("store_kind", ["redis"])
def test_redis_without_a_key_says_plaintext_when_chosen(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"store.encryption_key": [], "store.plaintext": True})
    ready = gateway.client.get(f"{gateway.prefix}/readyz").json()
    assert ready["sealing"] == "plaintext"
    assert "store.plaintext: credentials and webhook URLs are stored in the clear" in ready["warnings"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that fills. Needs mount rights (root in a container that allows it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("store_kind", ["embedded"])
def test_a_full_disk_under_the_embedded_store_is_reported_by_readyz(
    make_gateway: GatewayFactory, small_disk: Path
) -> None:
    gateway = make_gateway({"store.data_dir": str(small_disk / "data")})
    submit(gateway, "/echo?async=true")
    filler = small_disk / "filler"
    # Unbuffered: a buffered file keeps what the full disk refused, and raises again on close
    # (whether it does depends on how much room the database left, which changes with its schema).
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):  # written until the disk is full
        while True:
            out.write(os.urandom(64 * 1024))
    ready = gateway.client.get(f"{gateway.prefix}/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "full" in ready.json()["reason"]
    refused = gateway.client.post("/echo?async=true", content=uuid.uuid4().bytes * 1000)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "store_unavailable"
    filler.unlink()
    assert gateway.client.get(f"{gateway.prefix}/readyz").status_code == 200
    assert gateway.wait_final(submit(gateway, "/echo?async=true"))["status"] == "succeeded"
