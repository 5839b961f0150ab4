"""output.py: which responses stream, how each form is cut into events, and the batching sink."""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from asyncgate import lifecycle
from asyncgate.errors import StoreUnavailable
from asyncgate.output import LIVE_WINDOW, MAX_PIECE, Output, OutputSink, stream_format


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop, with a deadline."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 10))

    return run


class MemoryLog:
    """An OutputLog keeping events in a list; ``gate`` holds writes back until set."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[list[dict[str, Any]], list[str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.holding = True
        self.fail_next = False
        self._next = 0
        self.hooks: list[tuple[str, Any]] = []
        self.hook_added = asyncio.Event()

    async def append_output(
        self, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
    ) -> list[str] | None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("the store blinked")
        if not self.holding:
            return None
        self.writes.append((events, drop))
        ids = []
        for event in events:
            self._next += 1
            self.events[str(self._next)] = event
            ids.append(str(self._next))
        for entry_id in drop:
            del self.events[entry_id]
        return ids

    async def report_progress(
        self, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
    ) -> str | None:
        ids = await self.append_output(run_id, attempt, [event], [])
        return ids[0] if ids else None

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool:
        self.hooks.append((event, orjson.loads(body)))
        self.hook_added.set()
        return self.holding

    async def wait_hooks(self, count: int) -> None:
        """Until ``count`` deliveries are queued (the test's own deadline bounds it)."""
        while len(self.hooks) < count:
            self.hook_added.clear()
            await self.hook_added.wait()


def sink(
    log: MemoryLog, form: str, content_type: str = "", max_events: int = 100, max_bytes: int = 10_000
) -> OutputSink:
    return OutputSink(log, "run", 1, form, content_type, max_events, max_bytes)


def pieces(log: MemoryLog, key: str = "data") -> list[Any]:
    return [event.get(key) for event in log.events.values() if event["event"] == "output"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-type", b"text/event-stream; charset=utf-8")], "sse"),
        ([(b"Content-Type", b"application/x-ndjson"), (b"content-length", b"10")], "ndjson"),
        ([(b"content-type", b"application/octet-stream"), (b"transfer-encoding", b"chunked")], "chunks"),
        ([(b"content-type", b"application/json"), (b"content-length", b"2")], None),
        ([(b"content-type", b"text/plain")], None),
        ([], None),
    ],
)
def test_only_streaming_responses_are_relayed(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert stream_format(headers) == expected


def test_output_makes_no_sink_for_a_response_that_does_not_stream() -> None:
    output = Output(MemoryLog(), 10, 100)
    assert output.sink("run", 1, [(b"content-type", b"application/json"), (b"content-length", b"2")]) is None
    assert isinstance(output.sink("run", 1, [(b"content-type", b"text/event-stream")]), OutputSink)


@in_loop
async def test_sse_events_become_one_output_each_whatever_the_chunking() -> None:
    log = MemoryLog()
    out = sink(log, "sse", "text/event-stream")
    stream = b": hi\r\n\r\nid: 7\r\ndata: one\r\n\r\nevent: delta\ndata: two\ndata: lines\n\ndata:x\r\rretry: 5\n\n"
    for index in range(len(stream)):
        await out.feed(stream[index : index + 1])
    await out.close()
    outputs = [event for event in log.events.values() if event["event"] == "output"]
    assert [e["data"] for e in outputs] == ["one", "two\nlines", "x"]
    assert [e.get("sse_event") for e in outputs] == [None, "delta", None]
    assert [e.get("sse_id") for e in outputs] == ["7", "7", "7"]  # the last event id stays, as in the spec
    assert [e["seq"] for e in outputs] == [0, 1, 2]
    assert outputs[0]["format"] == "sse" and outputs[0]["content_type"] == "text/event-stream"
    assert "format" not in outputs[1] and all(e["attempt"] == 1 and "kept" not in e for e in outputs)


@in_loop
async def test_an_unfinished_sse_event_at_the_end_is_dropped_as_the_spec_says() -> None:
    log = MemoryLog()
    out = sink(log, "sse")
    await out.feed(b"data: whole\n\ndata: half")
    await out.close()
    assert pieces(log) == ["whole"]


@in_loop
async def test_ndjson_lines_are_relayed_as_text_including_the_last_unterminated_one() -> None:
    log = MemoryLog()
    out = sink(log, "ndjson")
    await out.feed(b'{"a": 1}\n\n{"b"')
    await out.feed(b': 2}\r\nnot json\n{"c": 3}')
    await out.close()
    assert pieces(log) == ['{"a": 1}', '{"b": 2}', "not json", '{"c": 3}']


@in_loop
async def test_a_line_longer_than_a_piece_is_relayed_in_pieces() -> None:
    log = MemoryLog()
    out = sink(log, "ndjson", max_bytes=10 * MAX_PIECE)
    await out.feed(b"x" * (2 * MAX_PIECE + 5) + b"\n")
    await out.close()
    outputs = [event for event in log.events.values() if event["event"] == "output"]
    assert [(len(e["data"]), e.get("partial")) for e in outputs] == [(MAX_PIECE, True), (MAX_PIECE, True), (5, None)]


@in_loop
async def test_binary_chunks_are_base64_and_text_chunks_text_even_split_mid_character() -> None:
    log = MemoryLog()
    out = sink(log, "chunks", "application/octet-stream")
    await out.feed(b"\x00\xff")
    await out.close()
    assert pieces(log, "data_base64") == [base64.b64encode(b"\x00\xff").decode()]
    log = MemoryLog()
    out = sink(log, "chunks", "text/plain; charset=utf-8")
    snowman = "☃".encode()
    await out.feed(b"a" + snowman[:1])
    await out.feed(snowman[1:] + b"b")
    await out.close()
    assert pieces(log) == ["a", "☃b"]


@in_loop
async def test_output_arriving_during_a_write_shares_the_next_write() -> None:
    log = MemoryLog()
    out = sink(log, "ndjson")
    log.gate.clear()
    await out.feed(b"0\n")
    await asyncio.sleep(0)  # the first write starts, and waits on the store
    for index in range(1, 50):
        await out.feed(b"%d\n" % index)
    log.gate.set()
    await out.close()
    assert pieces(log) == [str(index) for index in range(50)]
    assert [len(events) for events, _ in log.writes] == [1, 49]


@in_loop
async def test_past_the_bound_output_goes_on_marked_not_kept_and_stale_ones_are_removed() -> None:
    log = MemoryLog()
    out = sink(log, "ndjson", max_events=2)
    total = LIVE_WINDOW + 12
    for index in range(total):
        await out.feed(b"%d\n" % index)
        await asyncio.sleep(0)  # let each line be its own write, as a slow stream's would
    await out.close()
    everything = [event for events, _ in log.writes for event in events]
    outputs = [event for event in everything if event["event"] == "output"]
    assert [e["data"] for e in outputs] == [str(index) for index in range(total)]  # live: all of it
    assert [e.get("kept") for e in outputs[:3]] == [None, None, False]
    dropped = [event for event in everything if event["event"] == "output_dropped"]
    assert dropped == [
        {
            "event": "output_dropped",
            "attempt": 1,
            "from_seq": 2,
            "at": dropped[0]["at"],
            "kept_events": 2,
            "kept_bytes": 2,
        }
    ]
    # What stays: the kept ones, the marker, LIVE_WINDOW newer ones and the last write's.
    left = list(log.events.values())
    assert [e["data"] for e in left[:2]] == ["0", "1"] and left[2]["event"] == "output_dropped"
    assert len(left) - 3 == LIVE_WINDOW + len(log.writes[-1][0])
    assert left[-1]["data"] == str(total - 1)


@in_loop
async def test_the_byte_bound_counts_the_data() -> None:
    log = MemoryLog()
    out = sink(log, "ndjson", max_bytes=5)
    await out.feed(b"abc\nde\nf\n")
    await out.close()
    outputs = [event for event in log.events.values() if event["event"] == "output"]
    assert [(e["data"], e.get("kept")) for e in outputs] == [("abc", None), ("de", None), ("f", False)]


@in_loop
async def test_a_refused_write_stops_the_output_of_a_lost_attempt() -> None:
    log = MemoryLog()
    log.holding = False
    out = sink(log, "ndjson")
    await out.feed(b"1\n")
    await out.close()
    assert not out.holding
    await out.feed(b"2\n")
    await out.close()
    assert log.events == {} and log.writes == []


@in_loop
async def test_a_store_error_loses_that_batch_only() -> None:
    log = MemoryLog()
    log.fail_next = True
    out = sink(log, "ndjson")
    await out.feed(b"1\n")
    await out.close()
    await out.feed(b"2\n")
    await out.close()
    assert pieces(log) == ["2"] and out.holding


@in_loop
async def test_abort_writes_nothing_more() -> None:
    log = MemoryLog()
    log.gate.clear()
    out = sink(log, "ndjson")
    await out.feed(b"1\n")
    out.abort()
    log.gate.set()
    await asyncio.sleep(0)
    assert log.writes == []


@in_loop
async def test_an_asyncgate_progress_event_becomes_a_report_in_order_with_the_output() -> None:
    log = MemoryLog()
    out = sink(log, "sse", "text/event-stream")
    stream = (
        b"data: one\n\n"
        b'event: asyncgate.progress\ndata: {"progress": 0.5, "message": "half"}\n\n'
        b'event: asyncgate.progress\ndata: {"percent": 75}\n\n'
        b"data: two\n\n"
        b"event: asyncgate.progress\ndata: not json\n\n"
    )
    await out.feed(stream)
    await out.close()
    events = list(log.events.values())
    assert [e["event"] for e in events] == ["output", "progress", "progress", "output", "output"]
    assert {k: events[1][k] for k in ("attempt", "progress", "message")} == {
        "attempt": 1,
        "progress": 0.5,
        "message": "half",
    }
    assert (events[2]["progress"], events[2]["message"]) == (0.75, None)
    # Reports do not take output sequence numbers; a malformed one is relayed as output, not dropped.
    assert [e["seq"] for e in events if e["event"] == "output"] == [0, 1, 2]
    assert events[4]["sse_event"] == "asyncgate.progress" and events[4]["data"] == "not json"
    # Each report is its own write, between the output written before and after it.
    assert [[e["event"] for e in write] for write, _ in log.writes] == [
        ["output"],
        ["progress"],
        ["progress"],
        ["output", "output"],
    ]


@in_loop
async def test_output_webhooks_are_cut_by_size_and_by_time() -> None:
    log = MemoryLog()
    hooks = lifecycle.OutputHooks(log, "run", 1, interval=0.2, max_bytes=10, max_hooks=100)
    out = OutputSink(log, "run", 1, "ndjson", "application/x-ndjson", 100, 10_000, hooks)
    await out.feed(b"aaaa\nbbbb\ncccc\n")  # 12 bytes: one delivery cut by size at once
    await log.wait_hooks(1)
    await out.feed(b"dd\n")
    started = asyncio.get_running_loop().time()
    await log.wait_hooks(2)  # cut by time
    assert asyncio.get_running_loop().time() - started >= 0.15
    await out.feed(b"ee\n")
    await out.close()  # what is left goes at once
    assert [event for event, _ in log.hooks] == ["output"] * 3
    bodies = [body for _, body in log.hooks]
    assert [[e["data"] for e in body["events"]] for body in bodies] == [["aaaa", "bbbb", "cccc"], ["dd"], ["ee"]]
    assert [(b["from_seq"], b["to_seq"]) for b in bodies] == [(0, 2), (3, 3), (4, 4)]
    assert bodies[0]["type"] == "run.output" and bodies[0]["run_id"] == "run" and bodies[0]["attempt"] == 1
    assert bodies[0]["events"][0]["format"] == "ndjson" and bodies[0]["events"][0]["at"].endswith("Z")
