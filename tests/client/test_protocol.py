"""The protocol without I/O: calls built, answers parsed, SSE decoded, waits and reconnects paced."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn

from asyncgate.client import APIError, AsyncClient, Client, ProtocolError, RunCancelled, RunFailed, RunState, errors
from asyncgate.client import _protocol as protocol
from asyncgate.client._models import ErrorDetail, Result
from asyncgate.client._protocol import Backoff, Call, Endpoints, EventsPlan, WaitPlan
from asyncgate.client._sse import ServerSentEvent, SSEDecoder

ENDPOINTS = Endpoints("/_asyncgate")

STATUS: dict[str, Any] = {
    "run_id": "r1",
    "status": "failed",
    "created_at": "2026-11-23T10:03:00.120Z",
    "started_at": "2026-11-23T10:03:00.125Z",
    "finished_at": "2026-11-23T10:05:41.002Z",
    "method": "POST",
    "path": "/predict",
    "upstream_status": 500,
    "error": {"code": "upstream_error", "message": "the upstream answered 500"},
    "attempt": 1,
    "webhook": {
        "url": "https://hooks.example.com/done?token=***",
        "state": "pending",
        "attempts": 1,
        "last_status": 503,
        "last_error": None,
        "next_attempt_at": "2026-11-23T10:05:46.002Z",
    },
    "urls": {
        "status": "/_asyncgate/runs/r1",
        "result": "/_asyncgate/runs/r1/result",
        "events": "/_asyncgate/runs/r1/events",
        "cancel": "/_asyncgate/runs/r1",
    },
    "route": "predict",
}


def response(status: int = 200, json: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json=json, headers=headers, **kw)


def running(**changes: Any) -> dict[str, Any]:
    return {**STATUS, "status": "running", "error": None, "upstream_status": None, "finished_at": None, **changes}


@pytest.fixture
def client() -> Iterator[Client]:
    with Client("http://gateway.invalid") as sdk:
        yield sdk


# Building calls ---------------------------------------------------------------------------------


def test_submit_call_asks_for_async_with_the_prefer_header_and_the_options() -> None:
    call = protocol.submit_call(
        "post",
        "/predict?x=1",
        json={"param": "é"},
        params={"y": 2, "flag": True},
        headers=[("X-Trace", "t1"), ("Prefer", "return=minimal")],
        webhook="https://hooks.example.com/done",
        idempotency_key="order-123",
        timeout=90,
    )
    assert call == Call(
        method="POST",
        url="/predict?x=1",
        params=(("y", "2"), ("flag", "true")),
        headers=(
            ("X-Trace", "t1"),
            ("Prefer", "return=minimal"),
            ("Content-Type", "application/json"),
            ("Prefer", "respond-async"),
            ("Asyncgate-Webhook", "https://hooks.example.com/done"),
            ("Idempotency-Key", "order-123"),
            ("Asyncgate-Timeout", "90"),
        ),
        content='{"param":"é"}'.encode(),
    )


def test_submit_call_keeps_the_callers_content_type_and_raw_content() -> None:
    call = protocol.submit_call("PUT", "/x", json=[1], headers={"content-type": "application/vnd.x+json"})
    assert [h for h in call.headers if h[0].lower() == "content-type"] == [("content-type", "application/vnd.x+json")]
    assert protocol.submit_call("PUT", "/x", content="text").content == b"text"
    assert protocol.submit_call("GET", "/x").content is None
    assert dict(protocol.submit_call("GET", "/x", timeout=1.5).headers)["Asyncgate-Timeout"] == "1.5"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"path": "predict"}, ValueError),
        ({"json": {}, "content": b""}, TypeError),
        ({"timeout": 0}, ValueError),
    ],
)
def test_submit_call_refuses_what_cannot_be_sent(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        protocol.submit_call("GET", **{"path": "/x", **kwargs})


def test_endpoints_normalise_the_prefix_and_quote_run_ids() -> None:
    assert Endpoints("/ops/gate/").run("a/b c") == "/ops/gate/runs/a%2Fb%20c"
    assert Endpoints().runs == "/_asyncgate/runs"
    with pytest.raises(ValueError, match="must start with /"):
        Endpoints("_asyncgate")


def test_api_calls() -> None:
    assert protocol.status_call(ENDPOINTS, "r1") == Call("GET", "/_asyncgate/runs/r1")
    assert protocol.status_call(ENDPOINTS, "r1", wait=20) == Call(
        "GET", "/_asyncgate/runs/r1", params=(("wait", "20"),), min_read_timeout=30.0
    )
    assert protocol.result_call(ENDPOINTS, "r1") == Call("GET", "/_asyncgate/runs/r1/result")
    assert protocol.cancel_call(ENDPOINTS, "r1") == Call("DELETE", "/_asyncgate/runs/r1")
    assert protocol.resend_webhook_call(ENDPOINTS, "r1") == Call("POST", "/_asyncgate/runs/r1/webhook")
    assert protocol.resend_webhook_call(ENDPOINTS, "r1", "https://h/x") == Call(
        "POST", "/_asyncgate/runs/r1/webhook", headers=(("Asyncgate-Webhook", "https://h/x"),)
    )
    assert protocol.list_call(ENDPOINTS, "running", 10, "c2").params == (
        ("status", "running"),
        ("limit", "10"),
        ("cursor", "c2"),
    )
    assert protocol.list_call(ENDPOINTS).params == ()
    # A limit of 0 goes to the gateway, which refuses it, rather than being dropped without a word.
    assert protocol.list_call(ENDPOINTS, limit=0).params == (("limit", "0"),)
    events = protocol.events_call(ENDPOINTS, "r1", last_event_id="7")
    assert events.url == "/_asyncgate/runs/r1/events"
    assert ("Last-Event-ID", "7") in events.headers and ("Accept", "text/event-stream") in events.headers


def test_timeout_for_raises_the_read_timeout_for_long_polls_only() -> None:
    base = httpx.Timeout(30.0, connect=5.0)
    assert protocol.timeout_for(base, Call("GET", "/")) is base
    raised = protocol.timeout_for(base, Call("GET", "/", min_read_timeout=40.0))
    assert (raised.connect, raised.read, raised.write, raised.pool) == (5.0, 40.0, 30.0, 30.0)
    unlimited = httpx.Timeout(None)
    assert protocol.timeout_for(unlimited, Call("GET", "/", min_read_timeout=40.0)) is unlimited


# Parsing answers --------------------------------------------------------------------------------


def test_parse_submitted() -> None:
    accepted = response(202, {"run_id": "r1", "status": "queued"}, {"Location": "/_asyncgate/runs/r1"})
    submitted = protocol.parse_submitted(accepted)
    assert (submitted.run_id, submitted.state, submitted.location, submitted.replayed) == (
        "r1",
        RunState.QUEUED,
        "/_asyncgate/runs/r1",
        False,
    )
    replay = response(202, {"run_id": "r1", "status": "running"}, {"Asyncgate-Idempotent-Replay": "true"})
    assert protocol.parse_submitted(replay).replayed is True


def test_parse_submitted_refuses_what_is_not_a_202() -> None:
    with pytest.raises(ProtocolError, match="expected 202"):
        protocol.parse_submitted(response(200, {"hello": "upstream"}))
    with pytest.raises(ProtocolError, match="not a 202 run body"):
        protocol.parse_submitted(response(202, {"id": "r1"}))
    with pytest.raises(APIError) as caught:
        protocol.parse_submitted(
            response(429, {"error": {"code": "queue_full", "message": "later"}}, {"Retry-After": "5"})
        )
    assert (caught.value.status_code, caught.value.code, caught.value.message, caught.value.retry_after) == (
        429,
        "queue_full",
        "later",
        5.0,
    )


def test_api_error_from_a_body_that_is_not_the_gateways() -> None:
    error = protocol.api_error(response(502, content=b"<html>Bad Gateway</html>"))
    assert (error.status_code, error.code, error.message, error.retry_after) == (502, "http_502", "Bad Gateway", None)
    assert str(error) == "502 http_502: Bad Gateway"


def test_run_status_parses_every_field() -> None:
    status = protocol.parse_status(response(200, STATUS))
    assert status.run_id == "r1" and status.state is RunState.FAILED and status.is_final
    assert status.created_at == datetime(2026, 11, 23, 10, 3, 0, 120000, tzinfo=UTC)
    assert status.error == ErrorDetail("upstream_error", "the upstream answered 500")
    assert (status.method, status.path, status.upstream_status, status.attempt) == ("POST", "/predict", 500, 1)
    assert status.webhook is not None
    assert (status.webhook.state, status.webhook.attempts, status.webhook.last_status) == ("pending", 1, 503)
    assert status.urls == STATUS["urls"]
    assert status.route == "predict"
    assert status.raw == STATUS


def test_run_status_tolerates_a_minimal_body_and_refuses_a_wrong_one() -> None:
    status = protocol.run_status({"run_id": "r1", "status": "queued"})
    assert (status.state, status.created_at, status.error, status.webhook, status.route) == (
        RunState.QUEUED,
        None,
        None,
        None,
        None,
    )
    assert status.urls == {}
    for bad in ({"run_id": "r1"}, {"run_id": "r1", "status": "paused"}, {**STATUS, "created_at": "yesterday"}):
        with pytest.raises(ProtocolError, match="not a run status"):
            protocol.run_status(bad)
    with pytest.raises(ProtocolError, match="expected JSON"):
        protocol.parse_status(response(200, content=b"<html>"))


def test_parse_result_keeps_the_upstreams_errors_and_raises_the_gateways() -> None:
    upstream = response(404, {"error": {"code": "no_such_model", "message": "unknown"}}, {"X-Custom": "kept"})
    result = protocol.parse_result(upstream)
    assert (result.status_code, result.headers["x-custom"], result.json()) == (
        404,
        "kept",
        {"error": {"code": "no_such_model", "message": "unknown"}},
    )
    assert protocol.parse_result(response(200, content=b"caf\xc3\xa9")).text == "café"
    for code in ("run_not_finished", "no_upstream_response", "run_not_found"):
        with pytest.raises(APIError) as caught:
            protocol.parse_result(response(409, {"error": {"code": code, "message": "m"}}))
        assert caught.value.code == code


def test_parse_page() -> None:
    page = protocol.parse_page(response(200, {"runs": [STATUS, running(run_id="r2")], "next_cursor": "c2"}))
    assert [run.run_id for run in page.runs] == ["r1", "r2"] and page.next_cursor == "c2"
    assert protocol.parse_page(response(200, {"runs": [], "next_cursor": None})).next_cursor is None
    with pytest.raises(ProtocolError):
        protocol.parse_page(response(200, {"items": []}))


def test_settle_raises_with_the_run_attached(client: Client) -> None:
    run = client.attach("r1")
    with pytest.raises(RunFailed) as failed:
        protocol.settle(run, protocol.run_status(STATUS))
    assert (failed.value.run, failed.value.upstream_status, failed.value.error_code) == (run, 500, "upstream_error")
    assert failed.value.error_message == "the upstream answered 500"
    assert str(failed.value) == "run r1 failed: upstream_error, upstream status 500: the upstream answered 500"
    cancelled = protocol.run_status({**STATUS, "status": "cancelled", "upstream_status": None})
    with pytest.raises(RunCancelled, match="run r1 was cancelled"):
        protocol.settle(run, cancelled)
    succeeded = protocol.run_status({**STATUS, "status": "succeeded", "error": None})
    assert protocol.settle(run, succeeded) is succeeded
    expired = {"code": "queue_deadline_exceeded", "message": "the run was still queued at its queue deadline"}
    late = protocol.run_status({**STATUS, "status": "expired", "upstream_status": None, "error": expired})
    with pytest.raises(RunFailed) as never_sent:
        protocol.settle(run, late)
    assert (never_sent.value.upstream_status, never_sent.value.error_code) == (None, "queue_deadline_exceeded")


def test_run_failed_carries_the_upstreams_status_headers_and_the_start_of_its_body(client: Client) -> None:
    run = client.attach("r1")
    body = b"Traceback (most recent call last):\n  model.py line 3\nValueError: bad input\n" + b"x" * 10_000
    answer = Result(500, httpx.Headers({"content-type": "text/plain", "x-model": "m1"}), body)
    with pytest.raises(RunFailed) as failed:
        protocol.settle(run, protocol.run_status(STATUS), answer)
    error = failed.value
    assert error.upstream_status == 500
    assert error.upstream_headers is not None and error.upstream_headers["x-model"] == "m1"
    assert error.upstream_body == body[: errors.BODY_PREVIEW]
    assert str(error).startswith(
        "run r1 failed: upstream_error, upstream status 500: the upstream answered 500: 'Traceback (most recent"
    )
    assert len(str(error)) < 400
    with pytest.raises(RunFailed) as bare:
        protocol.settle(run, protocol.run_status(STATUS))
    assert (bare.value.upstream_headers, bare.value.upstream_body) == (None, b"")


@pytest.mark.parametrize(
    ("args", "environ", "url", "headers"),
    [
        ((None, None, None), {}, "http://127.0.0.1:8080", []),
        (
            (None, None, None),
            {"ASYNCGATE_URL": "http://gw:1", "ASYNCGATE_TOKEN": "t1"},
            "http://gw:1",
            [("Authorization", "Bearer t1")],
        ),
        (
            ("http://arg:2", "t2", None),
            {"ASYNCGATE_URL": "http://gw:1", "ASYNCGATE_TOKEN": "t1"},
            "http://arg:2",
            [("Authorization", "Bearer t2")],
        ),
        (
            (None, None, {"authorization": "Basic x"}),
            {"ASYNCGATE_TOKEN": "t1"},
            "http://127.0.0.1:8080",
            [("authorization", "Basic x")],
        ),
        ((None, "", None), {"ASYNCGATE_URL": "", "ASYNCGATE_TOKEN": "t1"}, "http://127.0.0.1:8080", []),
    ],
)
def test_connection_takes_arguments_then_the_environment(
    args: tuple[Any, Any, Any], environ: dict[str, str], url: str, headers: list[tuple[str, str]]
) -> None:
    assert protocol.connection(*args, environ=environ) == (url, headers)


def test_clients_read_the_environment_when_not_told() -> None:
    environ = {"ASYNCGATE_URL": "http://gw.invalid:81", "ASYNCGATE_TOKEN": "t1"}
    with Client(environ=environ) as sdk:
        request = sdk._request(protocol.status_call(sdk.endpoints, "r1"))
    assert str(request.url) == "http://gw.invalid:81/_asyncgate/runs/r1"
    assert request.headers["authorization"] == "Bearer t1"


def test_retry_after() -> None:
    assert protocol.retry_after(response(200, headers={"Retry-After": "3"})) == 3.0
    assert protocol.retry_after(response(200)) == protocol.DEFAULT_RETRY_AFTER
    assert protocol.retry_after(response(200, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}), 2) == 2


# Pacing -----------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rand=lambda: 1.0)
    assert [round(backoff.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1
    low = Backoff(base=0.1, cap=1.0, rand=lambda: 0.0)
    assert low.next() == 0.05


def test_wait_plan_long_polls_until_the_run_is_final() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", None, now=0.0)
    call = plan.next_call(0.0)
    assert call is not None and call.params == (("wait", str(protocol.LONG_POLL_MAX)),)
    # Answered after the whole wait, still running: ask again at once.
    assert plan.received(response(200, running(), {"Retry-After": "1"}), now=30.0) is None
    assert plan.pause(30.0) == 0.0
    assert plan.last is not None and plan.last.state is RunState.RUNNING
    plan.next_call(30.0)
    final = plan.received(response(200, STATUS), now=31.0)
    assert final is not None and final.state is RunState.FAILED


def test_wait_plan_keeps_within_the_deadline() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", timeout=2.5, now=100.0)
    first = plan.next_call(100.0)
    assert first is not None and first.params == (("wait", "2"),)
    assert plan.received(response(200, running()), now=102.0) is None
    # Under a second left: a plain status call, then a pause to the deadline, then nothing.
    second = plan.next_call(102.0)
    assert second == protocol.status_call(ENDPOINTS, "r1")
    assert plan.received(response(200, running(), {"Retry-After": "1"}), now=102.01) is None
    assert plan.pause(102.01) == pytest.approx(0.49)
    assert plan.next_call(102.5) is None


def test_wait_plan_paces_by_retry_after_when_the_gateway_does_not_hold_the_answer() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", None, now=0.0)
    plan.next_call(0.0)
    assert plan.received(response(200, running(), {"Retry-After": "2"}), now=0.05) is None
    assert plan.pause(0.05) == 2.0


def test_wait_plan_backs_off_on_lost_connections_and_busy_gateways() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", None, now=0.0, backoff=Backoff(base=0.1, cap=5.0, rand=lambda: 1.0))
    pauses = []
    for _ in range(3):
        plan.next_call(0.0)
        plan.failed()
        pauses.append(plan.pause(0.0))
    plan.next_call(0.0)
    assert plan.received(response(503, {"error": {"code": "store_unavailable", "message": "m"}}), now=0.0) is None
    pauses.append(plan.pause(0.0))
    plan.next_call(0.0)
    assert plan.received(response(502, content=b"", headers={"Retry-After": "3"}), now=0.0) is None
    pauses.append(plan.pause(0.0))
    assert [round(p, 3) for p in pauses] == [0.1, 0.2, 0.4, 0.8, 3.0]
    # A good answer resets the backoff.
    plan.next_call(0.0)
    plan.received(response(200, running()), now=protocol.LONG_POLL_MAX)
    plan.failed()
    assert plan.pause(0.0) == 0.1


def test_wait_plan_asks_for_less_when_the_gateway_caps_the_wait_lower() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", None, now=0.0)
    plan.next_call(0.0)
    refused = response(400, {"error": {"code": "invalid_parameter", "message": "wait must be from 0 to 10"}})
    assert plan.received(refused, now=0.0) is None and plan.pause(0.0) == 0.0
    asked = []
    for _ in range(3):
        call = plan.next_call(0.0)
        assert call is not None
        asked.append(dict(call.params)["wait"])
        plan.received(refused, now=0.0)
    assert asked == ["15", "7", "3"]


def test_wait_plan_raises_a_refusal_that_waiting_cannot_fix() -> None:
    plan = WaitPlan(ENDPOINTS, "r1", None, now=0.0)
    plan.next_call(0.0)
    with pytest.raises(APIError) as caught:
        plan.received(response(404, {"error": {"code": "run_not_found", "message": "no run with this id"}}), now=0.0)
    assert caught.value.code == "run_not_found"


# Server-Sent Events -----------------------------------------------------------------------------

STREAM = (
    "\ufeffretry: 1000\n\n"
    ": keep-alive\r\n\r\n"
    'id: 1\nevent: queued\ndata: {"event":"queued","at":"2026-11-23T10:03:00.120Z","attempt":0}\n\n'
    'id: 2\r\nevent: running\r\ndata: {"event":"running",\r\ndata: "attempt":1}\r\n\r\n'
    "data:no space\rdata:  two spaces\r\r"
    "id\n\n"
    "event: lonely\nid: 9\n\n"
    "id: bad\0id\ndata: x\n\n"
)


def test_sse_decoder_follows_the_whatwg_grammar() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(STREAM)
    assert events == [
        ServerSentEvent("queued", '{"event":"queued","at":"2026-11-23T10:03:00.120Z","attempt":0}', "1"),
        ServerSentEvent("running", '{"event":"running",\n"attempt":1}', "2"),
        ServerSentEvent("message", "no space\n two spaces", "2"),
        # "id" with no value resets the last event id; an event without data is not dispatched,
        # though its id counts; an id holding NUL is ignored.
        ServerSentEvent("message", "x", "9"),
    ]
    assert decoder.retry == 1000
    assert decoder.last_event_id == "9"


def chunkings(text: str) -> Iterator[list[str]]:
    """``text`` cut in two and in three at every pair of places."""
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        yield [text[:i], text[i:j], text[j:]]


def test_sse_decoder_gives_the_same_events_however_the_stream_is_cut() -> None:
    expected = SSEDecoder().feed(STREAM)
    for chunks in chunkings(STREAM):
        decoder = SSEDecoder()
        assert [event for chunk in chunks for event in decoder.feed(chunk)] == expected, chunks


def test_sse_decoder_holds_an_unfinished_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("id: 1\nevent: queued\ndata: {}\n") == []
    assert decoder.last_event_id is None
    assert decoder.feed("\n") == [ServerSentEvent("queued", "{}", "1")]


def sse(event_id: str, event: str, **data: Any) -> str:
    body = httpx.Response(200, json={"event": event, **data}).text
    return f"id: {event_id}\nevent: {event}\ndata: {body}\n\n"


def test_events_plan_follows_to_the_final_state_and_resumes_where_it_left() -> None:
    plan = EventsPlan(ENDPOINTS, "r1", backoff=Backoff(rand=lambda: 1.0))
    assert ("Last-Event-ID", "1") not in plan.next_call().headers
    assert plan.opened(response(200, content=b"", headers={"Content-Type": "text/event-stream; charset=utf-8"}))
    events = plan.feed("retry: 2000\n\n" + sse("1-0", "queued", attempt=0) + sse("1-1", "running", attempt=1)[:20])
    assert [(e.id, e.event, e.state, e.attempt) for e in events] == [("1-0", "queued", RunState.QUEUED, 0)]
    assert not plan.done
    # The connection broke mid-event: reconnect after the server's retry, from the last whole event.
    assert plan.pause() == 2.0
    assert ("Last-Event-ID", "1-0") in plan.next_call().headers
    final = sse("1-2", "failed", upstream_status=500, error={"code": "upstream_error", "message": "m"})
    events = plan.feed(sse("1-1", "running", attempt=1) + sse("w", "webhook", webhook={}) + final + sse("x", "late"))
    assert [e.event for e in events] == ["running", "webhook", "failed"]
    assert events[1].state is None and not events[1].is_final
    assert events[2].is_final and events[2].upstream_status == 500
    assert events[2].error == ErrorDetail("upstream_error", "m")
    assert plan.done and plan.last_event_id == "1-2"


def test_events_plan_opening_answers() -> None:
    plan = EventsPlan(ENDPOINTS, "r1", backoff=Backoff(rand=lambda: 1.0))
    assert plan.opened(response(503, content=b"", headers={"Retry-After": "4"})) is False
    assert plan.pause() == 4.0
    with pytest.raises(APIError) as caught:
        plan.opened(response(404, {"error": {"code": "run_not_found", "message": "m"}}))
    assert caught.value.code == "run_not_found"
    with pytest.raises(ProtocolError, match="expected an event stream"):
        plan.opened(response(200, content=b"<html>", headers={"Content-Type": "text/html"}))
    with pytest.raises(ProtocolError, match="not a run event"):
        plan.feed("event: queued\ndata: [1]\n\n")


def test_idle_connections_are_dropped_before_the_gateway_closes_them() -> None:
    """A pooled connection reused as uvicorn closes it is reset mid-request; the SDK never reuses one that old."""
    server_idle = uvicorn.Config(app="unused:app").timeout_keep_alive
    with Client("http://127.0.0.1:9") as client:
        assert client._http._transport._pool._keepalive_expiry < server_idle  # type: ignore[attr-defined]
    aclient = AsyncClient("http://127.0.0.1:9")
    assert aclient._http._transport._pool._keepalive_expiry < server_idle  # type: ignore[attr-defined]
