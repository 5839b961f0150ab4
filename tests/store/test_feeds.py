"""feeds.py over both stores: one read of a run's log per replica, shared by its listeners."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
import pytest

from asyncgate import feeds
from asyncgate.feeds import Batch, Feeds, Rendered
from asyncgate.store.base import Event, RunStore
from tests.store.conftest import RETENTION, Queue, Runner, claim_one, ok


class CountingStore:
    """A store whose blocking reads of event logs are counted (the shared reads of feeds)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.blocking_reads = 0
        self.reads = 0
        self.watched: list[set[str]] = []

    async def events(self, run_id: str, after: str | None, wait: float) -> list[Event]:
        if wait > 0:
            self.blocking_reads += 1
        else:
            self.reads += 1
        return await self.store.events(run_id, after, wait)

    async def watch(self, positions: Mapping[str, str | None], wait: float) -> dict[str, list[Event]]:
        self.blocking_reads += 1
        self.watched.append(set(positions))
        return await self.store.watch(positions, wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def output(seq: int) -> dict[str, object]:
    return {"event": "output", "attempt": 1, "seq": seq, "at": 1.0, "data": f"token-{seq}"}


async def take(batches: AsyncGenerator[Batch, None], count: int) -> list[Rendered]:
    taken: list[Rendered] = []
    while len(taken) < count:
        taken += (await anext(batches)).events
    return taken


async def write(store: RunStore, run_id: str, listener: AsyncGenerator[Batch, None], outputs: range) -> None:
    """Output events, ten at a time, each ten taken by ``listener`` (so read by its feed) before the next."""
    for start in range(outputs.start, outputs.stop, 10):
        chunk = range(start, min(outputs.stop, start + 10))
        await store.append_output(run_id, 1, [output(seq) for seq in chunk], [])
        await take(listener, len(chunk))


def seqs(items: list[Rendered]) -> list[object]:
    return [event.data.get("seq", event.data["event"]) for event, _ in items]


def test_listeners_of_a_run_share_one_read_and_one_encoding(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    counting = CountingStore(store)
    shared = Feeds(counting)

    async def scenario() -> tuple[list[Rendered], list[Rendered]]:
        first, second = shared.follow(queued.run_id, None), shared.follow(queued.run_id, None)
        async with contextlib.aclosing(first), contextlib.aclosing(second):
            assert seqs(await take(first, 2)) == ["queued", "running"]
            assert seqs(await take(second, 2)) == ["queued", "running"]
            waiting = asyncio.gather(take(first, 3), take(second, 3))
            for seq in range(3):
                await store.append_output(queued.run_id, 1, [output(seq)], [])
            return await asyncio.wait_for(waiting, 10)

    got_first, got_second = run(scenario())
    assert seqs(got_first) == seqs(got_second) == [0, 1, 2]
    assert all(a[1] is b[1] for a, b in zip(got_first, got_second, strict=True))  # encoded once
    data = orjson.loads(got_first[0][1].split(b"data: ")[1])
    assert data["run_id"] == queued.run_id and data["data"] == "token-0"
    # One feed read the log for both: a handful of blocking reads, not one per listener and event.
    assert counting.blocking_reads <= 5
    run(asyncio.sleep(0))
    assert shared._feeds == {}  # the last listener gone, the feed is gone


def test_a_listener_behind_the_feed_catches_up_from_the_store(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    shared = Feeds(store)
    total = feeds.FEED_BUFFER + 20

    async def scenario() -> list[Rendered]:
        ahead = shared.follow(queued.run_id, None)
        async with contextlib.aclosing(ahead):
            await take(ahead, 2)
            await write(store, queued.run_id, ahead, range(total))  # the feed's buffer drops the oldest
            late = shared.follow(queued.run_id, None)
            async with contextlib.aclosing(late):
                return await take(late, total + 2)

    assert seqs(run(scenario())) == ["queued", "running", *range(total)]


def test_a_listener_resuming_mid_log_gets_exactly_what_follows(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    run(store.append_output(queued.run_id, 1, [output(seq) for seq in range(5)], []))
    shared = Feeds(store)
    events = run(store.events(queued.run_id, None, 0))

    async def scenario() -> tuple[list[Rendered], list[Rendered]]:
        late = shared.follow(queued.run_id, None)
        async with contextlib.aclosing(late):
            everything = await take(late, 7)
            resumed = shared.follow(queued.run_id, events[3].id)  # after output 1
            async with contextlib.aclosing(resumed):
                return everything, await take(resumed, 3)

    everything, resumed = run(scenario())
    assert seqs(everything) == ["queued", "running", 0, 1, 2, 3, 4]
    assert seqs(resumed) == [2, 3, 4]


def test_close_stops_every_feed(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    shared = Feeds(store)

    async def scenario() -> None:
        listener = shared.follow(queued.run_id, None)
        await take(listener, 1)
        await shared.close()
        assert shared._tasks == set()
        await listener.aclose()

    run(scenario())


def test_one_read_serves_every_followed_run(store: RunStore, run: Runner, queue: Queue) -> None:
    runs = [queue() for _ in range(3)]
    for _ in runs:
        claim_one(store, run)
    counting = CountingStore(store)
    shared = Feeds(counting)

    async def scenario() -> list[list[Rendered]]:
        listeners = [shared.follow(queued.run_id, None) for queued in runs]
        async with contextlib.AsyncExitStack() as stack:
            for listener in listeners:
                await stack.enter_async_context(contextlib.aclosing(listener))
                await take(listener, 2)  # queued, running; the later runs joined a read in progress
            reads = counting.blocking_reads
            waiting = asyncio.gather(*(take(listener, 1) for listener in listeners))
            for queued in runs:
                await store.append_output(queued.run_id, 1, [output(0)], [])
            got = await asyncio.wait_for(waiting, 10)
            # Three runs' new events came in a handful of reads, each of all three logs.
            assert counting.blocking_reads - reads <= 4
            assert counting.watched[-1] == {queued.run_id for queued in runs}
            return got

    got = run(scenario())
    assert [seqs(batch) for batch in got] == [[0], [0], [0]]
    assert [orjson.loads(batch[0][1].split(b"data: ")[1])["run_id"] for batch in got] == [q.run_id for q in runs]


def test_listeners_ending_together_read_the_rest_of_the_log_once(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    run(store.finish(queued.run_id, 1, ok(), RETENTION))
    final = run(store.events(queued.run_id, None, 0))[-1]
    assert final.is_final
    counting = CountingStore(store)
    shared = Feeds(counting)

    async def scenario() -> list[Batch]:
        return await asyncio.gather(*(shared.after_final(queued.run_id, final.id) for _ in range(50)))

    tails = run(scenario())
    assert counting.reads == 1
    assert all(tail is tails[0] for tail in tails)


def test_listeners_keeping_up_share_each_batch_and_its_one_write(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    shared = Feeds(store)

    async def scenario() -> tuple[Batch, Batch]:
        first, second = shared.follow(queued.run_id, None), shared.follow(queued.run_id, None)
        async with contextlib.aclosing(first), contextlib.aclosing(second):
            await take(first, 2), await take(second, 2)
            # Three events written at once reach the feed in one read: one batch, one chunk of bytes.
            waiting = asyncio.gather(anext(first), anext(second))
            await store.append_output(queued.run_id, 1, [output(seq) for seq in range(3)], [])
            return await asyncio.wait_for(waiting, 10)

    got_first, got_second = run(scenario())
    assert got_first is got_second
    assert seqs(got_first.events) == [0, 1, 2] and got_first.final is None
    assert got_first.data == b"".join(encoded for _, encoded in got_first.events)


def test_a_listener_caught_up_from_the_store_reads_the_feed_again(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    counting = CountingStore(store)
    shared = Feeds(counting)
    total = feeds.FEED_BUFFER + 20

    async def scenario() -> list[Rendered]:
        ahead = shared.follow(queued.run_id, None)
        async with contextlib.aclosing(ahead):
            await take(ahead, 2)
            late = shared.follow(queued.run_id, None)
            async with contextlib.aclosing(late):
                await take(late, 2)
                await write(store, queued.run_id, ahead, range(total))  # late has not looked meanwhile
                reads = counting.reads
                caught_up = await take(late, total)
                assert counting.reads > reads  # the buffer had moved past it
                reads = counting.reads
                for seq in range(total, total + 5):
                    await store.append_output(queued.run_id, 1, [output(seq)], [])
                    await take(ahead, 1)
                    caught_up += await take(late, 1)
                assert counting.reads == reads  # served from the feed's buffer again, not the store
                return caught_up

    assert seqs(run(scenario())) == list(range(total + 5))


def test_a_quiet_feed_gives_its_listeners_a_keep_alive(
    store: RunStore, run: Runner, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feeds, "READ_WAIT", 0.2)
    queued = queue()
    shared = Feeds(store)

    async def scenario() -> list[Batch]:
        listeners = [shared.follow(queued.run_id, None) for _ in range(2)]
        async with contextlib.aclosing(listeners[0]), contextlib.aclosing(listeners[1]):
            for listener in listeners:
                await take(listener, 1)  # queued
            return await asyncio.wait_for(asyncio.gather(*(anext(listener) for listener in listeners)), 10)

    assert run(scenario()) == [feeds.KEEP_ALIVE, feeds.KEEP_ALIVE]


def test_a_first_read_longer_than_the_buffer_is_kept_whole(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    total = feeds.FEED_BUFFER + 20
    run(store.append_output(queued.run_id, 1, [output(seq) for seq in range(total)], []))
    counting = CountingStore(store)
    shared = Feeds(counting)

    async def scenario() -> list[Rendered]:
        listener = shared.follow(queued.run_id, None)
        async with contextlib.aclosing(listener):
            return await take(listener, total + 2)

    assert seqs(run(scenario())) == ["queued", "running", *range(total)]
    assert counting.reads == 0  # all from the feed's one read, none of the listener's own
