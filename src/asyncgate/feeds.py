"""Event feeds: one reader of the followed runs' event logs per replica, shared by all listeners.

Without it, each SSE listener would hold its own blocking read of the store (a Redis connection
each) and encode every event itself: a hundred listeners on a token stream cost a hundred reads
and encodings per token. A feed per followed run encodes each event once; listeners take the
encoded events from its buffer of recent ones, so what a replica holds grows with its runs being
followed, not with their listeners. One task reads for every feed, with one blocking read of all
their logs (``store.watch``, one XREAD on Redis), so a thousand runs streaming cost one
connection and a round trip per batch of events, not one per run. A listener behind the buffer
(resuming from an old id, or too slow) reads the store itself until it catches up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncGenerator, Callable

import orjson

from asyncgate.errors import StoreError
from asyncgate.runs import rfc3339
from asyncgate.store.base import Event, Records

logger = logging.getLogger("asyncgate.feeds")

#: Recent events a feed keeps for its listeners; a listener further behind reads the store.
#: Listeners keeping up need the last one or two; 64 output events of a token every 50 ms
#: are 3 s of lag, and cost a replica at most ~64 KiB per run followed.
FEED_BUFFER = 64
#: A listener's stream gets a keep-alive comment this often while idle, so proxies keep it open.
READ_WAIT = 15.0
#: Longest the feeds' read of the store blocks. Short, because redis-py lets a cancelled command
#: finish first: the reader stops (its last feed gone, the gateway stopping) within this long.
FEED_BLOCK = 1.0
#: After a read that found events, the reader waits this long before the next, when it follows
#: several runs: one read of all their logs returns as soon as any has news, so with many runs
#: streaming, reading again at once would cost a read of every log per event, not per batch.
FEED_GATHER = 0.005
#: Pause before a feed reads again after the store failed.
STORE_RETRY_DELAY = 1.0

#: An event with its encoding as sent to listeners.
Rendered = tuple[Event, bytes]
Render = Callable[[str, Event], bytes]


def render_event(run_id: str, event: Event) -> bytes:
    """An event as Server-Sent Events bytes: its id, its name, and its JSON with the run id."""
    data = dict(event.data)
    data["at"] = rfc3339(data.get("at"))
    data["run_id"] = run_id
    body = orjson.dumps(data).decode()
    return f"id: {event.id}\nevent: {event.data.get('event', 'message')}\ndata: {body}\n\n".encode()


def event_order(event_id: str) -> tuple[int, ...]:
    """Event ids in their stores' order: a Redis stream id ``ms-seq`` or an SQLite row number."""
    return tuple(int(part) for part in event_id.split("-"))


def _after(event_id: str, position: str | None) -> bool:
    return position is None or event_order(event_id) > event_order(position)


class _Feed:
    def __init__(self, start: str | None) -> None:
        #: The buffer holds every event after this id (None: from the first).
        self.start = start
        self.last = start
        self.buffer: collections.deque[Rendered] = collections.deque()
        self.changed = asyncio.Event()
        self.listeners = 0

    def covers(self, position: str | None) -> bool:
        if self.start is None:
            return True
        return position is not None and not _after(self.start, position)

    def since(self, position: str | None) -> list[Rendered]:
        # From the newest back: a listener keeping up wants the last one or two.
        newer: list[Rendered] = []
        for item in reversed(self.buffer):
            if not _after(item[0].id, position):
                break
            newer.append(item)
        newer.reverse()
        return newer

    def add(self, events: list[Rendered]) -> None:
        for item in events:
            if len(self.buffer) == FEED_BUFFER:
                self.start = self.buffer.popleft()[0].id
            self.buffer.append(item)
        self.last = events[-1][0].id
        self.changed.set()
        self.changed = asyncio.Event()


class Feeds:
    """The feeds of one replica, by run id, each living while it has listeners, and their reader."""

    def __init__(self, store: Records, render: Render = render_event) -> None:
        self.store = store
        self.render = render
        self._feeds: dict[str, _Feed] = {}
        self._reader: asyncio.Task[None] | None = None
        #: Readers not yet ended: the current one, and any cancelled one still finishing its read.
        self._readers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._interrupting = False
        #: Reads of what follows a run's final event, shared by the listeners reaching it at once.
        self._tails: dict[tuple[str, str], asyncio.Task[list[Rendered]]] = {}

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        return {task for task in self._readers if not task.done()}

    async def follow(self, run_id: str, after: str | None) -> AsyncGenerator[list[Rendered], None]:
        """The run's events after ``after``, in batches as they come; an empty batch after
        READ_WAIT s without one (time for a keep-alive). Never ends by itself."""
        feed = await self._join(run_id, after)
        try:
            while True:
                changed = feed.changed  # taken before looking, so no batch slips between
                if feed.covers(after):
                    batch = feed.since(after)
                else:
                    events = await self.store.events(run_id, after, 0)
                    batch = [(event, self.render(run_id, event)) for event in events]
                if batch:
                    after = batch[-1][0].id
                    yield batch
                    continue
                try:
                    async with asyncio.timeout(READ_WAIT):
                        await changed.wait()
                except TimeoutError:
                    yield []
        finally:
            self._leave(run_id, feed)

    async def _join(self, run_id: str, after: str | None) -> _Feed:
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _Feed(after)
            reader = self._reader
            if reader is None or reader.done() or reader.cancelling():
                if not self._closed:
                    self._interrupting = False  # a wake asked of a reader now gone
                    self._reader = asyncio.create_task(self._read(), name="asyncgate-feeds")
                    self._readers.add(self._reader)
                    self._reader.add_done_callback(self._readers.discard)
            elif not self._interrupting:
                self._interrupting = True  # one wake per read is enough, however many join meanwhile
                await self._interrupt()  # the reader's read in progress lacks this run
        feed.listeners += 1
        return feed

    async def _interrupt(self) -> None:
        try:
            await self.store.interrupt_watch()
        except StoreError as exc:
            # The reader's next read includes the run anyway, within FEED_BLOCK.
            logger.warning("cannot wake the event reader: %s", exc)

    def _leave(self, run_id: str, feed: _Feed) -> None:
        # The reader stops reading the run's log with its next read.
        feed.listeners -= 1
        if feed.listeners == 0 and self._feeds.get(run_id) is feed:
            del self._feeds[run_id]
            if not self._feeds and self._reader is not None:
                self._reader.cancel()  # no read outlives the last listener; close() awaits it

    async def _read(self) -> None:
        while self._feeds and not self._closed:
            watched = dict(self._feeds)
            try:
                found = await self.store.watch({run_id: feed.last for run_id, feed in watched.items()}, FEED_BLOCK)
            except StoreError as exc:
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    # redis-py turns a read cancelled mid-way into a connection error: the
                    # cancel is what happened, and must not be retried away.
                    raise asyncio.CancelledError() from exc
                logger.warning("cannot read the followed runs' events: %s", exc)
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            if asyncio.current_task() is not self._reader:
                return  # cancelled (its last feed left), but its read ended first: a new reader reads now
            self._interrupting = False
            for run_id, events in found.items():
                feed = watched[run_id]
                if self._feeds.get(run_id) is not feed:
                    continue  # left meanwhile; a new feed for the run reads from its own start
                feed.add([(event, self.render(run_id, event)) for event in events])
                if any(event.is_final for event in events):
                    # After the final state only webhook changes follow, which listeners read
                    # on their own as they finish; a later listener makes a new feed.
                    del self._feeds[run_id]
            if found and len(watched) > 1:
                await asyncio.sleep(FEED_GATHER)

    async def after_final(self, run_id: str, final_id: str) -> list[Rendered]:
        """What the run's log holds after its final event (webhook changes), read once for all
        the listeners asking at the same time: a thousand listeners of a run end together."""
        key = (run_id, final_id)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = asyncio.create_task(self._tail(run_id, final_id), name=f"asyncgate-tail-{run_id}")
            tail.add_done_callback(lambda _: self._tails.pop(key, None))
        return await asyncio.shield(tail)  # a listener leaving does not cancel the others' read

    async def _tail(self, run_id: str, final_id: str) -> list[Rendered]:
        return [(event, self.render(run_id, event)) for event in await self.store.events(run_id, final_id, 0)]

    async def close(self) -> None:
        """Stop the reader (the gateway is shutting down)."""
        self._closed = True  # in case the store's client swallows the cancel
        for tail in self._tails.values():
            tail.cancel()
        readers = [*self._readers, *self._tails.values()]
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
