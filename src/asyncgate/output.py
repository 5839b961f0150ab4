"""Live output: a streaming upstream's answer, relayed as ``output`` events while a run works.

Only a response that streams is parsed (``text/event-stream``, ``application/x-ndjson``, or a
chunked body without a length); any other costs nothing. Its pieces become events written to
the store in batches: one write in flight per run, and what arrives meanwhile rides the next
one, so a fast token stream costs a round trip per batch, not per token, and an idle stream
adds no delay. A run keeps at most ``runs.output_max_events`` / ``runs.output_max_bytes`` of
output; past that, events are still written for live listeners (``"kept": false``) and
removed again once ``LIVE_WINDOW`` newer ones follow, so each run holds a bounded amount
whatever its number of listeners, and one ``output_dropped`` event says what was not kept.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import collections
import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from asyncgate import lifecycle, progress
from asyncgate.errors import StoreError
from asyncgate.headers import CONTENT_LENGTH_RAW, CONTENT_TYPE_RAW, TRANSFER_ENCODING_RAW
from asyncgate.runs import now

logger = logging.getLogger("asyncgate.output")

RawHeaders = Iterable[tuple[bytes, bytes]]

#: Events past the kept bound left in the log for listeners reading live, at most.
LIVE_WINDOW = 256
#: A line or SSE event longer than this is relayed in pieces (``"partial": true``).
MAX_PIECE = 64 * 1024
#: Output waiting for the store, per run, before reading the upstream waits for it.
MAX_PENDING_BYTES = 1024 * 1024

SSE = "sse"
NDJSON = "ndjson"
CHUNKS = "chunks"

_LINE_END = re.compile(rb"\r\n|\r|\n")
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


class OutputLog(Protocol):
    """The part of the store output is written to (``store.base.Execution``: ``append_output``, ``report_progress``)."""

    async def append_output(
        self, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
    ) -> list[str] | None: ...

    async def report_progress(
        self, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
    ) -> str | None: ...

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool: ...


def _header(headers: RawHeaders, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def stream_format(headers: RawHeaders) -> str | None:
    """How a response's body is relayed as output, or None when it does not stream."""
    headers = list(headers)
    media = (_header(headers, CONTENT_TYPE_RAW) or b"").split(b";")[0].strip().lower()
    if media == b"text/event-stream":
        return SSE
    if media in (b"application/x-ndjson", b"application/jsonl", b"application/jsonlines"):
        return NDJSON
    chunked = b"chunked" in (_header(headers, TRANSFER_ENCODING_RAW) or b"").lower()
    if chunked and _header(headers, CONTENT_LENGTH_RAW) is None:
        return CHUNKS
    return None


def _pieces(line: bytes) -> list[tuple[bytes, bool]]:
    """A line in pieces of at most MAX_PIECE bytes, each but the last marked partial."""
    if len(line) <= MAX_PIECE:
        return [(line, False)]
    starts = range(0, len(line), MAX_PIECE)
    return [(line[start : start + MAX_PIECE], start + MAX_PIECE < len(line)) for start in starts]


class _Lines:
    """Splits bytes into lines (CR, LF or CRLF), keeping an unfinished one; long ones in pieces."""

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Complete lines (without their end) and whether each is only a piece of a longer one."""
        if not data:
            return []
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]  # the LF of a CRLF split between two reads
        self._after_cr = data.endswith(b"\r")
        *complete, self._buffer = _LINE_END.split(self._buffer + data)
        lines = [piece for line in complete for piece in _pieces(line)]
        while len(self._buffer) > MAX_PIECE:
            lines.append((self._buffer[:MAX_PIECE], True))
            self._buffer = self._buffer[MAX_PIECE:]
        return lines

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


class _SSEParser:
    """Server-Sent Events as the WHATWG spec dispatches them: one output per event with data."""

    def __init__(self) -> None:
        self._lines = _Lines()
        self._data: list[str] = []
        self._size = 0
        self._name = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for raw, partial in self._lines.feed(chunk):
            line = raw.decode("utf-8", "replace")
            if partial:
                self._data.append(line)
                self._size += len(raw)
                continue
            if not line:
                found.extend(self._dispatch())
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                self._data.append(value)
                self._size += len(value)
            elif field == "event":
                self._name = value
            elif field == "id" and "\0" not in value:
                self._id = value
            if self._size > MAX_PIECE:
                found.extend(self._dispatch(partial=True))
        return found

    def _dispatch(self, partial: bool = False) -> list[dict[str, Any]]:
        if not self._data:
            self._name = ""
            return []
        event: dict[str, Any] = {"data": "\n".join(self._data)}
        if self._name:
            event["sse_event"] = self._name
        if self._id is not None:
            event["sse_id"] = self._id
        if partial:
            event["partial"] = True
        else:
            self._name = ""
        self._data, self._size = [], 0
        return [event]

    def end(self) -> list[dict[str, Any]]:
        return []  # the spec discards an event the stream ends in the middle of


class _NDJSONParser:
    """One output per non-blank line, its text as it is (not parsed: a bad line is relayed too)."""

    def __init__(self) -> None:
        self._lines = _Lines()

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        return [self._event(raw, partial) for raw, partial in self._lines.feed(chunk) if raw.strip()]

    @staticmethod
    def _event(raw: bytes, partial: bool) -> dict[str, Any]:
        event: dict[str, Any] = {"data": raw.decode("utf-8", "replace")}
        if partial:
            event["partial"] = True
        return event

    def end(self) -> list[dict[str, Any]]:
        rest = self._lines.rest()
        return [self._event(rest, False)] if rest.strip() else []


class _ChunkParser:
    """One output per chunk read: text if the content type is textual, else base64."""

    def __init__(self, content_type: str) -> None:
        self._text = content_type.lower().startswith(_TEXT_TYPES)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if not self._text:
            return [{"data_base64": base64.b64encode(chunk).decode("ascii")}]
        text = self._decoder.decode(chunk)
        return [{"data": text}] if text else []

    def end(self) -> list[dict[str, Any]]:
        text = self._decoder.decode(b"", final=True) if self._text else ""
        return [{"data": text}] if text else []


def _size(event: dict[str, Any]) -> int:
    return len(event.get("data") or event.get("data_base64") or "")


class OutputSink:
    """One attempt's output: parses what the upstream streams and writes it to the store in batches."""

    def __init__(
        self,
        log: OutputLog,
        run_id: str,
        attempt: int,
        form: str,
        content_type: str,
        max_events: int,
        max_bytes: int,
        hooks: lifecycle.OutputHooks | None = None,
        max_hooks: int = 1000,
        on_hook: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        #: Output webhook deliveries, when the run's webhook asked for them.
        self.hooks = hooks
        self.max_hooks = max_hooks
        #: Told when a report may have queued a progress delivery.
        self.on_hook = on_hook
        self.run_id = run_id
        self.attempt = attempt
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._parser: _SSEParser | _NDJSONParser | _ChunkParser = (
            _SSEParser() if form == SSE else _NDJSONParser() if form == NDJSON else _ChunkParser(content_type)
        )
        self._form = form
        self._content_type = content_type
        self._seq = 0
        self._kept_events = 0
        self._kept_bytes = 0
        self._dropping = False
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        #: Ids of events written past the kept bound, oldest first, to remove once stale.
        self._live: collections.deque[str] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        #: False once the store refused a write: the attempt no longer holds the run.
        self.holding = True

    async def feed(self, chunk: bytes) -> None:
        """Take a chunk of the body; waits only when the store falls far behind."""
        self._add(self._parser.feed(chunk))
        while self._pending_bytes > MAX_PENDING_BYTES and self._writer is not None:
            self._room.clear()
            await self._room.wait()

    async def close(self) -> None:
        """Write what is left; returns once every output event is in the store (or refused)."""
        self._add(self._parser.end())
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self.hooks is not None:
            await self.hooks.close()

    def abort(self) -> None:
        """Stop writing (the call was cancelled): what is pending is not written."""
        self._pending.clear()
        if self._writer is not None:
            self._writer.cancel()
        if self.hooks is not None:
            self.hooks.abort()

    def _add(self, pieces: list[dict[str, Any]]) -> None:
        if not self.holding:
            return
        for piece in pieces:
            self._pending.extend(self._events(piece))
        if self._pending and self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"asyncgate-output-{self.run_id}")

    def _events(self, piece: dict[str, Any]) -> list[dict[str, Any]]:
        if piece.get("sse_event") == progress.SSE_EVENT and not piece.get("partial"):
            report = progress.report_in_stream(piece["data"])
            if report is not None:
                # A report in the stream, not output; a malformed one is relayed as output instead.
                return [progress.progress_event(report, self.attempt, now())]
        event: dict[str, Any] = {"event": "output", "attempt": self.attempt, "seq": self._seq, "at": now()}
        if self._seq == 0:
            event["format"] = self._form
            event["content_type"] = self._content_type
        event.update(piece)
        self._seq += 1
        size = _size(event)
        self._pending_bytes += size
        if not self._dropping and (self._kept_events >= self.max_events or self._kept_bytes + size > self.max_bytes):
            self._dropping = True
            dropped = {"event": "output_dropped", "attempt": self.attempt, "from_seq": event["seq"], "at": event["at"]}
            dropped |= {"kept_events": self._kept_events, "kept_bytes": self._kept_bytes}
            return [dropped, self._kept(event, False)]
        if self._dropping:
            return [self._kept(event, False)]
        self._kept_events += 1
        self._kept_bytes += size
        return [event]

    @staticmethod
    def _kept(event: dict[str, Any], kept: bool) -> dict[str, Any]:
        event["kept"] = kept
        return event

    async def _write(self) -> None:
        # The run's task owns this writer: close() awaits it and abort() cancels it.
        try:
            while self._pending and self.holding:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                self._room.set()
                for segment in _segments(batch):
                    try:
                        self.holding = await self._write_segment(segment)
                    except StoreError as exc:
                        # Output is a convenience: the run and its result must not wait for it.
                        extra = {"run_id": self.run_id}
                        logger.warning("run %s: output not written: %s", self.run_id, exc, extra=extra)
                    if not self.holding:
                        break
        finally:
            self._writer = None
            self._room.set()

    async def _write_segment(self, segment: list[dict[str, Any]]) -> bool:
        """Write output events, or one progress report; False once the store refuses (the attempt is over)."""
        if segment[0]["event"] == "progress":
            hook = lifecycle.progress_body(self.run_id, segment[0])
            kept = progress.KEPT_REPORTS
            event_id = await self.log.report_progress(self.run_id, self.attempt, segment[0], kept, hook, self.max_hooks)
            if event_id is not None and self.on_hook is not None:
                self.on_hook()
            return event_id is not None
        drop = [self._live.popleft() for _ in range(max(0, len(self._live) - LIVE_WINDOW))]
        ids = await self.log.append_output(self.run_id, self.attempt, segment, drop)
        if ids is None:
            return False
        self._live.extend(i for i, event in zip(ids, segment, strict=True) if event.get("kept") is False)
        if self.hooks is not None:
            self.hooks.add(segment)
        return True


def _segments(batch: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A batch cut in store writes, in order: runs of output events, and each progress report alone."""
    segments: list[list[dict[str, Any]]] = []
    for event in batch:
        if event["event"] == "progress" or not segments or segments[-1][0]["event"] == "progress":
            segments.append([event])
        else:
            segments[-1].append(event)
    return segments


@dataclasses.dataclass(frozen=True)
class HookLimits:
    """How output webhook deliveries are cut (webhooks.output_batch_*), and how many may wait."""

    interval: float = 1.0
    max_bytes: int = 64 * 1024
    max_pending: int = 1000


class Output:
    """Makes a sink for each attempt whose response streams; configured once per gateway."""

    def __init__(
        self,
        log: OutputLog,
        max_events: int,
        max_bytes: int,
        hooks: HookLimits | None = None,
        on_hook: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.on_hook = on_hook
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.hook_limits = hooks or HookLimits()

    def sink(self, run_id: str, attempt: int, headers: RawHeaders, output_hooks: bool = False) -> OutputSink | None:
        """A sink for a response that streams, else None; ``output_hooks``: the run's webhook asked for output."""
        headers = list(headers)
        form = stream_format(headers)
        if form is None:
            return None
        content_type = (_header(headers, CONTENT_TYPE_RAW) or b"").decode("latin-1")
        limits = self.hook_limits
        hooks = None
        if output_hooks:
            hooks = lifecycle.OutputHooks(
                self.log, run_id, attempt, limits.interval, limits.max_bytes, limits.max_pending, self.on_hook
            )
        return OutputSink(
            self.log,
            run_id,
            attempt,
            form,
            content_type,
            self.max_events,
            self.max_bytes,
            hooks,
            limits.max_pending,
            self.on_hook,
        )
