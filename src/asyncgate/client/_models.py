"""What the gateway's API speaks of: run statuses, results, pages of runs, events, as frozen records."""

from __future__ import annotations

import base64
import dataclasses
import json as jsonlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from asyncgate.runs import RunState


@dataclasses.dataclass(frozen=True)
class ErrorDetail:
    """Why a run failed: a stable ``code`` (``upstream_error``, ``timeout``, ...) and a message."""

    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class WebhookStatus:
    """Where the run's webhook delivery is (``pending``, ``delivering``, ``delivered``, ``failed``, ``gone``).

    ``state`` is None for a run that asked only for events other than ``completed``: there is no
    delivery at its end to be in any state.
    """

    url: str
    state: str | None
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    #: The webhook events the run asked for (``start``, ``output``, ``progress``, ``completed``).
    events: tuple[str, ...] = ("completed",)


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """Progress an upstream reported: ``value`` a fraction from 0 to 1, and/or a ``message``."""

    value: float | None
    message: str | None
    attempt: int | None = None
    at: datetime | None = None

    @property
    def percent(self) -> str | None:
        """``value`` as ``"42%"``, or None without one."""
        return None if self.value is None else f"{self.value * 100:.0f}%"


@dataclasses.dataclass(frozen=True)
class QueuePlace:
    """Where a queued run stands: the runs claimed before it, and a rough wait in seconds."""

    ahead: int
    #: The runs ahead divided by the recent claim rate; None while the gateway cannot tell yet.
    estimated_wait: float | None


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """A run's status resource. ``state`` is the JSON's ``status``; ``raw`` is the JSON as sent."""

    run_id: str
    state: RunState
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    method: str
    path: str
    upstream_status: int | None
    error: ErrorDetail | None
    attempt: int
    webhook: WebhookStatus | None
    #: The run's URLs by name (``status``, ``result``, ``events``, ``cancel``), paths on the
    #: gateway; empty from a gateway too old to send them.
    urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The route policy that applied to the run (its name, else its index in the gateway's
    #: ``routes:``); None for none, or from a gateway too old to send it.
    route: str | None = None
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)
    #: The latest progress the upstream reported; None before the first report (or from an older gateway).
    progress: RunProgress | None = None
    #: The run's priority (0, the lowest, unless its route or its caller set one).
    priority: int = 0
    #: When the run, still queued then, ends ``expired``; None when it has no queue deadline.
    queue_deadline: datetime | None = None
    #: Where the run stands while queued; None once it has started (or from an older gateway).
    queue: QueuePlace | None = None

    @property
    def is_final(self) -> bool:
        return self.state.is_final


@dataclasses.dataclass(frozen=True)
class Submitted:
    """The gateway's 202: the new run (or, on an idempotent replay, the run the key already names)."""

    run_id: str
    state: RunState
    location: str | None
    replayed: bool


@dataclasses.dataclass(frozen=True)
class Result:
    """The upstream's response to the run's request, exactly as the gateway kept it."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return httpx.Response(self.status_code, headers=self.headers, content=self.content).text

    def json(self) -> Any:
        return jsonlib.loads(self.content)


@dataclasses.dataclass(frozen=True)
class RunPage:
    """One page of ``GET /runs``, newest first; pass ``next_cursor`` back for the next page."""

    runs: list[RunStatus]
    next_cursor: str | None


@dataclasses.dataclass(frozen=True)
class RunEvent:
    """An event of a run's stream: the state it entered, ``webhook``, its live ``output``, or ``progress``.

    State events carry the attempt, and final ones the upstream status and error; ``data`` is
    the event's JSON as sent.
    """

    id: str | None
    event: str
    at: datetime | None
    attempt: int | None
    upstream_status: int | None
    error: ErrorDetail | None
    data: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)

    @property
    def state(self) -> RunState | None:
        """The state the run entered, or None for an event that is not a state change."""
        try:
            return RunState(self.event)
        except ValueError:
            return None

    @property
    def is_final(self) -> bool:
        state = self.state
        return state is not None and state.is_final

    @property
    def progress(self) -> RunProgress | None:
        """The report a ``progress`` event carries, or None for any other event."""
        if self.event != "progress":
            return None
        value, message = self.data.get("progress"), self.data.get("message")
        return RunProgress(
            value=float(value) if isinstance(value, int | float) else None,
            message=message if isinstance(message, str) else None,
            attempt=self.attempt,
            at=self.at,
        )

    @property
    def output(self) -> bytes | None:
        """The piece of the upstream's answer an ``output`` event carries, or None for any other event.

        An SSE event's data or an NDJSON line (without its line end), or a chunk of any other
        streamed body, as bytes (text as UTF-8).
        """
        if self.event != "output":
            return None
        encoded = self.data.get("data_base64")
        if isinstance(encoded, str):
            return base64.b64decode(encoded)
        return str(self.data.get("data", "")).encode()
