"""Server-Sent Events: the ``text/event-stream`` grammar (WHATWG HTML, "Event stream interpretation"), sans-IO."""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    """One event of a ``text/event-stream``, as the WHATWG grammar defines it."""

    event: str = "message"
    data: str = ""
    id: str | None = None


_LINE_END = re.compile("\r\n|\r|\n")


class SSEDecoder:
    """Turns a ``text/event-stream`` fed in chunks of any size into events (the WHATWG rules)."""

    def __init__(self) -> None:
        self._rest = ""
        self._started = False
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []
        self._id_buffer: str | None = None
        #: The id of the last event dispatched: what a reconnection sends as Last-Event-ID.
        self.last_event_id: str | None = None
        #: The reconnection delay the server asked for, in milliseconds.
        self.retry: int | None = None

    def feed(self, text: str) -> list[ServerSentEvent]:
        events = []
        for line in self._lines(text):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self, text: str) -> list[str]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            # A CR ended the last chunk; an LF opening this one belongs to the same line end.
            text = text.removeprefix("\n")
            self._skip_lf = False
        if not text:
            return []
        buffer = self._rest + text
        lines = _LINE_END.split(buffer)
        self._rest = lines.pop()
        self._skip_lf = buffer.endswith("\r")
        return lines

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the gateway's keep-alives
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id_buffer is not None:
            self.last_event_id = self._id_buffer
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event=event, data="\n".join(data), id=self.last_event_id)
