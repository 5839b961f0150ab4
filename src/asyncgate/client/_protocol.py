"""The asyncgate protocol without I/O: calls to make, answers to parse, and when to make the next call.

``Client`` and ``AsyncClient`` are thin loops around what is here: they send each ``Call`` with
httpx and hand the ``httpx.Response`` back. Everything that decides something (headers, paths,
parsing, error mapping, long-poll and reconnect pacing) lives in this module, once, with the
records it parses to in ``_models`` and the event-stream grammar in ``_sse``; all of it is
tested without a socket or an event loop.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from asyncgate.client._models import (
    ErrorDetail,
    QueuePlace,
    Result,
    RunEvent,
    RunPage,
    RunProgress,
    RunStatus,
    Submitted,
    WebhookStatus,
)
from asyncgate.client._sse import ServerSentEvent, SSEDecoder
from asyncgate.client.errors import APIError, ProtocolError, RunCancelled, RunFailed, TransportError
from asyncgate.headers import (
    ACCEPT,
    AUTHORIZATION,
    CACHE_CONTROL,
    CONTENT_TYPE,
    IDEMPOTENCY_KEY,
    IDEMPOTENT_REPLAY,
    LAST_EVENT_ID,
    LOCATION,
    PREFER,
    RESPOND_ASYNC,
    RETRY_AFTER,
    TIMEOUT,
    WEBHOOK,
    WEBHOOK_EVENTS,
)
from asyncgate.runs import RunState

if TYPE_CHECKING:
    from asyncgate.client._async import AsyncRun
    from asyncgate.client._sync import Run

DEFAULT_PREFIX = "/_asyncgate"
DEFAULT_URL = "http://127.0.0.1:8080"
#: The gateway's URL, read when no URL is passed (the client and ``asyncgate runs`` alike).
URL_ENV = "ASYNCGATE_URL"
#: The caller's token, sent as ``Authorization: Bearer <token>`` when no token is passed.
TOKEN_ENV = "ASYNCGATE_TOKEN"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: The gateway (uvicorn) closes a connection idle for 5 s, and httpx keeps one for 5 s too: a call
#: made at that moment reuses a connection being closed and is reset, with no retry. Dropping idle
#: connections sooner than any common server does avoids that race, for one more handshake.
DEFAULT_LIMITS = httpx.Limits(keepalive_expiry=2.0)

#: The longest long poll asked for. The gateway allows 60 s; half that stays under the idle
#: timeout of most load balancers between the client and the gateway.
LONG_POLL_MAX = 30
#: Extra read time granted to a long poll beyond the wait it asked for.
LONG_POLL_MARGIN = 10.0
#: A long poll answered this much sooner than asked, with a run not final, was not a long poll
#: (an older gateway, or one that caps the wait lower): pace the next one by Retry-After instead.
EARLY_ANSWER_SLACK = 0.5
#: Pause between polls when the gateway gives no Retry-After.
DEFAULT_RETRY_AFTER = 1.0
#: Gateway answers that mean "try again shortly" rather than "you asked for something wrong".
RETRYABLE_STATUSES = frozenset({502, 503, 504})
#: Failures of a call that following a run survives: the next call may well get through.
RESUMABLE_ERRORS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
#: What breaks an events stream without ending the run: reconnect.
STREAM_ERRORS: tuple[type[Exception], ...] = (TransportError, *RESUMABLE_ERRORS)
#: Error codes the gateway's result endpoint answers with itself; any other answer is the upstream's.
RESULT_ERROR_CODES = frozenset({"run_not_found", "run_not_finished", "no_upstream_response", "store_unavailable"})

Pairs = tuple[tuple[str, str], ...]
HeaderInput = Mapping[str, str] | Sequence[tuple[str, str]] | None
ParamInput = Mapping[str, str | int | float] | Sequence[tuple[str, str | int | float]] | None


@dataclasses.dataclass(frozen=True)
class Call:
    """One HTTP request to make, relative to the client's base URL."""

    method: str
    url: str
    params: Pairs = ()
    headers: Pairs = ()
    content: bytes | None = None
    #: The read timeout this call needs at least: a long poll holds its answer back on purpose.
    min_read_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """The paths of the gateway's API under its prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ValueError(f"the prefix must start with /, got {self.prefix!r}")
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))

    @property
    def runs(self) -> str:
        return f"{self.prefix}/runs"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}/runs/{quote(run_id, safe='')}"


def connection(
    base_url: str | None, token: str | None, headers: HeaderInput, environ: Mapping[str, str] | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """The gateway's URL and the headers of every call: the arguments, then ASYNCGATE_URL and ASYNCGATE_TOKEN.

    A token becomes ``Authorization: Bearer <token>``, unless ``headers`` name an Authorization
    of their own; an empty variable counts as unset.
    """
    env = os.environ if environ is None else environ
    pairs = _pairs(headers)
    token = token if token is not None else env.get(TOKEN_ENV)
    if token and not any(name.lower() == AUTHORIZATION.lower() for name, _ in pairs):
        pairs.append((AUTHORIZATION, f"Bearer {token}"))
    return base_url or env.get(URL_ENV) or DEFAULT_URL, pairs


# Building calls ---------------------------------------------------------------------------------


def _pairs(headers: HeaderInput) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in items]


def _params(params: ParamInput) -> Pairs:
    if params is None:
        return ()
    items = params.items() if isinstance(params, Mapping) else params
    return tuple((str(name), _scalar(value)) for name, value in items)


def _scalar(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _seconds(value: float) -> str:
    if value <= 0:
        raise ValueError(f"a timeout must be positive, got {value}")
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def submit_call(
    method: str,
    path: str,
    *,
    json: Any = None,
    content: bytes | str | None = None,
    params: ParamInput = None,
    headers: HeaderInput = None,
    webhook: str | None = None,
    idempotency_key: str | None = None,
    timeout: float | None = None,
    webhook_events: Sequence[str] | None = None,
) -> Call:
    """The request that submits ``method path`` as a run (``Prefer: respond-async``); ``webhook_events``
    names the webhook deliveries wanted (``start``, ``output``, ``progress``, ``completed``)."""
    if not path.startswith("/"):
        raise ValueError(f"the path must start with /, got {path!r}")
    if json is not None and content is not None:
        raise TypeError("pass json or content, not both")
    pairs = _pairs(headers)
    body = content.encode() if isinstance(content, str) else content
    if json is not None:
        body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
        if not any(name.lower() == CONTENT_TYPE.lower() for name, _ in pairs):
            pairs.append((CONTENT_TYPE, "application/json"))
    pairs.append((PREFER, RESPOND_ASYNC))
    if webhook is not None:
        pairs.append((WEBHOOK, webhook))
    if webhook_events is not None:
        pairs.append((WEBHOOK_EVENTS, ",".join(webhook_events)))
    if idempotency_key is not None:
        pairs.append((IDEMPOTENCY_KEY, idempotency_key))
    if timeout is not None:
        pairs.append((TIMEOUT, _seconds(timeout)))
    return Call(method.upper(), path, params=_params(params), headers=tuple(pairs), content=body)


def status_call(endpoints: Endpoints, run_id: str, wait: int | None = None) -> Call:
    """``GET /runs/{id}``; with ``wait``, a long poll answered once the run is final or after ``wait`` s."""
    if not wait:
        return Call("GET", endpoints.run(run_id))
    return Call("GET", endpoints.run(run_id), params=(("wait", str(wait)),), min_read_timeout=wait + LONG_POLL_MARGIN)


def result_call(endpoints: Endpoints, run_id: str) -> Call:
    return Call("GET", endpoints.run(run_id) + "/result")


def cancel_call(endpoints: Endpoints, run_id: str) -> Call:
    return Call("DELETE", endpoints.run(run_id))


def resend_webhook_call(endpoints: Endpoints, run_id: str, webhook: str | None = None) -> Call:
    # The gateway deletes a run's webhook URL once its delivery is final: a resend then names it.
    headers = ((WEBHOOK, webhook),) if webhook is not None else ()
    return Call("POST", endpoints.run(run_id) + "/webhook", headers=headers)


def events_call(endpoints: Endpoints, run_id: str, last_event_id: str | None = None) -> Call:
    headers = [(ACCEPT, "text/event-stream"), (CACHE_CONTROL, "no-cache")]
    if last_event_id is not None:
        headers.append((LAST_EVENT_ID, last_event_id))
    return Call("GET", endpoints.run(run_id) + "/events", headers=tuple(headers))


def list_call(
    endpoints: Endpoints, status: str | None = None, limit: int | None = None, cursor: str | None = None
) -> Call:
    pairs = (("status", status), ("limit", limit), ("cursor", cursor))
    params = [(name, str(value)) for name, value in pairs if value is not None]
    return Call("GET", endpoints.runs, params=tuple(params))


def timeout_for(base: httpx.Timeout, call: Call) -> httpx.Timeout:
    """The client's timeout, with the read timeout raised to what ``call`` needs."""
    needed = call.min_read_timeout
    if needed is None or base.read is None or base.read >= needed:
        return base
    return httpx.Timeout(connect=base.connect, read=needed, write=base.write, pool=base.pool)


# Parsing answers --------------------------------------------------------------------------------


def retry_after(response: httpx.Response, default: float = DEFAULT_RETRY_AFTER) -> float:
    """The response's Retry-After in seconds (delta-seconds only), or ``default``."""
    value = response.headers.get(RETRY_AFTER, "").strip()
    return float(value) if value.isdigit() else default


def transport_error(call: Call, exc: Exception) -> TransportError:
    """The call could not be made: what happened in words, and httpx's name for it."""
    what = str(exc) or "no detail"
    return TransportError(f"{call.method} {call.url}: {what} ({type(exc).__name__})")


def api_error(response: httpx.Response) -> APIError:
    """The APIError for a 4xx/5xx answer, from its ``{"error": {"code", "message"}}`` body if it has one."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass  # not the gateway's error body (a load balancer's page, say): keep the generic code
    after = retry_after(response, default=0) or None
    return APIError(response.status_code, code, message, retry_after=after, response=response)


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise api_error(response)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise ProtocolError(f"expected JSON from the gateway, got {response.text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object from the gateway, got {data!r:.200}")
    return data


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _webhook(data: Any) -> WebhookStatus | None:
    if not data:
        return None
    return WebhookStatus(
        url=str(data.get("url", "")),
        state=None if data.get("state") is None else str(data["state"]),
        attempts=int(data.get("attempts", 0)),
        last_status=_optional_int(data.get("last_status")),
        last_error=data.get("last_error"),
        next_attempt_at=_time(data.get("next_attempt_at")),
        events=tuple(str(event) for event in data.get("events") or ("completed",)),
    )


def _progress(data: Any) -> RunProgress | None:
    if not data:
        return None
    value = data.get("value")
    return RunProgress(
        value=None if value is None else float(value),
        message=data.get("message"),
        attempt=_optional_int(data.get("attempt")),
        at=_time(data.get("at")),
    )


def _queue(data: Any) -> QueuePlace | None:
    if not data:
        return None
    wait = data.get("estimated_wait")
    return QueuePlace(ahead=int(data["ahead"]), estimated_wait=None if wait is None else float(wait))


def run_status(data: Mapping[str, Any]) -> RunStatus:
    """A RunStatus from the status JSON; ProtocolError if it is not one."""
    try:
        error = data.get("error")
        return RunStatus(
            run_id=str(data["run_id"]),
            state=RunState(data["status"]),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            method=str(data.get("method", "")),
            path=str(data.get("path", "")),
            upstream_status=_optional_int(data.get("upstream_status")),
            error=ErrorDetail(str(error["code"]), str(error["message"])) if error else None,
            attempt=int(data.get("attempt", 0)),
            webhook=_webhook(data.get("webhook")),
            urls={str(name): str(url) for name, url in (data.get("urls") or {}).items()},
            route=None if data.get("route") is None else str(data["route"]),
            raw=dict(data),
            progress=_progress(data.get("progress")),
            priority=int(data.get("priority") or 0),
            queue_deadline=_time(data.get("queue_deadline")),
            queue=_queue(data.get("queue")),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"not a run status: {dict(data)!r:.300}") from exc


def parse_submitted(response: httpx.Response) -> Submitted:
    raise_for_error(response)
    if response.status_code != 202:
        raise ProtocolError(
            f"expected 202 Accepted, got {response.status_code}: is this an asyncgate gateway, "
            "and is the request not already a replay (Asyncgate-Run-Id)?"
        )
    data = _json_object(response)
    try:
        run_id, state = str(data["run_id"]), RunState(data.get("status", RunState.QUEUED))
    except (KeyError, ValueError) as exc:
        raise ProtocolError(f"not a 202 run body: {data!r:.300}") from exc
    replayed = response.headers.get(IDEMPOTENT_REPLAY, "").lower() == "true"
    return Submitted(run_id, state, response.headers.get(LOCATION), replayed)


def parse_status(response: httpx.Response) -> RunStatus:
    """The answer to status, cancel and re-send calls (200, or 202 for what is under way)."""
    raise_for_error(response)
    return run_status(_json_object(response))


def parse_result(response: httpx.Response) -> Result:
    """The upstream's response; APIError only when the answer is the gateway's own error.

    The result endpoint relays the upstream's answer as it was, 4xx and 5xx included, so an
    error status alone does not make it the gateway's: its error code must be one of its own.
    """
    if response.status_code >= 400:
        error = api_error(response)
        if error.code in RESULT_ERROR_CODES:
            raise error
    return Result(response.status_code, response.headers, response.content)


def parse_page(response: httpx.Response) -> RunPage:
    raise_for_error(response)
    data = _json_object(response)
    runs = data.get("runs")
    if not isinstance(runs, list):
        raise ProtocolError(f"not a page of runs: {data!r:.300}")
    cursor = data.get("next_cursor")
    return RunPage([run_status(item) for item in runs], str(cursor) if cursor else None)


def has_failed_answer(status: RunStatus) -> bool:
    """Whether the run failed with an upstream answer, which RunFailed should carry."""
    return status.state is RunState.FAILED and status.upstream_status is not None


def settle(run: Run | AsyncRun, status: RunStatus, answer: Result | None = None) -> RunStatus:
    """``status`` if the run succeeded; RunFailed (with the upstream's ``answer``) or RunCancelled if not.

    A run ``expired`` in the queue failed too (``error_code`` ``queue_deadline_exceeded``), never sent.
    """
    if status.state in (RunState.FAILED, RunState.EXPIRED):
        raise RunFailed(run, status, answer)
    if status.state is RunState.CANCELLED:
        raise RunCancelled(run, status)
    return status


# Pacing -----------------------------------------------------------------------------------------


class Backoff:
    """Capped exponential delays with jitter, so clients cut off together do not return together."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rand = rand

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        return delay * (0.5 + self._rand() / 2)

    def reset(self) -> None:
        self.failures = 0


class WaitPlan:
    """Follows a run to a final state by long polls, within an optional deadline.

    The loop that drives it::

        while (call := plan.next_call(clock())) is not None:
            try:
                response = send(call)
            except TransportError:                   # a RESUMABLE_ERRORS, wrapped
                plan.failed()
            else:
                if (status := plan.received(response, clock())) is not None:
                    return status
            sleep(plan.pause(clock()))
        # the deadline passed: plan.last is the last status seen
    """

    def __init__(
        self, endpoints: Endpoints, run_id: str, timeout: float | None, now: float, backoff: Backoff | None = None
    ) -> None:
        self.endpoints = endpoints
        self.run_id = run_id
        self.deadline = None if timeout is None else now + timeout
        #: The last status seen, for WaitTimeout.
        self.last: RunStatus | None = None
        self._backoff = backoff or Backoff()
        self._sent_at = now
        self._asked = 0
        self._pause = 0.0
        self._cap = LONG_POLL_MAX

    def _remaining(self, now: float) -> float:
        return float("inf") if self.deadline is None else self.deadline - now

    def next_call(self, now: float) -> Call | None:
        """The next long poll, or None once the deadline has passed."""
        remaining = self._remaining(now)
        if remaining <= 0:
            return None
        # Whole seconds, rounded down, so a poll never outlives the deadline; under one second
        # left, a plain status call.
        self._asked = int(min(self._cap, remaining))
        self._sent_at = now
        return status_call(self.endpoints, self.run_id, wait=self._asked)

    def received(self, response: httpx.Response, now: float) -> RunStatus | None:
        """The final status, or None to poll again after ``pause``; APIError for a refused call."""
        if response.status_code in RETRYABLE_STATUSES:
            self._pause = max(self._backoff.next(), retry_after(response, default=0))
            return None
        if response.status_code == 400 and self._asked > 1 and api_error(response).code == "invalid_parameter":
            # The gateway's limits.max_wait is below what was asked: ask for less from now on.
            self._cap, self._pause = max(1, self._asked // 2), 0.0
            return None
        status = parse_status(response)
        self._backoff.reset()
        self.last = status
        if status.is_final:
            return status
        early = now - self._sent_at < self._asked - EARLY_ANSWER_SLACK
        self._pause = retry_after(response) if early or not self._asked else 0.0
        return None

    def failed(self) -> None:
        """The call did not get an answer (connection refused, reset, timed out): back off, resume."""
        self._pause = self._backoff.next()

    def pause(self, now: float) -> float:
        """Seconds to wait before the next call, never past the deadline."""
        return max(0.0, min(self._pause, self._remaining(now)))


# Server-Sent Events -----------------------------------------------------------------------------


def run_event(sse: ServerSentEvent) -> RunEvent:
    """The RunEvent an SSE event carries; ProtocolError if its data is not a run event."""
    try:
        data = jsonlib.loads(sse.data)
        error = data.get("error")
        return RunEvent(
            id=sse.id,
            event=sse.event,
            at=_time(data.get("at")),
            attempt=_optional_int(data.get("attempt")),
            upstream_status=_optional_int(data.get("upstream_status")),
            error=ErrorDetail(str(error["code"]), str(error["message"])) if error else None,
            data=data,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"not a run event: {sse.data[:200]!r}") from exc


class EventsPlan:
    """Follows a run's events stream to its final state, reconnecting with Last-Event-ID.

    The loop that drives it::

        while not plan.done:
            try:
                with stream(plan.next_call()) as response:
                    if plan.opened(response):        # read the body first unless it is 200
                        for text in response.iter_text():
                            yield from plan.feed(text)
                            if plan.done:
                                break
            except STREAM_ERRORS:
                pass
            if not plan.done:
                sleep(plan.pause())
    """

    def __init__(self, endpoints: Endpoints, run_id: str, backoff: Backoff | None = None) -> None:
        self.endpoints = endpoints
        self.run_id = run_id
        self.done = False
        self.last_event_id: str | None = None
        self._decoder = SSEDecoder()
        self._backoff = backoff or Backoff()
        self._retry: float = 0.0
        self._hint: float = 0.0

    def next_call(self) -> Call:
        # A fresh decoder per connection: a half-received event of a broken one is dropped, and
        # Last-Event-ID asks the gateway to send it again.
        self._decoder = SSEDecoder()
        return events_call(self.endpoints, self.run_id, self.last_event_id)

    def opened(self, response: httpx.Response) -> bool:
        """True to read the stream; False to reconnect later; APIError if the gateway refused it."""
        self._hint = 0.0
        if response.status_code in RETRYABLE_STATUSES:
            self._hint = retry_after(response, default=0)
            return False
        raise_for_error(response)
        content_type = response.headers.get(CONTENT_TYPE, "")
        if response.status_code != 200 or not content_type.startswith("text/event-stream"):
            raise ProtocolError(f"expected an event stream, got {response.status_code} {content_type!r}")
        return True

    def feed(self, text: str) -> list[RunEvent]:
        """The run's events in ``text``; after a final state, nothing more."""
        events = []
        for sse in self._decoder.feed(text):
            if self.done:
                break
            event = run_event(sse)
            if sse.id is not None:
                self.last_event_id = sse.id
            self.done = event.is_final
            events.append(event)
        if self._decoder.retry is not None:
            self._retry = self._decoder.retry / 1000
        if events:
            self._backoff.reset()
        return events

    def pause(self) -> float:
        """Seconds to wait before reconnecting: backoff, never below what the server asked for."""
        return max(self._backoff.next(), self._retry, self._hint)
