"""A wave of script calls goes to Redis in a few pipelines; the heartbeat never waits behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from asyncgate.store.batching import MAX_SENDS, ScriptBatch
from asyncgate.store.connect import WaitingConnectionPool
from asyncgate.store.redis import LIFELINE_NAME, RedisRunStore
from tests.store.conftest import Runner, new_run
from tests.store.test_redis import DONE, LEASE
from tests.support.redis_server import RedisServer

#: Increments its key and answers the new count; refuses an argument of "boom" with an error.
COUNT = "if ARGV[1] == 'boom' then return redis.error_reply('boom') end return redis.call('INCR', KEYS[1])"


@pytest.fixture
def redis_store(redis_server: RedisServer, run: Runner) -> Iterator[RedisRunStore]:
    store = RedisRunStore(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}")
    run(store.open())
    yield store
    run(store.close())


def _opened(store: RedisRunStore) -> int:
    """Connections the store's pool for ordinary commands has opened so far."""
    assert isinstance(store._redis, aioredis.Redis)
    pool = store._redis.connection_pool
    assert isinstance(pool, WaitingConnectionPool)
    return len(pool._available_connections) + len(pool._in_use_connections)


def test_a_wave_of_finishes_takes_a_few_connections_and_every_run_finishes(
    redis_store: RedisRunStore, run: Runner
) -> None:
    runs = [new_run() for _ in range(2000)]

    async def held() -> list[str]:
        for queued in runs:
            await redis_store.create(queued, b"")
        taken: list[str] = []
        while len(taken) < len(runs):
            taken += [claimed.run_id for claimed in await redis_store.claim("gw", 100, 0, LEASE)]
        return taken

    taken = run(held())
    before = _opened(redis_store)

    async def wave() -> list[bool]:
        finished = await asyncio.gather(*(redis_store.finish(run_id, 1, DONE, 60) for run_id in taken))
        return [end is not None for end in finished]

    assert run(wave()) == [True] * len(runs)
    # One pooled connection each would have opened the whole pool (256) for this wave.
    assert _opened(redis_store) <= before + MAX_SENDS
    assert {run(redis_store.get(r.run_id)).state for r in runs} == {DONE.state}  # type: ignore[union-attr]


def test_many_runs_streaming_at_once_write_their_output_in_a_few_pipelines(
    redis_store: RedisRunStore, run: Runner
) -> None:
    runs = [new_run() for _ in range(500)]

    async def held() -> None:
        for queued in runs:
            await redis_store.create(queued, b"")
        taken = 0
        while taken < len(runs):
            taken += len(await redis_store.claim("gw", 100, 0, LEASE))

    run(held())
    before = _opened(redis_store)

    async def tokens(run_id: str) -> None:
        for seq in range(3):
            event = {"event": "output", "attempt": 1, "seq": seq, "at": 1.0, "data": f"token-{seq}"}
            assert await redis_store.append_output(run_id, 1, [event], []) is not None

    async def streaming() -> None:
        await asyncio.gather(*(tokens(queued.run_id) for queued in runs))

    run(streaming())
    # Each run's output took a pooled connection of its own before: the pool's 256 for this wave.
    assert _opened(redis_store) <= before + MAX_SENDS
    for queued in runs:
        logged = [event.data for event in run(redis_store.events(queued.run_id, None, 0))]
        assert [event["data"] for event in logged if event["event"] == "output"] == ["token-0", "token-1", "token-2"]


def test_the_heartbeat_has_a_connection_of_its_own(
    redis_store: RedisRunStore, redis_server: RedisServer, run: Runner
) -> None:
    async def heartbeat_connection() -> list[dict[str, str]]:
        await redis_store.keep_alive("gw", LEASE, 10.0, 0.0)
        plain = aioredis.Redis.from_url(redis_server.url, protocol=2, decode_responses=True)
        try:
            clients: list[dict[str, str]] = await plain.client_list()
        finally:
            await plain.aclose()
        return [client for client in clients if client["name"] == LIFELINE_NAME]

    [lifeline] = run(heartbeat_connection())
    assert lifeline["cmd"] == "evalsha"


@pytest.fixture
def client(redis_server: RedisServer, run: Runner) -> Iterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    yield client
    run(client.aclose())


def test_each_call_gets_its_own_reply_or_error_and_a_flushed_script_is_loaded_again(
    client: aioredis.Redis, run: Runner
) -> None:
    key = f"test-{uuid.uuid4().hex}"
    batch = ScriptBatch(client, client.register_script(COUNT), max_batch=7, max_sends=2)

    async def calls(args: list[str]) -> list[object]:
        return list(await asyncio.gather(*(batch([key], [arg]) for arg in args), return_exceptions=True))

    async def flushed_then_called() -> list[object]:
        await client.script_flush()
        return await calls(["x"] * 3)

    replies = run(calls(["x", "boom", "x", *["x"] * 40]))
    assert isinstance(replies[1], redis_errors.ResponseError) and "boom" in str(replies[1])
    assert sorted(r for r in replies if isinstance(r, int)) == list(range(1, 43))
    assert sorted(run(flushed_then_called())) == [43, 44, 45]  # type: ignore[type-var]
    run(batch.close())


def test_a_call_made_as_the_last_sender_stops_is_sent(client: aioredis.Redis, run: Runner) -> None:
    # The caller answered last wakes before its sender's done callback runs: its next call must
    # not take the stopping sender for a busy one, and wait for an answer that never comes.
    key = f"test-{uuid.uuid4().hex}"
    batch = ScriptBatch(client, client.register_script(COUNT), max_batch=8, max_sends=1)

    async def one_after_another() -> list[object]:
        async with asyncio.timeout(5):  # not wait_for: its own task's extra step would hide the race
            answers = [await batch([key], ["x"]) for _ in range(20)]
        await batch.close()
        return answers

    assert run(one_after_another()) == list(range(1, 21))


def test_a_caller_cancelled_before_its_batch_is_sent_is_not_sent(client: aioredis.Redis, run: Runner) -> None:
    key = f"test-{uuid.uuid4().hex}"
    batch = ScriptBatch(client, client.register_script(COUNT), max_batch=1, max_sends=1)

    async def second_cancelled() -> tuple[object, object]:
        first = asyncio.ensure_future(batch([key], ["x"]))
        second = asyncio.ensure_future(batch([key], ["x"]))
        await asyncio.sleep(0)  # one step: both calls queued, the one sender not yet run
        second.cancel()
        answered = await first
        await asyncio.gather(second, return_exceptions=True)
        await batch.close()
        return answered, await client.get(key)

    assert run(second_cancelled()) == (1, b"1")


def test_calls_waiting_when_the_batch_closes_fail_as_a_lost_connection(run: Runner) -> None:
    async def closed_midway() -> list[object]:
        # A server that accepts and never answers keeps the first call in flight.
        accepted: list[asyncio.StreamWriter] = []
        sent = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            if await reader.read(1):
                sent.set()

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        quiet = aioredis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=30)
        batch = ScriptBatch(quiet, quiet.register_script(COUNT), max_batch=1, max_sends=1)
        calls = [asyncio.ensure_future(batch(["k"], ["x"])) for _ in range(3)]
        await asyncio.wait_for(sent.wait(), 5)  # the sender is waiting on its first reply
        await batch.close()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await quiet.aclose()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
        return outcomes

    outcomes = run(closed_midway())
    assert all(isinstance(outcome, redis_errors.ConnectionError) for outcome in outcomes), outcomes
