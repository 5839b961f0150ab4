"""A deployment's runs spread over several hash tags (store.slots), on one Redis server: what
differs from one slot. The contract suite (tests/store/contract/) runs on such a store too."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from starlette.datastructures import Secret

from asyncgate.errors import ConfigError, QueueFull, StoreUnavailable
from asyncgate.runs import new_run_id
from asyncgate.store.base import Idempotency, Identity, Share
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import Sealer
from asyncgate.store.slots import slot_of, slot_tags
from tests.store.conftest import LEASE, Runner, new_run, queue_at
from tests.support.redis_server import RedisServer
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.wait import wait_until

SLOTS = 3


def open_spread(
    server: RedisServer, prefix: str, slots: int = SLOTS, identity: Identity | None = None
) -> RedisRunStore:
    sealer = Sealer([Secret(ENCRYPTION_KEY)])
    return RedisRunStore(server.url, key_prefix=prefix, sealer=sealer, slots=slots, identity=identity)


@pytest.fixture
def spread(redis_server: RedisServer, run: Runner) -> Iterator[RedisRunStore]:
    store = open_spread(redis_server, f"test-{uuid.uuid4().hex}")
    run(store.open())
    yield store
    run(store.close())


def in_slot(slot: int) -> str:
    """A run id of the given slot of SLOTS."""
    while slot_of(run_id := new_run_id(), SLOTS) != slot:
        pass
    return run_id


def queued_in(store: RedisRunStore, run: Runner, slot: int, priority: int = 0) -> str:
    plain = new_run("POST")
    request = dataclasses.replace(plain.request, priority=priority)
    queued = dataclasses.replace(plain, run_id=in_slot(slot), request=request)
    run(store.create(queued, b"body"))
    # Queue entry ids are milliseconds: the next run is queued in a later one, so "older" is plain.
    wait_until(lambda: time.time() * 1000 >= queued.created_at * 1000 + 2, timeout=1)
    return queued.run_id


def test_one_slot_is_the_deployments_own_tag_and_more_spread_over_the_cluster_slots() -> None:
    assert slot_tags("asyncgate:ml", 1) == ("{asyncgate:ml}",)
    for count in (2, 3, 5, 16):
        tags = slot_tags("asyncgate:ml", count)
        assert len(set(tags)) == count
        for k, tag in enumerate(tags):
            assert tag.startswith("{asyncgate:ml:") and tag.endswith("}")
            low, high = k * REDIS_CLUSTER_HASH_SLOTS // count, (k + 1) * REDIS_CLUSTER_HASH_SLOTS // count
            assert low <= key_slot(tag.encode()) < high


def test_every_key_of_a_run_carries_its_slots_tag(
    spread: RedisRunStore, run: Runner, redis_server: RedisServer
) -> None:
    for slot in range(SLOTS):
        run_id = queued_in(spread, run, slot)
        tag = spread.slot_keys[slot].tag
        assert spread.keys_of(run_id).tag == tag
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            keys = set(client.keys(f"{tag}:*{run_id}*"))
            assert keys == {f"{tag}:run:{run_id}", f"{tag}:events:{run_id}"}
            assert client.zscore(f"{tag}:index", run_id) is not None
        finally:
            client.close()
        assert run(spread.get(run_id)) is not None


def test_claims_take_the_oldest_run_across_slots_and_every_slot_is_read(spread: RedisRunStore, run: Runner) -> None:
    order = [queued_in(spread, run, slot) for slot in (2, 0, 1, 1, 2, 0)]

    claimed = [c.run_id for _ in order for c in run(spread.claim("owner-a", 1, 0, LEASE))]

    assert claimed == order
    assert run(spread.claim("owner-a", 5, 0, LEASE)) == []


def test_a_higher_priority_in_another_slot_is_claimed_first(spread: RedisRunStore, run: Runner) -> None:
    queued_in(spread, run, 0)
    high = queued_in(spread, run, 2, priority=5)

    assert [c.run_id for c in run(spread.claim("owner-a", 1, 0, LEASE))] == [high]


def test_a_claim_finds_a_run_queued_in_any_slot(spread: RedisRunStore, run: Runner) -> None:
    async def scenario() -> tuple[list[str], float]:
        started = time.monotonic()
        waiting = spread.claim("owner-a", 1, 5.0, LEASE)
        return [c.run_id for c in await waiting], time.monotonic() - started

    assert run(spread.claim("owner-a", 1, 0.05, LEASE)) == []  # nothing: a short wait, then nothing
    for slot in range(SLOTS):
        run_id = queued_in(spread, run, slot)
        claimed, elapsed = run(scenario())
        assert claimed == [run_id] and elapsed < 1.0


def test_idempotent_and_shared_runs_are_placed_where_their_check_is(spread: RedisRunStore, run: Runner) -> None:
    key = Idempotency("a-key-hash", "f")
    created = run(spread.create(new_run(), b"", idempotency=key))
    assert slot_of(created.run_id, SLOTS) == slot_of(key.key, SLOTS)
    assert run(spread.create(new_run(), b"", idempotency=key)).run_id == created.run_id

    share = Share("caller-a", 2)
    first, second = (queue_at(spread, run, shares=(share,)) for _ in range(2))
    assert {slot_of(first.run_id, SLOTS), slot_of(second.run_id, SLOTS)} == {slot_of("caller-a", SLOTS)}
    assert run(spread.get(first.run_id)) is not None
    assert run(spread.share_counts()) == {"caller-a": 2}


def test_each_slot_takes_its_part_of_max_queued(spread: RedisRunStore, run: Runner) -> None:
    def create(slot: int) -> None:
        run(spread.create(dataclasses.replace(new_run(), run_id=in_slot(slot)), b"", max_queued=SLOTS))

    create(0)
    with pytest.raises(QueueFull):
        create(0)
    create(1)
    create(2)
    assert run(spread.queued_count()) == SLOTS


def test_a_gateway_with_another_number_of_slots_is_refused(redis_server: RedisServer, run: Runner) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    identity = Identity("ml", "http://model:8000", False)
    first = open_spread(redis_server, prefix, slots=1, identity=identity)
    run(first.open())
    run(first.close())
    other = open_spread(redis_server, prefix, slots=SLOTS, identity=identity)
    with pytest.raises(ConfigError, match=r"store.slots.*is 3.*spread over 1 slots"):
        run(other.open())
    run(other.close())


@pytest.mark.parametrize("slots", [1, SLOTS])
def test_runs_a_claim_took_whose_reply_was_lost_come_with_the_next_claim(
    redis_server: RedisServer, run: Runner, slots: int
) -> None:
    store = open_spread(redis_server, f"test-{uuid.uuid4().hex}", slots=slots)
    run(store.open())
    queued = queue_at(store, run)
    script = store._scripts.claim

    async def lost_reply(*args: Any, **kwargs: Any) -> Any:
        await script(*args, **kwargs)  # it ran: the run is the owner's
        raise redis.ConnectionError("Connection closed by server.")

    object.__setattr__(store._scripts, "claim", lost_reply)
    with pytest.raises(StoreUnavailable):
        run(store.claim("owner-a", 1, 0, LEASE))
    object.__setattr__(store._scripts, "claim", script)

    taken = run(store.claim("owner-a", 1, 0, LEASE))
    assert [(r.run_id, r.state.value, r.attempt) for r in taken] == [(queued.run_id, "running", 1)]
    assert run(store.request_body(queued.run_id)) == b"body"
    assert run(store.claim("owner-a", 1, 0, LEASE)) == []
    run(store.close())


def fail_reads_of(store: RedisRunStore, slot: int, error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue reads of one slot fail with ``error``, as a blocking read on a Cluster master
    just killed does ("Connection closed by server"); the other slots answer."""
    read = store._read_streams
    queue = store.slot_keys[slot].queue

    async def failing(client: Any, streams: Any, **options: Any) -> Any:
        if queue in streams:
            raise error
        return await read(client, streams, **options)

    monkeypatch.setattr(store, "_read_streams", failing)


def test_a_claim_cut_short_by_an_unreachable_slot_hands_over_the_runs_it_took(
    spread: RedisRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = [queued_in(spread, run, slot) for slot in (0, 1)]
    cut = queued_in(spread, run, 2)
    fail_reads_of(spread, 2, redis.ConnectionError("Connection closed by server."), monkeypatch)

    # Slots 0 and 1 were claimed before the read of slot 2 failed: running under owner-a, so
    # they must reach its executor (they were dropped with the error, held by nobody for good).
    claimed = run(spread.claim("owner-a", 3, 0, LEASE))
    assert [(r.run_id, r.state.value, r.attempt) for r in claimed] == [(run_id, "running", 1) for run_id in taken]
    assert all(run(spread.request_body(run_id)) == b"body" for run_id in taken)

    monkeypatch.undo()
    assert [r.run_id for r in run(spread.claim("owner-a", 3, 0, LEASE))] == [cut]
    assert run(spread.claim("owner-a", 3, 0, LEASE)) == []


def test_runs_taken_by_a_claim_that_failed_on_a_bug_come_with_the_next_claim(
    spread: RedisRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = [queued_in(spread, run, slot) for slot in (0, 1)]
    cut = queued_in(spread, run, 2)
    fail_reads_of(spread, 2, RuntimeError("a bug"), monkeypatch)

    with pytest.raises(RuntimeError, match="^a bug$"):  # surfaces as it is: not "redis is unavailable"
        run(spread.claim("owner-a", 3, 0, LEASE))

    monkeypatch.undo()
    assert [r.run_id for r in run(spread.claim("owner-a", 3, 0, LEASE))] == taken
    assert [r.run_id for r in run(spread.claim("owner-a", 3, 0, LEASE))] == [cut]


def test_runs_taken_under_a_name_the_gateway_gave_up_are_left_to_recovery(
    spread: RedisRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    taken = queued_in(spread, run, 0)
    other = queued_in(spread, run, 2)
    fail_reads_of(spread, 2, RuntimeError("a bug"), monkeypatch)
    with pytest.raises(RuntimeError):
        run(spread.claim("owner-a", 3, 0, LEASE))
    monkeypatch.undo()

    # owner-a's heartbeat was lost meanwhile (the executor took a new name): its run is not
    # handed to owner-b, whose claim goes on to the queue; recovery takes it once owner-a lapses.
    assert [r.run_id for r in run(spread.claim("owner-b", 3, 0, LEASE))] == [other]
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.hmget(spread.run_key(taken), ["state", "owner"]) == [b"running", b"owner-a"]
    finally:
        client.close()
