"""Behaviour of the Redis store beyond the contract: its keys, TTLs, queue and failures."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from asyncgate.config import Config, StoreConfig
from asyncgate.errors import StoreError, StoreUnavailable
from asyncgate.runs import Delivery, DeliveryState, Outcome, RunResult, RunState
from asyncgate.store.base import PURGE_BATCH, PURGE_ROUNDS, UNFINISHED_TTL, Idempotency, Lease, Share
from asyncgate.store.factory import build_store
from asyncgate.store.redis import _STORE_ERRORS, RedisRunStore
from tests.store.conftest import Runner, new_run, with_webhook
from tests.support.redis_server import RedisServer, free_port
from tests.support.wait import wait_until

LEASE = 30.0
DONE = Outcome(RunState.SUCCEEDED, result=RunResult(status=200, headers=(), body=b"done"))


@pytest.fixture
def redis_store(redis_server: RedisServer, run: Runner) -> Iterator[RedisRunStore]:
    store = RedisRunStore(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}", stale_entry_idle=0.2)
    run(store.open())
    yield store
    run(store.close())


Command = Callable[[Awaitable[Any]], Any]


@pytest.fixture
def client(redis_server: RedisServer, run: Runner) -> Iterator[aioredis.Redis]:
    """A plain client, to look at (and tamper with) what the store keeps."""
    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    yield client
    run(client.aclose())


@pytest.fixture
def raw(client: aioredis.Redis, run: Runner) -> Command:
    """Runs one command of ``client``: ``raw(client.xlen(key))``."""

    async def wait(command: Awaitable[Any]) -> Any:
        return await command

    return lambda command: run(wait(command))


def test_the_stream_entry_carries_only_the_run_id(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()

    run(redis_store.create(queued, b"a body that stays in the hash"))

    entries = raw(client.xrange(redis_store.queue))
    assert [fields for _, fields in entries] == [{b"run_id": queued.run_id.encode()}]


def test_a_run_is_one_hash_under_a_hash_tag(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run("PUT")

    run(redis_store.create(queued, b"\x00body"))

    key = redis_store.run_key(queued.run_id)
    assert redis_store.run_key(queued.run_id) == key
    stored = raw(client.hgetall(key))
    assert set(stored) == {b"state", b"attempt", b"created_at", b"request", b"body", b"entry"}
    assert [entry_id for entry_id, _ in raw(client.xrange(redis_store.queue))] == [stored[b"entry"]]
    assert (stored[b"state"], stored[b"attempt"], stored[b"body"]) == (b"queued", b"0", b"\x00body")


def test_no_key_of_a_run_has_a_ttl_and_a_finished_run_is_scheduled_for_its_retention(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    # The expiry index and the listing index say when purge() deletes a run (#18).
    queued = new_run()
    run(redis_store.create(queued, b""))
    key, member = redis_store.run_key(queued.run_id), f"{queued.run_id} "
    assert raw(client.ttl(key)) == raw(client.ttl(redis_store.events_key(queued.run_id))) == -1
    assert raw(client.zscore(redis_store.expiry, member)) is None  # found through {P}:index once old

    run(redis_store.claim("owner-a", 1, 0, LEASE))
    assert run(redis_store.finish(queued.run_id, 1, DONE, 120.0)) is not None

    assert raw(client.ttl(key)) == raw(client.ttl(redis_store.events_key(queued.run_id))) == -1
    assert 110 < float(raw(client.hget(key, "expires_at"))) - time.time() <= 120
    # Its expiry entry is written with the store's next heartbeat (or purge), one ZADD for all.
    assert raw(client.zscore(redis_store.expiry, member)) is None
    assert not run(redis_store.keep_alive("owner-a", LEASE, 10.0, 0.0)).lost
    assert raw(client.zscore(redis_store.expiry, member)) == float(raw(client.hget(key, "expires_at")))
    assert not raw(client.hget(key, "body"))
    assert not raw(client.hget(key, "secrets"))


def test_claimed_entries_are_acked_and_removed_from_the_stream(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    for _ in range(3):
        run(redis_store.create(new_run(), b""))

    assert len(run(redis_store.claim("owner-a", 10, 0, LEASE))) == 3

    assert raw(client.xlen(redis_store.queue)) == 0
    assert raw(client.xpending(redis_store.queue, redis_store.group))["pending"] == 0


def test_a_duplicate_queue_entry_does_not_hand_out_the_run_twice(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    run(redis_store.create(queued, b""))
    raw(client.xadd(redis_store.queue, {"run_id": queued.run_id}))

    claimed = run(redis_store.claim("owner-a", 10, 0, LEASE))

    assert [(c.run_id, c.attempt) for c in claimed] == [(queued.run_id, 1)]
    assert raw(client.xlen(redis_store.queue)) == 0


def test_an_entry_read_by_a_claimer_that_died_is_taken_over(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    run(redis_store.create(queued, b""))
    # A claimer that read the entry, then died before running its claim script and acking.
    raw(client.xreadgroup(redis_store.group, "dead-gateway", {redis_store.queue: ">"}, count=10))
    assert run(redis_store.claim("owner-a", 10, 0, LEASE)) == []

    claimed = wait_until(lambda: run(redis_store.claim("owner-a", 10, 0, LEASE)), timeout=5)

    assert [(c.run_id, c.attempt) for c in claimed] == [(queued.run_id, 1)]


def test_the_lease_index_follows_claim_renew_and_finish(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    run(redis_store.create(queued, b""))
    assert raw(client.zscore(redis_store.leases, queued.run_id)) is None

    run(redis_store.claim("owner-a", 1, 0, LEASE))
    claimed_until = raw(client.zscore(redis_store.leases, queued.run_id))
    assert claimed_until == float(raw(client.hget(redis_store.run_key(queued.run_id), "lease_until")))

    run(redis_store.renew(queued.run_id, 1, 2 * LEASE))
    assert raw(client.zscore(redis_store.leases, queued.run_id)) > claimed_until

    run(redis_store.finish(queued.run_id, 1, DONE, 60.0))
    assert raw(client.zscore(redis_store.leases, queued.run_id)) is None


def test_expired_drops_index_entries_of_runs_that_are_gone(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    raw(client.zadd(redis_store.leases, {"vanished-run": 1.0}))

    assert run(redis_store.expired(10)) == []

    assert raw(client.zcard(redis_store.leases)) == 0


def test_expired_reindexes_a_run_whose_lease_was_extended(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    run(redis_store.create(queued, b""))
    run(redis_store.claim("owner-a", 1, 0, LEASE))
    # As if the renewal had reached the run but not the index (the gateway died in between).
    raw(client.zadd(redis_store.leases, {queued.run_id: 1.0}))

    assert run(redis_store.expired(10)) == []

    lease_until = float(raw(client.hget(redis_store.run_key(queued.run_id), "lease_until")))
    assert raw(client.zscore(redis_store.leases, queued.run_id)) == lease_until


def test_a_closed_port_raises_store_unavailable(run: Runner) -> None:
    store = RedisRunStore(f"redis://127.0.0.1:{free_port()}/0", key_prefix="nowhere")
    try:
        with pytest.raises(StoreUnavailable):
            run(store.ping())
        with pytest.raises(StoreUnavailable):
            run(store.create(new_run(), b""))
        with pytest.raises(StoreUnavailable):
            run(store.open())
        with pytest.raises(StoreUnavailable):
            run(store.claim("owner-a", 1, 0, LEASE))
    finally:
        run(store.close())


def closed_transport_error() -> RuntimeError:
    """What uvloop raises on a write to a transport it closed, as redis-py meets it when the
    server went away (a Cluster master killed): a bare RuntimeError."""
    uvloop = pytest.importorskip("uvloop")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    async def write_after_close() -> RuntimeError:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            assert await reader.read() == b""  # the server hung up: its side is closed too
            writer.close()
            await writer.wait_closed()
            with pytest.raises(RuntimeError) as raised:
                writer.write(b"PING\r\n")
            return raised.value
        finally:
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(write_after_close())


def test_only_uvloops_closed_transport_error_is_taken_for_an_unreachable_redis() -> None:
    closed = closed_transport_error()
    with pytest.raises(StoreUnavailable, match="redis is unavailable: unable to perform operation on <TCPTransport"):
        with _STORE_ERRORS:
            raise closed

    # A Cluster with no master for a slot (mid-failover) answers so before any command is sent.
    with pytest.raises(StoreUnavailable, match="not covered"):
        with _STORE_ERRORS:
            raise redis.exceptions.SlotNotCoveredError('Slot "12" is not covered by the cluster.')

    # Any other RuntimeError is a bug: it surfaces as it is, not as "retry later".
    for bug in (RuntimeError("Event loop is closed"), RuntimeError("unable to perform operation on <x>; it is busy")):
        with pytest.raises(RuntimeError) as raised:
            with _STORE_ERRORS:
                raise bug
        assert raised.value is bug and not isinstance(raised.value, StoreError)


def test_a_redis_url_selects_the_redis_store(redis_server: RedisServer, run: Runner) -> None:
    store = build_store(Config(store=StoreConfig(redis_url=redis_server.url, key_prefix="chosen")))

    assert isinstance(store, RedisRunStore)
    assert store.queue == "{chosen}:queue"
    run(store.close())


def test_claim_recreates_the_consumer_group_after_redis_lost_its_data(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    raw(client.delete(redis_store.queue))
    queued = new_run()
    run(redis_store.create(queued, b""))

    assert run(redis_store.claim("owner-a", 1, 0, LEASE)) == []

    assert [c.run_id for c in run(redis_store.claim("owner-a", 1, 0, LEASE))] == [queued.run_id]


def test_purge_deletes_a_run_past_its_retention_and_every_index_entry_the_callers_included(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    caller = "c" * 32
    mine, kept = dataclasses.replace(new_run(), caller=caller), dataclasses.replace(new_run(), caller=caller)
    run(redis_store.create(mine, b"", idempotency=Idempotency("key", "fp")))
    run(redis_store.create(kept, b""))
    claimed = run(redis_store.claim("owner-a", 2, 0, LEASE))
    assert {c.run_id for c in claimed} == {mine.run_id, kept.run_id}
    run(redis_store.finish(mine.run_id, 1, DONE, 0.2))
    run(redis_store.purge())  # writes the finished run's expiry entry; not due yet
    member = f"{mine.run_id} {caller}"
    due = raw(client.zscore(redis_store.expiry, member))
    assert 0 < due - time.time() <= 0.2

    wait_until(lambda: time.time() > due, timeout=5, message="past the retention")
    run(redis_store.purge())

    keys = (redis_store.run_key(mine.run_id), redis_store.events_key(mine.run_id), redis_store.keys_of("").idem("key"))
    assert raw(client.exists(*keys)) == 0
    assert raw(client.zrange(redis_store.caller_index(caller), 0, -1)) == [kept.run_id.encode()]
    assert raw(client.zrange(redis_store.index, 0, -1)) == [kept.run_id.encode()]
    assert raw(client.zrange(redis_store.expiry, 0, -1)) == []  # the running one has no entry yet
    assert raw(client.zrange(redis_store.leases, 0, -1)) == [kept.run_id.encode()]


def test_purge_forgets_a_run_an_earlier_version_left_to_its_ttl(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    # Runs written before #18 carry TTLs: a hash gone by its TTL leaves index entries behind,
    # and the idempotency key, expired and taken again, names another run now.
    old, other = new_run(), new_run()
    run(redis_store.create(old, b"", idempotency=Idempotency("key", "fp")))
    idem = redis_store.keys_of("").idem("key")
    raw(client.delete(redis_store.run_key(old.run_id)))
    raw(client.set(idem, f"{other.run_id} fp"))
    raw(client.zadd(redis_store.expiry, {f"{old.run_id} ": 1.0}))

    run(redis_store.purge())

    assert raw(client.zcard(redis_store.expiry)) == raw(client.zcard(redis_store.index)) == 0
    assert raw(client.exists(redis_store.events_key(old.run_id))) == 0
    assert raw(client.xlen(redis_store.queue)) == 1  # the entry of a hash already gone: left to XTRIM
    assert raw(client.get(idem)) == f"{other.run_id} fp".encode()


def test_purge_deletes_a_run_never_finished_and_its_work_per_call_is_bounded(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    share = Share("caller:c", 5, "caller")
    stuck = dataclasses.replace(new_run(), caller="c", created_at=time.time() - UNFINISHED_TTL - 1)
    run(redis_store.create(stuck, b"", shares=[share]))
    most = PURGE_BATCH * PURGE_ROUNDS
    raw(client.zadd(redis_store.expiry, {f"gone-{n} caller-{n % 3}": 2.0 + n for n in range(most + 5)}))

    run(redis_store.purge())

    # The stuck run is due now, after the others: it and 5 of the gone are left for the next call.
    assert raw(client.zcard(redis_store.expiry)) == 6
    run(redis_store.purge())
    assert raw(client.zcard(redis_store.expiry)) == raw(client.zcard(redis_store.index)) == 0
    assert raw(client.exists(redis_store.run_key(stuck.run_id), redis_store.events_key(stuck.run_id))) == 0
    assert raw(client.xlen(redis_store.queue)) == 0  # its queue entry went with it
    assert run(redis_store.share_counts()) == {}  # and it no longer counts against its share


def test_the_sweep_of_old_runs_deletes_those_never_closed_and_leaves_those_kept_longer(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    old = time.time() - UNFINISHED_TTL - 10
    kept = dataclasses.replace(new_run(), created_at=old)
    hooked = with_webhook(dataclasses.replace(new_run(), created_at=old + 1))
    evicted = dataclasses.replace(new_run(), created_at=old + 2)
    for queued in (kept, hooked, evicted):
        run(redis_store.create(queued, b""))
    assert len(run(redis_store.claim("owner-a", 2, 0, LEASE))) == 2
    run(redis_store.finish(kept.run_id, 1, DONE, 30 * 24 * 3600.0))  # kept 30 days
    run(redis_store.finish(hooked.run_id, 1, DONE, 60.0))  # its delivery never ends
    raw(client.delete(redis_store.run_key(evicted.run_id)))  # gone without purge (maxmemory)

    run(redis_store.purge())

    assert run(redis_store.get(kept.run_id)) is not None
    assert raw(client.exists(redis_store.run_key(hooked.run_id), redis_store.events_key(evicted.run_id))) == 0
    assert raw(client.zrange(redis_store.index, 0, -1)) == [kept.run_id.encode()]
    assert raw(client.zcard(redis_store.deliveries)) == 0
    # The next sweep starts where this one stopped: the kept run is not looked at again.
    assert float(raw(client.hget(redis_store.counters, "swept"))) == pytest.approx(old + 2)


def test_a_redelivery_moves_the_expiry_with_the_ttl(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    hooked = dataclasses.replace(queued, request=dataclasses.replace(queued.request, webhook_url="http://h/x"))
    run(redis_store.create(hooked, b""))
    run(redis_store.claim("owner-a", 1, 0, LEASE))
    run(redis_store.finish(hooked.run_id, 1, DONE, 60.0))
    due = run(redis_store.due_deliveries(1, LEASE))
    delivered = Delivery(DeliveryState.DELIVERED, attempts=1, last_status=200)
    assert run(redis_store.record_delivery(hooked.run_id, due[0].token, delivered, 60.0)) is True
    member = f"{hooked.run_id} "
    assert 50 < raw(client.zscore(redis_store.expiry, member)) - time.time() <= 60

    # The final delivery deleted the URL: the redelivery names it again.
    assert run(redis_store.redeliver(hooked.run_id, "http://h/x")) is True

    assert UNFINISHED_TTL - 60 < raw(client.zscore(redis_store.expiry, member)) - time.time() <= UNFINISHED_TTL
    assert raw(client.ttl(redis_store.events_key(hooked.run_id))) == -1


def test_a_heartbeat_that_ran_out_while_others_beat_is_refused_for_good(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    queued = new_run()
    run(redis_store.create(queued, b""))
    assert not run(redis_store.keep_alive("gw-a", 0.2, 10.0, 0.0)).lost
    [claimed] = run(redis_store.claim("gw-a", 1, 0, LEASE))
    assert raw(client.zrange(redis_store.held, 0, -1)) == [f"gw-a {queued.run_id}".encode()]
    assert raw(client.zscore(redis_store.leases, queued.run_id)) is None  # no lease of its own

    # Another gateway goes on beating while gw-a's heartbeat runs out: its run is anyone's.
    def lapsed() -> bool:
        run(redis_store.keep_alive("gw-b", LEASE, 10.0, 0.0))
        return bool(run(redis_store.expired(10)))

    wait_until(lapsed, message="gw-a's heartbeat to run out")
    assert [r.run_id for r in run(redis_store.expired(10))] == [claimed.run_id]
    assert run(redis_store.keep_alive("gw-a", LEASE, 10.0, 0.0)).lost
    assert run(redis_store.keep_alive("gw-a", LEASE, 10.0, 0.0)).lost
    # Nor can it claim under the heartbeat it lost: the entries read are taken by the next claim.
    again = new_run()
    run(redis_store.create(again, b""))
    redis_store._beating.add("gw-a")  # as if its store had not heard "lost" yet (another process's)
    assert run(redis_store.claim("gw-a", 1, 0, LEASE)) == []
    assert [r.run_id for r in run(redis_store.claim("gw-a", 1, 0, LEASE))] == [again.run_id]
    # Recovered, the lapsed owner's entries go, and so does the owner once none is left.
    assert run(redis_store.requeue(claimed.run_id, 1))
    assert run(redis_store.expired(10)) == []
    assert raw(client.zscore(redis_store.gateways, "gw-a")) is None


def test_after_a_silence_of_every_gateway_a_heartbeat_that_ran_out_is_taken_again(
    redis_store: RedisRunStore, run: Runner
) -> None:
    assert not run(redis_store.keep_alive("gw-a", 0.1, 0.3, 2.0)).lost
    # Nobody reached the store for longer than the quiet period (0.3 s): it was gone for all.
    silence = time.time()
    wait_until(lambda: time.time() - silence > 0.4, timeout=5)
    liveness = run(redis_store.keep_alive("gw-a", 0.1, 0.3, 2.0))
    assert not liveness.lost
    assert liveness.resume > time.time()


def test_a_finished_run_leaves_its_owners_index_with_the_next_heartbeat(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    # One ZREM per heartbeat for every run finished in the interval, not one per run (#18).
    runs = [new_run() for _ in range(3)]
    for queued in runs:
        run(redis_store.create(queued, b""))
    assert not run(redis_store.keep_alive("gw-a", LEASE, 10.0, 0.0)).lost
    assert len(run(redis_store.claim("gw-a", 3, 0, LEASE))) == 3
    # Renewed one by one as well: a lease of its own, and its member in {P}:held still.
    assert run(redis_store.renew(runs[1].run_id, 1, LEASE)) is Lease.HELD
    for queued in runs[:2]:
        assert run(redis_store.finish(queued.run_id, 1, DONE, 60.0)) is not None
    assert raw(client.zcard(redis_store.held)) == 3  # until the heartbeat

    assert not run(redis_store.keep_alive("gw-a", LEASE, 10.0, 0.0)).lost

    assert raw(client.zrange(redis_store.held, 0, -1)) == [f"gw-a {runs[2].run_id}".encode()]
    assert run(redis_store.finish(runs[0].run_id, 1, DONE, 60.0)) is None  # fenced as ever


def test_a_finished_run_whose_expiry_entry_was_never_written_is_found_by_the_sweep(
    redis_store: RedisRunStore, client: aioredis.Redis, raw: Command, run: Runner
) -> None:
    # Its gateway was killed between the finish and the heartbeat that writes the entry.
    lost = dataclasses.replace(new_run(), created_at=time.time() - UNFINISHED_TTL - 10)
    run(redis_store.create(lost, b""))
    run(redis_store.claim("owner-a", 1, 0, LEASE))
    run(redis_store.finish(lost.run_id, 1, DONE, 0.2))
    redis_store._finished_expiry[0].clear()  # as if killed there
    expires_at = float(raw(client.hget(redis_store.run_key(lost.run_id), "expires_at")))
    wait_until(lambda: time.time() > expires_at, timeout=5, message="past the retention")
    assert run(redis_store.get(lost.run_id)) is None  # gone to readers at once

    run(redis_store.purge())  # the sweep writes its entry
    run(redis_store.purge())  # and it is due

    assert raw(client.exists(redis_store.run_key(lost.run_id))) == 0
    assert raw(client.zcard(redis_store.index)) == raw(client.zcard(redis_store.expiry)) == 0


def test_watching_run_after_run_keeps_names_only_for_the_runs_followed_now(
    redis_store: RedisRunStore, run: Runner
) -> None:
    # The log keys of followed runs are kept between reads; a replica following runs one after
    # another for days must not keep a name for every run it ever followed.
    runs = [new_run() for _ in range(300)]
    for queued in runs:
        run(redis_store.create(queued, b""))
    for queued in runs:
        found = run(redis_store.watch({queued.run_id: None}, 0))
        assert [event.data["event"] for event in found[queued.run_id]] == ["queued"]
    assert len(redis_store._watched) <= 2 + 64
    assert len(redis_store._watched_runs) == len(redis_store._watched)
