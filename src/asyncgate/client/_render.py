"""How ``asyncgate runs`` shows runs to people: the live progress line, statuses, tables, events, answers.

Pure text: everything here takes records and returns (or writes) strings, so it is tested
without a gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from asyncgate.client._models import Result, RunEvent, RunProgress, RunStatus
from asyncgate.runs import RunState

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ASCII_SPINNER = "-\\|/"
#: Widest path shown in ``runs list``.
PATH_WIDTH = 40
#: Lines of a failed run's upstream body shown under it, and the widest shown of each.
BODY_LINES = 10
BODY_WIDTH = 200


class Progress:
    """The live line of ``runs wait`` on a terminal (spinner, state, elapsed), or a line per change elsewhere.

    Times count from the run's creation, the moment of its first event, on the wall clock.
    """

    def __init__(
        self,
        stream: TextIO,
        run_id: str,
        *,
        tty: bool,
        quiet: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.run_id = run_id
        self.tty = tty
        self.quiet = quiet
        self.state: RunState | None = None
        #: The latest progress reported, shown on the live line.
        self.report: RunProgress | None = None
        self._clock = clock
        self._origin: float | None = None
        self._frame = 0
        encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
        self._spinner = SPINNER if encoding == "utf8" else ASCII_SPINNER

    def elapsed(self, at: float | None = None) -> float:
        """Seconds from the run's creation to ``at`` (default now)."""
        moment = self._clock() if at is None else at
        return max(0.0, moment - (moment if self._origin is None else self._origin))

    def update(self, state: RunState, at: float | None = None) -> None:
        """The run entered ``state`` at ``at`` (epoch seconds, default now)."""
        if self._origin is None:
            self._origin = self._clock() if at is None else at
        if state == self.state:
            return
        self.state = state
        if self.quiet:
            return
        if self.tty:
            self._draw()
        elif not state.is_final:  # how the run ended is the report's line, which follows
            self.stream.write(f"{self.run_id} {state} after {self.elapsed(at):.1f}s\n")
            self.stream.flush()

    def progress(self, report: RunProgress, at: float | None = None) -> None:
        """The upstream reported ``report`` at ``at`` (epoch seconds, default now)."""
        self.report = report
        if self.quiet:
            return
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"{self.run_id} {_report_text(report)} after {self.elapsed(at):.1f}s\n")
            self.stream.flush()

    def tick(self) -> None:
        if self.tty and not self.quiet and self.state is not None:
            self._frame += 1
            self._draw()

    def _draw(self) -> None:
        spin = self._spinner[self._frame % len(self._spinner)]
        report = f" {_report_text(self.report)}" if self.report is not None and self.state is RunState.RUNNING else ""
        self.stream.write(f"\r\x1b[2K{spin} {self.run_id} {self.state}{report} {self.elapsed():.1f}s")
        self.stream.flush()

    def close(self) -> None:
        """Clear the live line, so what follows starts on a clean one."""
        if self.tty and not self.quiet and self.state is not None:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def to_lines(self) -> None:
        """From now on a line per change, no live line: the run's output is being printed."""
        self.close()
        self.tty = False


class OutputPrinter:
    """Writes a run's live output as it arrives: an SSE event's data or an NDJSON line on a line
    of its own, any other streamed body as its bytes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines = True
        #: Whether the last thing written ended a line (a report may follow on a line of its own).
        self.at_line_start = True

    def write(self, event: RunEvent) -> None:
        content = event.output
        if content is None:
            return
        form = event.data.get("format")
        if isinstance(form, str):
            self._lines = form != "chunks"
        if self._lines:
            content += b"\n"
        buffer = getattr(self.stream, "buffer", None)
        if buffer is None:
            self.stream.write(content.decode(errors="replace"))
        else:
            self.stream.flush()
            buffer.write(content)
        self.stream.flush()
        if buffer is not None:
            buffer.flush()
        self.at_line_start = content.endswith(b"\n") or (not content and self.at_line_start)

    def finish(self) -> None:
        """End an unfinished line, so that what follows starts on a line of its own."""
        if not self.at_line_start:
            self.stream.write("\n")
            self.stream.flush()
            self.at_line_start = True


def _report_text(report: RunProgress) -> str:
    """A progress report in a few words: ``42% step 3 of 7``, its message on one line."""
    message = " ".join((report.message or "").split())
    return " ".join(part for part in (report.percent, message) if part) or "progress"


def is_text(content: bytes) -> bool:
    try:
        content.decode()
    except UnicodeDecodeError:
        return False
    return bool(content)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def describe(status: RunStatus) -> str:
    """A run's status as aligned ``name  value`` lines."""
    error = f"{status.error.code}: {status.error.message}" if status.error else "-"
    webhook = status.webhook
    rows = [
        ("run_id", status.run_id),
        ("status", str(status.state)),
        ("request", f"{status.method} {status.path}"),
        ("upstream", "-" if status.upstream_status is None else str(status.upstream_status)),
        ("error", error),
        ("attempt", str(status.attempt)),
        ("created", _when(status.created_at)),
        ("started", _when(status.started_at)),
        ("finished", _when(status.finished_at)),
    ]
    if status.progress is not None:
        rows.append(("progress", _report_text(status.progress)))
    if webhook is not None:
        rows.append(("webhook", f"{webhook.state} after {webhook.attempts} attempt(s) to {webhook.url}"))
    return "".join(f"{name:<10}{value}\n" for name, value in rows)


def answer_excerpt(answer: Result) -> str:
    """The first lines of an upstream's answer, indented under a line that says what they are."""
    if not answer.content:
        return f"the upstream answered {answer.status_code} with an empty body\n"
    if not is_text(answer.content):
        return f"the upstream answered {answer.status_code} with {len(answer.content)} bytes that are not text\n"
    lines = answer.content.decode().splitlines()
    shown = [line if len(line) <= BODY_WIDTH else line[: BODY_WIDTH - 3] + "..." for line in lines[:BODY_LINES]]
    more = f"  ... {len(lines) - BODY_LINES} more lines (asyncgate runs result)\n" if len(lines) > BODY_LINES else ""
    return f"the upstream answered {answer.status_code}:\n" + "".join(f"  {line}\n" for line in shown) + more


def event_line(event: RunEvent) -> str:
    """One event as a line: when, what, and the details it carries."""
    parts = [_when(event.at), event.event]
    if event.attempt is not None:
        parts.append(f"attempt {event.attempt}")
    if event.upstream_status is not None:
        parts.append(f"upstream {event.upstream_status}")
    if event.error is not None:
        parts.append(f"{event.error.code}: {event.error.message}")
    if event.event == "output":
        parts.append(f"#{event.data.get('seq')}")
        parts.append(_piece(event))
    elif (report := event.progress) is not None:
        parts.append(_report_text(report))
    elif event.event == "output_dropped":
        data = event.data
        kept = f"{data.get('kept_events')} events, {data.get('kept_bytes')} bytes kept"
        parts.append(f"output from #{data.get('from_seq')} on not kept ({kept})")
    webhook = event.data.get("webhook")
    if isinstance(webhook, dict):
        parts.append(f"{webhook.get('state')} after {webhook.get('attempts')} attempt(s)")
    return "  ".join(parts) + "\n"


def _piece(event: RunEvent) -> str:
    """An output event's content on one line: text quoted (JSON-escaped), binary as its size."""
    if "data_base64" in event.data:
        return f"<{len(event.output or b'')} bytes>"
    piece = json.dumps(str(event.data.get("data", "")), ensure_ascii=False)
    if event.data.get("kept") is False:
        piece += " (not kept)"
    return piece


def table(runs: Sequence[RunStatus]) -> str:
    """Runs as a table with a header row, columns as wide as their widest cell."""
    header = ("RUN ID", "STATUS", "UPSTREAM", "METHOD", "PATH", "CREATED")
    rows = [header] + [
        (
            run.run_id,
            str(run.state),
            "-" if run.upstream_status is None else str(run.upstream_status),
            run.method,
            run.path if len(run.path) <= PATH_WIDTH else run.path[: PATH_WIDTH - 3] + "...",
            _when(run.created_at),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )
