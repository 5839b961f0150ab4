"""The Redis store's scripts: called by SHA1, and loaded again when a server has forgotten them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from asyncgate.runs import Outcome, RunResult, RunState
from asyncgate.store.base import CancelResult, Idempotency, Lease
from asyncgate.store.redis import CLAIM_BATCH, RedisRunStore
from tests.store.conftest import Runner, new_run
from tests.support.redis_server import RedisServer

DONE = Outcome(RunState.SUCCEEDED, result=RunResult(status=200, headers=(("content-type", "text/plain"),), body=b"ok"))


@pytest.fixture
def redis_store(redis_server: RedisServer, run: Runner) -> Iterator[RedisRunStore]:
    store = RedisRunStore(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}")
    run(store.open())
    yield store
    run(store.close())


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def calls(admin: redis.Redis, command: str) -> int:
    stats = admin.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_submissions_send_the_script_by_its_sha_not_its_text(
    redis_store: RedisRunStore, admin: redis.Redis, run: Runner
) -> None:
    run(redis_store.create(new_run(), b"first"))  # the first call may load the script
    evals, evalshas = calls(admin, "eval"), calls(admin, "evalsha")
    for _ in range(5):
        run(redis_store.create(new_run(), b"body"))
    assert calls(admin, "eval") == evals
    assert calls(admin, "evalsha") == evalshas + 5


def test_a_redis_that_forgot_its_scripts_gets_them_again(
    redis_store: RedisRunStore, admin: redis.Redis, run: Runner
) -> None:
    # A restart or a failover to a replica empties the script cache; nothing may fail for it.
    first = new_run()
    run(redis_store.create(first, b"before"))
    admin.script_flush()
    second = new_run()
    assert run(redis_store.create(second, b"after", idempotency=Idempotency("k", "fp"))).run_id == second.run_id
    assert run(redis_store.create(new_run(), b"again", idempotency=Idempotency("k", "fp"))).replayed
    claimed = {r.run_id: r for r in run(redis_store.claim("owner", 10, 0, 30.0))}
    assert set(claimed) == {first.run_id, second.run_id}

    admin.script_flush()
    assert run(redis_store.renew(first.run_id, claimed[first.run_id].attempt, 30.0)) is Lease.HELD
    admin.script_flush()
    assert run(redis_store.finish(first.run_id, claimed[first.run_id].attempt, DONE, 60.0))
    admin.script_flush()
    assert run(redis_store.cancel(second.run_id, 60.0)) is CancelResult.REQUESTED
    admin.script_flush()
    assert run(redis_store.requeue(second.run_id, claimed[second.run_id].attempt))

    stored = run(redis_store.get(first.run_id))
    assert stored is not None and stored.state is RunState.SUCCEEDED
    assert run(redis_store.result(first.run_id)) == DONE.result


def test_one_runs_life_costs_redis_at_most_15_commands(
    redis_store: RedisRunStore, admin: redis.Redis, run: Runner
) -> None:
    # Issue #18: from create to the final state, counted by Redis itself (the commands inside
    # scripts included), for runs claimed together as a burst of submissions is (CLAIM_BATCH),
    # with the heartbeat that drops their {P}:held entries. A caller index adds one per run.
    def life(count: int) -> None:
        runs = [new_run() for _ in range(count)]
        for queued in runs:
            run(redis_store.create(queued, b"x" * 1024, max_queued=10_000))
        claimed = run(redis_store.claim("gw-a", count, 0, 30.0))
        assert len(claimed) == count
        for taken in claimed:
            assert run(redis_store.finish(taken.run_id, taken.attempt, DONE, 60.0))
        assert not run(redis_store.keep_alive("gw-a", 30.0, 10.0, 0.0)).lost

    assert not run(redis_store.keep_alive("gw-a", 30.0, 10.0, 0.0)).lost
    life(2)  # loads the scripts and opens the connections: not a run's cost
    before = admin.info("commandstats")
    total = int(admin.info("stats")["total_commands_processed"])

    life(CLAIM_BATCH)

    executed = int(admin.info("stats")["total_commands_processed"]) - total - 1  # the first INFO
    after = admin.info("commandstats")
    spent = {name: after[name]["calls"] - before.get(name, {}).get("calls", 0) for name in after}
    spent = {name: calls for name, calls in spent.items() if calls and name != "cmdstat_info"}
    assert executed / CLAIM_BATCH <= 15, spent
    assert executed == sum(spent.values())
