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
import itertools
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
    name = str(event.data.get("event", "message")).encode()
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), name, orjson.dumps(data))


def event_order(event_id: str) -> tuple[int, ...]:
    """Event ids in their stores' order: a Redis stream id ``ms-seq`` or an SQLite row number."""
    return tuple(int(part) for part in event_id.split("-"))


def _after(event_id: str, position: str | None) -> bool:
    return position is None or event_order(event_id) > event_order(position)


class Batch:
    """Events of one run for a listener, in order, with their encodings joined up to the run's
    final event: one write per listener and batch. Listeners at the same place share one."""

    __slots__ = ("data", "events", "final")

    def __init__(self, events: list[Rendered], to_final: bool = True) -> None:
        self.events = events
        #: The run's final event, if the batch holds it; ``data`` ends with it (unless ``to_final``
        #: is False: what follows the final event, read once the stream reached it).
        self.final: Event | None = None
        for n, (event, _) in enumerate(events if to_final else ()):
            if event.is_final:
                self.final, events = event, events[: n + 1]
                break
        self.data = b"".join([encoded for _, encoded in events])


#: What a listener gets after READ_WAIT s without events: time for a keep-alive.
KEEP_ALIVE = Batch([])


class _Feed:
    """A run's recent events, numbered from 0 as they are added: listeners keeping up hold a
    number, not an id, so taking what is new costs no id comparison."""

    __slots__ = ("_shared", "active", "buffer", "changed", "end", "last", "listeners", "start", "ticks", "timer")

    def __init__(self, start: str | None, now: float) -> None:
        #: The buffer holds every event after this id (None: from the first).
        self.start = start
        self.last = start
        self.buffer: collections.deque[Rendered] = collections.deque()
        #: The number of events added so far, the newest being ``end - 1``.
        self.end = 0
        self.changed = asyncio.Event()
        self.listeners = 0
        #: When events last came (loop time), and keep-alive times passed since the feed began.
        self.active = now
        self.ticks = 0
        self.timer: asyncio.TimerHandle | None = None
        self._shared: tuple[int, Batch] | None = None

    def covers(self, position: str | None) -> bool:
        if self.start is None:
            return True
        return position is not None and not _after(self.start, position)

    def place(self, position: str | None) -> int | None:
        """The number of the first event after ``position``, or None if the buffer lacks some."""
        if not self.covers(position):
            return None
        place = self.end
        for event, _ in reversed(self.buffer):  # from the newest back: a listener joining live wants none
            if not _after(event.id, position):
                break
            place -= 1
        return place

    def since(self, place: int) -> Batch | None:
        """Events from number ``place`` on, or None if the buffer no longer holds them all."""
        held = len(self.buffer)
        if place < self.end - held:
            return None
        if place == self.end:
            return KEEP_ALIVE
        shared = self._shared
        if shared is None or shared[0] != place:
            events = list(itertools.islice(self.buffer, held - (self.end - place), held))
            shared = self._shared = (place, Batch(events))
        return shared[1]

    def add(self, events: list[Rendered], now: float) -> None:
        # The newest read is kept whole, however long: listeners that had everything before it
        # (the first ones, when the feed's first read brings a long log) need all of it.
        self.buffer.extend(events)
        while len(self.buffer) > max(FEED_BUFFER, len(events)):
            self.start = self.buffer.popleft()[0].id
        self.end += len(events)
        self.last = events[-1][0].id
        self.active = now
        self._shared = None
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


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
        self._tails: dict[tuple[str, str], asyncio.Task[Batch]] = {}

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        return {task for task in self._readers if not task.done()}

    async def follow(self, run_id: str, after: str | None) -> AsyncGenerator[Batch, None]:
        """The run's events after ``after``, in batches as they come; KEEP_ALIVE (no events) after
        READ_WAIT s without any. Never ends by itself."""
        feed = await self._join(run_id, after)
        place = feed.place(after)  # None while reading the store, behind the feed's buffer
        ticks = feed.ticks
        try:
            while True:
                changed = feed.changed  # taken before looking, so no batch slips between
                batch = None if place is None else feed.since(place)
                if batch is not None:
                    place = feed.end
                else:
                    events = await self.store.events(run_id, after, 0)
                    batch = Batch([(event, self.render(run_id, event)) for event in events])
                    place = feed.place(events[-1].id if events else after)  # caught up, most often
                if batch.events:
                    after = batch.events[-1][0].id
                    yield batch
                    continue
                if feed.ticks != ticks:
                    ticks = feed.ticks
                    yield KEEP_ALIVE
                    continue
                await changed.wait()
        finally:
            self._leave(run_id, feed)

    async def _join(self, run_id: str, after: str | None) -> _Feed:
        feed = self._feeds.get(run_id)
        if feed is None:
            loop = asyncio.get_running_loop()
            feed = self._feeds[run_id] = _Feed(after, loop.time())
            feed.timer = loop.call_later(READ_WAIT, self._quiet, feed)
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

    def _quiet(self, feed: _Feed) -> None:
        # One timer per feed, not one per listener and wait: after READ_WAIT s without events,
        # every listener of the feed is woken to send a keep-alive.
        loop = asyncio.get_running_loop()
        idle = loop.time() - feed.active
        if idle >= READ_WAIT:
            feed.ticks += 1
            feed.active = loop.time()
            feed.wake()
            idle = 0
        feed.timer = loop.call_later(READ_WAIT - idle, self._quiet, feed)

    async def _interrupt(self) -> None:
        try:
            await self.store.interrupt_watch()
        except StoreError as exc:
            # The reader's next read includes the run anyway, within FEED_BLOCK.
            logger.warning("cannot wake the event reader: %s", exc)

    def _leave(self, run_id: str, feed: _Feed) -> None:
        # The reader stops reading the run's log with its next read.
        feed.listeners -= 1
        if feed.listeners == 0:
            feed.stop()
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
            now = asyncio.get_running_loop().time()
            for run_id, events in found.items():
                feed = watched[run_id]
                if self._feeds.get(run_id) is not feed:
                    continue  # left meanwhile; a new feed for the run reads from its own start
                feed.add([(event, self.render(run_id, event)) for event in events], now)
                if any(event.is_final for event in events):
                    # After the final state only webhook changes follow, which listeners read
                    # on their own as they finish; a later listener makes a new feed.
                    del self._feeds[run_id]
            if found and len(watched) > 1:
                await asyncio.sleep(FEED_GATHER)

    async def after_final(self, run_id: str, final_id: str) -> Batch:
        """What the run's log holds after its final event (webhook changes), read once for all
        the listeners asking at the same time: a thousand listeners of a run end together."""
        key = (run_id, final_id)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = asyncio.create_task(self._tail(run_id, final_id), name=f"asyncgate-tail-{run_id}")
            tail.add_done_callback(lambda _: self._tails.pop(key, None))
        return await asyncio.shield(tail)  # a listener leaving does not cancel the others' read

    async def _tail(self, run_id: str, final_id: str) -> Batch:
        events = await self.store.events(run_id, final_id, 0)
        return Batch([(event, self.render(run_id, event)) for event in events], to_final=False)

    async def close(self) -> None:
        """Stop the reader (the gateway is shutting down)."""
        self._closed = True  # in case the store's client swallows the cancel
        for tail in self._tails.values():
            tail.cancel()
        readers = [*self._readers, *self._tails.values()]
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
