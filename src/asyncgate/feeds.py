"""Event feeds: one reader of a run's event log per replica, shared by all its listeners there.

Without it, each SSE listener would hold its own blocking read of the store (a Redis connection
each) and encode every event itself: a hundred listeners on a token stream cost a hundred reads
and encodings per token. A feed reads once and encodes once; listeners take the encoded events
from its buffer of recent ones, so what a replica holds grows with its runs being followed, not
with their listeners. A listener behind the buffer (resuming from an old id, or too slow) reads
the store itself until it catches up.
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
FEED_BUFFER = 512
#: A listener's stream gets a keep-alive comment this often while idle, so proxies keep it open.
READ_WAIT = 15.0
#: Longest a feed's read of the store blocks. Short, because redis-py lets a cancelled command
#: finish first: a feed stops (its last listener gone, the gateway stopping) within this long.
FEED_BLOCK = 1.0
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
        self.ended = False
        self.task: asyncio.Task[None] | None = None

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
    """The feeds of one replica, by run id; each lives while it has listeners."""

    def __init__(self, store: Records, render: Render = render_event) -> None:
        self.store = store
        self.render = render
        self._feeds: dict[str, _Feed] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def follow(self, run_id: str, after: str | None) -> AsyncGenerator[list[Rendered], None]:
        """The run's events after ``after``, in batches as they come; an empty batch after
        READ_WAIT s without one (time for a keep-alive). Never ends by itself."""
        feed = self._join(run_id, after)
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

    def _join(self, run_id: str, after: str | None) -> _Feed:
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _Feed(after)
            feed.task = asyncio.create_task(self._read(run_id, feed), name=f"asyncgate-feed-{run_id}")
            self._tasks.add(feed.task)
            feed.task.add_done_callback(self._tasks.discard)
        feed.listeners += 1
        return feed

    def _leave(self, run_id: str, feed: _Feed) -> None:
        feed.listeners -= 1
        if feed.listeners == 0:
            feed.ended = True
            if self._feeds.get(run_id) is feed:
                del self._feeds[run_id]
            if feed.task is not None:
                feed.task.cancel()  # awaited by close() if the gateway stops meanwhile

    async def _read(self, run_id: str, feed: _Feed) -> None:
        while not feed.ended:
            try:
                events = await self.store.events(run_id, feed.last, FEED_BLOCK)
            except StoreError as exc:
                task = asyncio.current_task()
                if feed.ended or (task is not None and task.cancelling()):
                    # redis-py turns a read cancelled mid-way into a connection error: the
                    # cancel is what happened, and must not be retried away.
                    raise asyncio.CancelledError() from exc
                logger.warning("run %s: cannot read its events: %s", run_id, exc, extra={"run_id": run_id})
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            if events and not feed.ended:
                feed.add([(event, self.render(run_id, event)) for event in events])
                # After the final state only webhook changes follow, which listeners read on
                # their own as they finish; the feed stops, and a later listener makes a new one.
                feed.ended = any(event.is_final for event in events)
        if self._feeds.get(run_id) is feed:
            del self._feeds[run_id]

    async def close(self) -> None:
        """Stop every feed's reading (the gateway is shutting down)."""
        tasks = list(self._tasks)
        for feed in self._feeds.values():
            feed.ended = True  # in case the store's client swallows the cancel
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
