"""Secrets at rest in both stores: credentials and webhook URLs sealed apart from the run, the
URL deleted once its delivery is final, the embedded store's own key, the deployment's identity,
and a store that answers but cannot write."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from starlette.datastructures import Secret

from asyncgate.errors import ConfigError, StoreError, StoreUnavailable, WebhookUrlDeleted
from asyncgate.runs import Delivery, DeliveryState, Outcome, Run, RunResult, RunState
from asyncgate.store.base import Identity, RunStore
from asyncgate.store.embedded import DATABASE_FILE, EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import KEY_FILE, PLACEHOLDER, Sealer
from tests.store.conftest import Runner, new_run, stored
from tests.support.at_rest import redis_key, sqlite_files
from tests.support.redis_server import RedisServer
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.wait import wait_until

TOKEN = "canary-token-5a5a"
HOOK_SECRET = "canary-hook-6b6b"
HOOK = f"https://user:{HOOK_SECRET}@hooks.example/cb?sig={HOOK_SECRET}"
DONE = Outcome(RunState.SUCCEEDED, result=RunResult(status=200, headers=(), body=b"done"))
LEASE = 30.0


def with_secrets(webhook_url: str | None = HOOK) -> Run:
    run = new_run("POST", headers=(("Authorization", f"Bearer {TOKEN}"), ("Accept", "text/plain")))
    return dataclasses.replace(run, request=dataclasses.replace(run.request, webhook_url=webhook_url))


def at_rest(store: RunStore) -> bytes:
    """Everything the store holds, read behind its back: every Redis value, or the SQLite files."""
    if isinstance(store, RedisRunStore):
        client = redis.Redis.from_url(_url(store))
        try:
            return b"".join(redis_key(client, key) for key in client.scan_iter(match=f"{store.tag}:*"))
        finally:
            client.close()
    assert isinstance(store, EmbeddedRunStore)
    return sqlite_files(store.data_dir)


def _url(store: RedisRunStore) -> str:
    kwargs = store._redis.get_connection_kwargs()
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def stored_webhook_url(store: RunStore, run_id: str) -> bytes | None:
    if isinstance(store, RedisRunStore):
        client = redis.Redis.from_url(_url(store))
        try:
            stored_url = client.hget(store.run_key(run_id), "webhook_url")
        finally:
            client.close()
        assert stored_url is None or isinstance(stored_url, bytes)  # redis-py types sync and async replies as one
        return stored_url
    assert isinstance(store, EmbeddedRunStore)
    with sqlite3.connect(store.data_dir / DATABASE_FILE) as db:
        (value,) = db.execute("SELECT webhook_url FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    db.close()
    assert value is None or isinstance(value, bytes)
    return value


def finish_and_take_delivery(store: RunStore, run: Runner, queued: Run) -> int:
    (claimed,) = run(store.claim("me", 1, 0, LEASE))
    assert run(store.finish(queued.run_id, claimed.attempt, DONE, 60))
    (due,) = run(store.due_deliveries(10, LEASE))
    assert due.run.request.webhook_url == HOOK  # opened for its delivery, and only there
    return due.token


def test_credentials_and_the_webhook_url_rest_sealed_and_come_back_where_needed(store: RunStore, run: Runner) -> None:
    queued = with_secrets()
    run(store.create(queued, b"body"))
    assert TOKEN.encode() not in at_rest(store)
    assert HOOK_SECRET.encode() not in at_rest(store)
    shown = run(store.get(queued.run_id))
    assert shown is not None
    assert shown.request.webhook_url == "https://***@hooks.example/cb?sig=***"
    assert dict(shown.request.headers)["Authorization"] == PLACEHOLDER
    (claimed,) = run(store.claim("me", 1, 0, LEASE))
    assert dict(claimed.request.headers)["Authorization"] == f"Bearer {TOKEN}"  # the holder replays it
    assert claimed.request.webhook_url == "https://***@hooks.example/cb?sig=***"  # not the executor's business
    assert TOKEN.encode() not in at_rest(store)
    assert run(store.finish(queued.run_id, claimed.attempt, DONE, 60))
    assert store.sealer.sealing == "sealed"
    assert HOOK_SECRET.encode() not in at_rest(store)


@pytest.mark.parametrize("final", [DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.GONE])
def test_the_webhook_url_is_deleted_once_the_delivery_is_final(
    store: RunStore, run: Runner, final: DeliveryState
) -> None:
    queued = with_secrets()
    run(store.create(queued, b""))
    token = finish_and_take_delivery(store, run, queued)
    assert stored_webhook_url(store, queued.run_id)
    assert run(store.record_delivery(queued.run_id, token, Delivery(final, 1, 200, None, None), 60))
    assert stored_webhook_url(store, queued.run_id) is None
    shown = run(store.get(queued.run_id))
    assert shown is not None and shown.request.webhook_url == "https://***@hooks.example/cb?sig=***"
    with pytest.raises(WebhookUrlDeleted):
        run(store.redeliver(queued.run_id))
    # Refused, it changed nothing: the delivery is still final.
    delivery = stored(store, run, queued.run_id).delivery
    assert delivery is not None and delivery.state is final
    # Named again, the URL is sealed and used.
    assert run(store.redeliver(queued.run_id, "https://hooks.example/again?t=x")) is True
    (due,) = run(store.due_deliveries(10, LEASE))
    assert due.run.request.webhook_url == "https://hooks.example/again?t=x"
    assert b"hooks.example/again" not in at_rest(store)


def test_a_delivery_still_pending_keeps_its_url(store: RunStore, run: Runner) -> None:
    queued = with_secrets()
    run(store.create(queued, b""))
    token = finish_and_take_delivery(store, run, queued)
    retry = Delivery(DeliveryState.PENDING, 1, 500, "the receiver answered 500", 0.0)
    assert run(store.record_delivery(queued.run_id, token, retry, 60))
    assert stored_webhook_url(store, queued.run_id)
    assert run(store.redeliver(queued.run_id)) is True
    (due,) = run(store.due_deliveries(10, LEASE))
    assert due.run.request.webhook_url == HOOK


def test_a_run_without_a_webhook_cannot_be_redelivered(store: RunStore, run: Runner) -> None:
    queued = with_secrets(webhook_url=None)
    run(store.create(queued, b""))
    (claimed,) = run(store.claim("me", 1, 0, LEASE))
    assert run(store.finish(queued.run_id, claimed.attempt, DONE, 60))
    assert run(store.redeliver(queued.run_id, "https://hooks.example/x")) is False
    assert stored_webhook_url(store, queued.run_id) is None


# --- the embedded store's own key ------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def opened(
    data_dir: Path, run: Runner, *, sealer: Sealer | None = None, identity: Identity | None = None
) -> EmbeddedRunStore:
    store = EmbeddedRunStore(data_dir, sealer=sealer, identity=identity)
    run(store.open())
    return store


def test_the_embedded_store_makes_a_key_only_its_user_reads_and_keeps_it(data_dir: Path, run: Runner) -> None:
    store = opened(data_dir, run)
    key_file = data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    Fernet(key.encode())  # a valid Fernet key
    assert [path.name for path in data_dir.iterdir() if path.name.startswith(".")] == []  # no temporary left
    queued = with_secrets()
    run(store.create(queued, b""))
    run(store.close())
    again = opened(data_dir, run)
    try:
        assert key_file.read_text().strip() == key
        (claimed,) = run(again.claim("me", 1, 0, LEASE))
        assert dict(claimed.request.headers)["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN.encode() not in at_rest(again)
    finally:
        run(again.close())


def test_configured_keys_still_open_runs_sealed_with_the_stores_own(data_dir: Path, run: Runner) -> None:
    store = opened(data_dir, run)
    queued = with_secrets()
    run(store.create(queued, b""))
    run(store.close())
    configured = Sealer([Secret(ENCRYPTION_KEY)])
    again = opened(data_dir, run, sealer=configured)
    try:
        (claimed,) = run(again.claim("me", 1, 0, LEASE))
        assert dict(claimed.request.headers)["Authorization"] == f"Bearer {TOKEN}"
        # New runs are sealed with the configured key, the first.
        later = with_secrets()
        run(again.create(later, b""))
        sealed = stored_webhook_url(again, later.run_id)
        assert sealed is not None
        assert Fernet(ENCRYPTION_KEY.encode()).decrypt(sealed) == HOOK.encode()
    finally:
        run(again.close())


def test_configured_keys_make_no_key_file(data_dir: Path, run: Runner) -> None:
    store = opened(data_dir, run, sealer=Sealer([Secret(ENCRYPTION_KEY)]))
    run(store.close())
    assert not (data_dir / KEY_FILE).exists()


def test_a_damaged_key_file_is_a_clear_error(data_dir: Path, run: Runner) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / KEY_FILE).write_text("not a key\n")
    store = EmbeddedRunStore(data_dir)
    with pytest.raises(StoreError, match="does not hold a Fernet key"):
        run(store.open())
    run(store.close())


# --- the deployment's identity ----------------------------------------------------------------------


def test_the_embedded_store_refuses_another_upstreams_data_unless_allowed(data_dir: Path, run: Runner) -> None:
    first = Identity("model-a", "http://a:8000")
    run(opened(data_dir, run, identity=first).close())
    moved = Identity("model-a", "http://b:8000")
    refused = EmbeddedRunStore(data_dir, identity=moved)
    with pytest.raises(ConfigError) as caught:
        run(refused.open())
    assert caught.value.key == "upstream"
    assert f"the data directory '{data_dir}' holds the runs of deployment 'model-a', accepted for http://a:8000" in (
        caught.value.message
    )
    # The lock was released: the same directory opens for the intended change.
    allowed = opened(data_dir, run, identity=Identity("model-a", "http://b:8000", allow_upstream_change=True))
    run(allowed.close())
    run(opened(data_dir, run, identity=moved).close())  # the new upstream is the data's now


def test_redis_keys_of_a_deployment_refuse_another_upstream(redis_server: RedisServer, run: Runner) -> None:
    prefix = f"test-{os.urandom(6).hex()}"
    sealer = Sealer([Secret(ENCRYPTION_KEY)])
    first = RedisRunStore(redis_server.url, prefix, sealer=sealer, identity=Identity("d", "http://a:1"))
    run(first.open())
    run(first.close())
    intake = RedisRunStore(redis_server.url, prefix, sealer=sealer)  # executes nothing, claims nothing
    run(intake.open())
    run(intake.close())
    other = RedisRunStore(redis_server.url, prefix, sealer=sealer, identity=Identity("d", "http://b:1"))
    with pytest.raises(ConfigError, match="accepted for http://a:1, not http://b:1"):
        run(other.open())
    run(other.close())


def test_a_store_that_never_opened_claims_nothing_of_another_upstreams_deployment(
    redis_server: RedisServer, run: Runner
) -> None:
    # As for a gateway started while Redis was down: its first claim makes the check open() would have.
    prefix = f"test-{os.urandom(6).hex()}"
    sealer = Sealer([Secret(ENCRYPTION_KEY)])
    owner = RedisRunStore(redis_server.url, prefix, sealer=sealer, identity=Identity("d", "http://a:1"))
    run(owner.open())
    queued = new_run()
    run(owner.create(queued, b"body"))
    late = RedisRunStore(redis_server.url, prefix, sealer=sealer, identity=Identity("d", "http://b:1"))
    with pytest.raises(StoreError, match="accepted for http://a:1, not http://b:1"):
        run(late.claim("late", 10, 0, 30))
    assert stored(owner, run, queued.run_id).state is RunState.QUEUED
    assert [claimed.run_id for claimed in run(owner.claim("owner", 10, 0, 30))] == [queued.run_id]
    run(late.close())
    run(owner.close())


# --- a store that answers but cannot write ---------------------------------------------------------


def test_redis_out_of_memory_fails_the_ping_and_the_create(private_redis: RedisServer, run: Runner) -> None:
    store = RedisRunStore(private_redis.url, "oom", sealer=Sealer([Secret(ENCRYPTION_KEY)]))
    run(store.open())
    try:
        run(store.ping())
        private_redis.command(b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction")
        private_redis.command(b"CONFIG", b"SET", b"maxmemory", b"1")
        with pytest.raises(StoreUnavailable, match="redis refuses writes: command not allowed when used memory"):
            run(store.ping())
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            run(store.create(with_secrets(), b""))
        private_redis.command(b"CONFIG", b"SET", b"maxmemory", b"0")
        run(store.ping())
    finally:
        run(store.close())


def test_redis_refusing_writes_after_a_failed_save_fails_the_ping(private_redis: RedisServer, run: Runner) -> None:
    store = RedisRunStore(private_redis.url, "misconf", sealer=Sealer([Secret(ENCRYPTION_KEY)]))
    run(store.open())
    try:
        private_redis.command(b"CONFIG", b"SET", b"save", b"3600 1")
        shutil.rmtree(private_redis.dir)  # the snapshot cannot be written: stop-writes-on-bgsave-error
        private_redis.command(b"BGSAVE")
        wait_until(lambda: refusal(store, run), timeout=10, message="writes refused")
        with pytest.raises(StoreUnavailable, match="redis refuses writes: MISCONF"):
            run(store.ping())
        with pytest.raises(StoreUnavailable, match="MISCONF"):
            run(store.create(with_secrets(), b""))
        private_redis.command(b"CONFIG", b"SET", b"save", b"")  # no snapshots promised: writes resume
        run(store.ping())
    finally:
        private_redis.dir.mkdir(exist_ok=True)
        run(store.close())


def refusal(store: RedisRunStore, run: Runner) -> bool:
    """Whether the store refuses writes yet (a failed BGSAVE is seen once its child exits)."""
    try:
        run(store.ping())
    except StoreUnavailable:
        return True
    return False


def test_the_embedded_store_that_cannot_write_fails_the_ping(data_dir: Path, run: Runner) -> None:
    store = opened(data_dir, run)
    try:
        run(store.ping())
        # SQLite's own read-only switch, on the store's connection: every write is refused as a
        # read-only file's would be (a root test process cannot make a file read-only by mode).
        run(store._call(lambda db: db.execute("PRAGMA query_only = ON")))
        with pytest.raises(StoreUnavailable, match="readonly"):
            run(store.ping())
        with pytest.raises(StoreUnavailable, match="readonly"):
            run(store.create(with_secrets(), b""))
        run(store._call(lambda db: db.execute("PRAGMA query_only = OFF")))
        run(store.ping())
    finally:
        run(store.close())


def test_credentials_stored_in_the_clear_before_still_open(data_dir: Path, run: Runner) -> None:
    # A file from a version that sealed nothing without a key: the values as a JSON list.
    plain = opened(data_dir, run, sealer=Sealer())
    assert plain.sealer.keys  # even then, this version makes and uses its own key
    queued = with_secrets(webhook_url=None)
    run(plain.create(queued, b""))
    run(plain.close())
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        db.execute("UPDATE runs SET secrets = ?", (f'["Bearer {TOKEN}"]'.encode(),))
    db.close()
    again = opened(data_dir, run)
    try:
        (claimed,) = run(again.claim("me", 1, 0, LEASE))
        assert dict(claimed.request.headers)["Authorization"] == f"Bearer {TOKEN}"
    finally:
        run(again.close())


def test_key_rotation_opens_old_webhook_urls_and_seals_new_ones_with_the_new_key(
    redis_server: RedisServer, run: Runner
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    prefix = f"rotate-{os.urandom(6).hex()}"
    before = RedisRunStore(redis_server.url, prefix, sealer=Sealer([Secret(old)]))
    run(before.open())
    queued = with_secrets()
    run(before.create(queued, b""))
    run(before.close())
    after = RedisRunStore(redis_server.url, prefix, sealer=Sealer([Secret(new), Secret(old)]))
    run(after.open())
    try:
        (claimed,) = run(after.claim("me", 1, 0, LEASE))
        assert dict(claimed.request.headers)["Authorization"] == f"Bearer {TOKEN}"
        assert run(after.finish(queued.run_id, claimed.attempt, DONE, 60))
        (due,) = run(after.due_deliveries(10, LEASE))
        assert due.run.request.webhook_url == HOOK
        later = with_secrets()
        run(after.create(later, b""))
        sealed = stored_webhook_url(after, later.run_id)
        assert sealed is not None and Fernet(new.encode()).decrypt(sealed) == HOOK.encode()
    finally:
        run(after.close())


def test_runs_left_under_the_old_default_prefix_are_pointed_out(
    private_redis: RedisServer, run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    # A Redis used by a version whose default key prefix was "asyncgate" for every deployment.
    legacy = RedisRunStore(private_redis.url, "asyncgate", sealer=Sealer([Secret(ENCRYPTION_KEY)]))
    run(legacy.open())
    run(legacy.create(with_secrets(), b""))
    run(legacy.close())
    identity = Identity("model-a", "http://a:1")
    store = RedisRunStore(private_redis.url, "asyncgate:model-a", sealer=legacy.sealer, identity=identity)
    with caplog.at_level("WARNING", logger="asyncgate.store"):
        run(store.open())
    run(store.close())
    assert [record.getMessage() for record in caplog.records] == [
        "this Redis holds runs under the key prefix 'asyncgate', which this gateway (prefix 'asyncgate:model-a') "
        "does not serve; set store.key_prefix: asyncgate to serve them (see docs/fleets.md)"
    ]
