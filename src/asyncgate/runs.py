"""Runs: their states, legal transitions, ids, and their one serialised form (orjson)."""

from __future__ import annotations

import dataclasses
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from asyncgate.headers import IDEMPOTENCY_KEY

Headers = tuple[tuple[str, str], ...]

#: Priorities run from 0 (the default, lowest) to this.
MAX_PRIORITY = 9


class RunState(StrEnum):
    """Where a run is in its life; the four last are final."""

    #: Stored and waiting for an executor.
    QUEUED = "queued"
    #: An executor holds the upstream call.
    RUNNING = "running"
    #: The upstream answered 2xx.
    SUCCEEDED = "succeeded"
    #: The upstream answered otherwise, could not be reached, or the run could not complete.
    FAILED = "failed"
    #: A client cancelled the run.
    CANCELLED = "cancelled"
    #: The run was still queued past its queue deadline; the upstream never saw it.
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.EXPIRED})

_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED, RunState.EXPIRED}),
    # RUNNING -> QUEUED is a holder lost and its run handed back for another attempt; RUNNING ->
    # EXPIRED a claim that found its deadline passed, before anything was sent.
    RunState.RUNNING: frozenset({RunState.QUEUED, *FINAL_STATES}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
    RunState.EXPIRED: frozenset(),
}


def can_transition(current: RunState, new: RunState) -> bool:
    """Whether a run in ``current`` may move to ``new``."""
    return new in _TRANSITIONS[current]


class ErrorCode(StrEnum):
    """Why a run failed; stable strings that clients may match on."""

    #: The upstream answered with a status other than 2xx.
    UPSTREAM_ERROR = "upstream_error"
    #: The upstream could not be reached, or broke the connection.
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    #: The upstream did not answer within the run's timeout.
    TIMEOUT = "timeout"
    #: The upstream's body exceeded limits.max_result_bytes.
    RESULT_TOO_LARGE = "result_too_large"
    #: The holder was lost and the request was not safe to send again.
    LOST = "lost"
    #: The run was attempted runs.max_attempts times (or its route's max_attempts).
    MAX_ATTEMPTS = "max_attempts"
    #: A client cancelled the run.
    CANCELLED = "cancelled"
    #: The run waited in the queue past its queue deadline (its route's, or the caller's).
    QUEUE_DEADLINE_EXCEEDED = "queue_deadline_exceeded"


class DeliveryState(StrEnum):
    """Where a run's webhook delivery is; the three last are final."""

    #: Waiting for its next attempt (the first, or a retry after backoff).
    PENDING = "pending"
    #: A gateway is sending it now.
    DELIVERING = "delivering"
    #: The receiver answered 2xx.
    DELIVERED = "delivered"
    #: Every attempt of the schedule failed: a dead letter, kept visible, re-sendable.
    FAILED = "failed"
    #: The receiver answered 410 Gone: never tried again unless re-sent by hand.
    GONE = "gone"

    @property
    def is_final(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.GONE)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """The state of a run's webhook delivery."""

    state: DeliveryState
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None


def new_run_id() -> str:
    """A run id: 136 random bits, URL-safe base64, no timestamp and no counter.

    Never with a leading "-", which command lines would take for an option; refusing those
    (1 in 64) still leaves more than 135 random bits.
    """
    while (run_id := secrets.token_urlsafe(17)).startswith("-"):
        pass
    return run_id


def now() -> float:
    return time.time()


def rfc3339(timestamp: float | None) -> str | None:
    """``2026-11-23T10:03:00.123Z`` for a Unix timestamp, or None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class RunError:
    code: str
    message: str


#: Webhook events a run may ask for, in the order they happen; ``completed`` alone is the default.
WEBHOOK_EVENTS = ("start", "output", "progress", "completed")
COMPLETED = "completed"
DEFAULT_WEBHOOK_EVENTS = (COMPLETED,)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """The request to replay against the upstream; its body is stored beside it."""

    method: str
    #: The path exactly as the client sent it (percent-encoding kept).
    path: str
    #: The query string as sent, less the gateway's own parameters.
    query: str
    #: End-to-end headers to send upstream, in order, repeated names kept.
    headers: Headers
    webhook_url: str | None
    #: The longest the upstream call may take, in seconds.
    timeout: float
    #: The name of the route policy (policies.py) that applied, if one did.
    route: str | None = None
    #: The route's word on re-sending after a lost holder; None leaves it to the method.
    idempotent: bool | None = None
    #: The route's attempt limit; None leaves it to runs.max_attempts.
    max_attempts: int | None = None
    #: The webhook events the caller asked for (WEBHOOK_EVENTS), in their order.
    webhook_events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS

    def hooks(self, event: str) -> bool:
        """Whether the run's webhook is to get ``event`` deliveries."""
        return self.webhook_url is not None and event in self.webhook_events

    @property
    def lifecycle_events(self) -> tuple[str, ...]:
        """The events asked for besides ``completed``: deliveries queued while the run works."""
        if self.webhook_url is None:
            return ()
        return tuple(event for event in self.webhook_events if event != COMPLETED)

    #: Claimed before runs of lower priority (0, the default, to MAX_PRIORITY).
    priority: int = 0
    #: The time (Unix seconds) past which the run, still waiting for its first start, ends expired.
    queue_deadline: float | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The upstream's response, kept whatever the run's outcome."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an attempt ended: the final state, and what the upstream said if it said anything."""

    state: RunState
    result: RunResult | None = None
    error: RunError | None = None
    #: The upstream's status when its answer was not kept (a body over the result limit).
    status: int | None = None

    @property
    def upstream_status(self) -> int | None:
        return self.result.status if self.result is not None else self.status


@dataclasses.dataclass(frozen=True)
class Progress:
    """The latest progress an attempt reported (progress.py): a fraction done and/or a message."""

    value: float | None
    message: str | None
    attempt: int
    at: float

    def to_public(self) -> dict[str, Any]:
        return {"value": self.value, "message": self.message, "attempt": self.attempt, "at": rfc3339(self.at)}


def load_progress(data: bytes | str | None) -> Progress | None:
    """The latest report from its stored form, the JSON of its ``progress`` event."""
    if not data:
        return None
    raw = orjson.loads(data)
    return Progress(raw.get("progress"), raw.get("message"), int(raw["attempt"]), float(raw["at"]))


@dataclasses.dataclass(frozen=True)
class Run:
    run_id: str
    state: RunState
    request: RunRequest
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    upstream_status: int | None = None
    error: RunError | None = None
    #: Fingerprint of the caller's principal: scopes idempotency keys, listing and access.
    caller: str = ""
    #: A client asked to cancel the run while it was running.
    cancel_requested: bool = False
    delivery: Delivery | None = None
    #: The latest progress reported by an attempt, if any did.
    progress: Progress | None = None
    #: Lifecycle webhook deliveries queued for the run so far (each numbered in turn).
    hook_seq: int = 0

    @property
    def webhook_id(self) -> str:
        """The Standard Webhooks message id: the same on every attempt, so receivers de-duplicate."""
        return f"msg_{self.run_id}"


def mask_url(url: str) -> str:
    """The URL with credentials and query values hidden: they are often tokens."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{netloc}"
    query = "&".join(f"{pair.partition('=')[0]}=***" for pair in parts.query.split("&") if pair) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


#: RunRequest fields written only when a route policy set them: a request without one keeps the
#: form older gateways read, and older records (without them) read as "no route".
_POLICY_FIELDS = ("route", "idempotent", "max_attempts")
#: Written only when they differ from their default, for the same reason.
_QUEUE_FIELDS = {"priority": 0, "queue_deadline": None}


# The stored form grows by optional fields only (as _POLICY_FIELDS did): every gateway of a rolling
# update reads every record, so no reader needs a version to tell forms apart. Records written
# before the unread "v": 1 went still carry it; it is ignored.
def dump_request(request: RunRequest) -> bytes:
    data: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": request.headers,
        "webhook_url": request.webhook_url,
        "timeout": request.timeout,
    }
    if request.route is not None:
        data.update((name, getattr(request, name)) for name in _POLICY_FIELDS)
    if request.webhook_events != DEFAULT_WEBHOOK_EVENTS:
        data["webhook_events"] = request.webhook_events  # written only when asked: older gateways read the rest
    data.update(
        (name, value) for name, default in _QUEUE_FIELDS.items() if (value := getattr(request, name)) != default
    )
    return orjson.dumps(data)


def load_request(data: bytes | str) -> RunRequest:
    raw = orjson.loads(data)
    return RunRequest(
        method=raw["method"],
        path=raw["path"],
        query=raw["query"],
        headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
        webhook_url=raw["webhook_url"],
        timeout=float(raw["timeout"]),
        route=raw.get("route"),
        idempotent=raw.get("idempotent"),
        max_attempts=raw.get("max_attempts"),
        webhook_events=tuple(raw.get("webhook_events") or DEFAULT_WEBHOOK_EVENTS),
        priority=raw.get("priority", 0),
        queue_deadline=raw.get("queue_deadline"),
    )


def dump_headers(headers: Headers) -> bytes:
    return orjson.dumps(headers)


def load_headers(data: bytes | str) -> Headers:
    return tuple((str(k), str(v)) for k, v in orjson.loads(data))


def dump_delivery(delivery: Delivery) -> bytes:
    # orjson writes a dataclass as dataclasses.asdict would, without asdict's deep copy: 0.5
    # against 10 us, twice per delivery under a wave of completions (bench S6).
    return orjson.dumps(delivery)


def load_delivery(data: bytes | str | None) -> Delivery | None:
    if not data:
        return None
    raw = orjson.loads(data)
    return Delivery(
        state=DeliveryState(raw["state"]),
        attempts=int(raw["attempts"]),
        last_status=raw["last_status"],
        last_error=raw["last_error"],
        next_attempt_at=raw["next_attempt_at"],
    )


def dump_error(error: RunError | None) -> bytes:
    return orjson.dumps(error)  # None as null; see dump_delivery


def load_error(data: bytes | str | None) -> RunError | None:
    if data is None:
        return None
    raw = orjson.loads(data)
    return RunError(code=raw["code"], message=raw["message"]) if raw else None


#: Methods RFC 9110 defines as idempotent: sending them twice has the effect of sending once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_IDEMPOTENCY_KEY = IDEMPOTENCY_KEY.lower()


def safe_to_resend(request: RunRequest) -> bool:
    """Whether a request whose first sending may have taken effect can be sent again.

    A route's ``idempotent`` decides when it is set; otherwise the method does, or an Idempotency-Key.
    """
    if request.idempotent is not None:
        return request.idempotent
    if request.method.upper() in IDEMPOTENT_METHODS:
        return True
    return any(name.lower() == _IDEMPOTENCY_KEY for name, _ in request.headers)


#: How a run still queued past its queue deadline ends.
EXPIRED_OUTCOME = Outcome(
    RunState.EXPIRED,
    error=RunError(
        ErrorCode.QUEUE_DEADLINE_EXCEEDED, "the run was still queued at its queue deadline; it was never sent"
    ),
)


def past_deadline(run: Run, at: float) -> bool:
    """Whether a run claimed at ``at`` must end expired rather than start: its first start came too late."""
    deadline = run.request.queue_deadline
    return deadline is not None and run.attempt <= 1 and at > deadline


def recovery_outcome(run: Run, max_attempts: int) -> Outcome | None:
    """What to do with a run whose holder is gone: None to queue it again, else how it ends.

    ``max_attempts`` is the gateway's limit; the run's route may have set its own.
    """
    max_attempts = run.request.max_attempts or max_attempts
    if run.attempt >= max_attempts:
        message = f"the run was attempted {run.attempt} times and its holder was lost each time"
        return Outcome(RunState.FAILED, error=RunError(ErrorCode.MAX_ATTEMPTS, message))
    if not safe_to_resend(run.request):
        message = (
            f"the gateway holding the run was lost; the {run.request.method} request was not sent again "
            "because it might already have taken effect"
        )
        return Outcome(RunState.FAILED, error=RunError(ErrorCode.LOST, message))
    return None
