"""Following a run through a flaky path: scripted failures with respx, where real sockets cannot be scripted."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import respx

from asyncgate.client import AsyncClient, Client, RunState

BASE = "http://gateway.test"
BUSY = {"error": {"code": "store_unavailable", "message": "the run store is unavailable"}}
STATUS = {"run_id": "r1", "created_at": "2026-11-23T10:03:00.120Z", "method": "POST", "path": "/p", "attempt": 1}


def status(state: str, **extra: Any) -> httpx.Response:
    headers = {} if state in ("succeeded", "failed", "cancelled") else {"Retry-After": "0"}
    return httpx.Response(200, json={**STATUS, "status": state, **extra}, headers=headers)


def flaky_then_final() -> list[httpx.Response | Exception]:
    return [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.Response(503, json=BUSY, headers={"Retry-After": "0"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        status("running"),
        status("succeeded", upstream_status=200),
    ]


def test_wait_rides_out_refused_and_reset_connections_and_busy_gateways() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/_asyncgate/runs/r1").mock(side_effect=flaky_then_final())
        with Client(BASE, headers={"Authorization": "Bearer t"}) as client:
            final = client.attach("r1").wait(timeout=60)
    assert final.state is RunState.SUCCEEDED and final.upstream_status == 200
    assert route.call_count == 6
    assert all(call.request.url.params["wait"] == "30" for call in route.calls)
    assert all(call.request.headers["authorization"] == "Bearer t" for call in route.calls)


def test_async_wait_rides_out_the_same() -> None:
    async def wait() -> RunState:
        async with AsyncClient(BASE) as client:
            return (await client.attach("r1").wait(timeout=60)).state

    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/_asyncgate/runs/r1").mock(side_effect=flaky_then_final())
        assert asyncio.run(wait()) is RunState.SUCCEEDED
    assert route.call_count == 6


def event(event_id: str, name: str) -> bytes:
    return f'id: {event_id}\nevent: {name}\ndata: {{"event": "{name}", "attempt": 1}}\n\n'.encode()


class BrokenStream(httpx.SyncByteStream):
    """Sends ``chunks`` then fails as a reset connection does."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Any:
        yield from self.chunks
        raise httpx.ReadError("connection reset by peer")


def test_events_reconnect_with_last_event_id_after_a_reset_and_a_busy_gateway() -> None:
    sse = {"Content-Type": "text/event-stream"}
    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, headers=sse, stream=BrokenStream(b"retry: 10\n\n", event("1", "queued"), b"id: 2\nev")),
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json=BUSY),
        httpx.Response(200, headers=sse, content=event("2", "running") + b": keep-alive\n\n" + event("3", "succeeded")),
    ]
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/_asyncgate/runs/r1/events").mock(side_effect=answers)
        with Client(BASE) as client:
            events = list(client.attach("r1").events())
    assert [(e.id, e.event) for e in events] == [("1", "queued"), ("2", "running"), ("3", "succeeded")]
    sent = [call.request.headers.get("last-event-id") for call in route.calls]
    assert sent == [None, "1", "1", "1"]
