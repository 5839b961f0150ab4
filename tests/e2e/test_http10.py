"""HTTP/1.0 clients under both of uvicorn's parsers: every response framed by a length or by the
connection's close, never chunked (HTTP/1.0 has no chunked coding, RFC 9112 6.1)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Gateway
from tests.support.rawhttp import RawConnection, RawResponse, request
from tests.support.upstream import pattern_bytes


@pytest.fixture
def store_kind() -> str:
    return "embedded"


@pytest.fixture
def gateway(parser_gateway: Gateway) -> Gateway:
    return parser_gateway


def get10(
    gateway: Gateway, target: str, method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None
) -> RawResponse:
    """One HTTP/1.0 exchange; the gateway must close the connection cleanly after it."""
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(method, target.encode(), headers or [], version=b"HTTP/1.0"))
        response = conn.read_response(method)
        assert response.values(b"transfer-encoding") == []
        assert response.framing in ("length", "close", "none")
        assert conn.closed_cleanly()
    return response


def test_streamed_pass_through_is_close_delimited(gateway: Gateway) -> None:
    # The upstream streams without a length (chunked to the gateway): an HTTP/1.0 client gets the
    # same bytes delimited by the close.
    response = get10(gateway, "/stream?size=200000&chunk=7000")
    assert response.status == 200
    assert response.framing == "close"
    assert response.body == pattern_bytes(200000)
    assert response.first(b"content-type") == b"application/octet-stream"


def test_pass_through_with_a_length_keeps_it(gateway: Gateway) -> None:
    response = get10(gateway, "/echo/ten")
    assert response.status == 200
    assert response.framing == "length"
    assert json.loads(response.body)["path"] == "/echo/ten"


def test_head_and_bodyless_statuses_have_no_body(gateway: Gateway) -> None:
    assert get10(gateway, "/stream?size=10", method=b"HEAD").body == b""
    response = get10(gateway, "/status/204")
    assert (response.status, response.body, response.framing) == (204, b"", "none")


def test_expect_100_continue_from_an_http10_client_is_ignored(gateway: Gateway) -> None:
    body = b'{"a": 1}'
    headers = [(b"Content-Length", str(len(body)).encode()), (b"Expect", b"100-continue")]
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"POST", b"/echo/e", headers, body, version=b"HTTP/1.0"))
        response = conn.read_response(b"POST")
        assert response.interim == []
        assert response.status == 200
        assert json.loads(response.body)["body"] == body.decode()
        assert conn.closed_cleanly()


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/runs", "/runs/nope", "/nothing"]
)
def test_gateway_api_answers_http10_with_a_length(gateway: Gateway, path: str) -> None:
    response = get10(gateway, gateway.prefix + path)
    assert response.framing == "length"
    assert response.status in (200, 404)


def test_event_stream_is_close_delimited_for_http10(gateway: Gateway) -> None:
    submitted = gateway.client.post("/echo/sse?async=true", content=b"{}")
    assert submitted.status_code == 202
    run_id = submitted.json()["run_id"]
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    response = get10(gateway, f"{gateway.prefix}/runs/{run_id}/events")
    assert response.status == 200
    assert response.framing == "close"
    assert (
        response.first(
            b"content-type",
        )
        == b"text/event-stream; charset=utf-8"
    )
    assert response.body.startswith(b"retry: 1000\n\n")
    events = [line.split(b": ", 1)[1] for line in response.body.split(b"\n") if line.startswith(b"event: ")]
    assert events[0] == b"queued"
    assert events[-1] == b"succeeded"
    # The same stream over HTTP/1.1 is chunked, and carries the same events.
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"GET", f"{gateway.prefix}/runs/{run_id}/events".encode(), [(b"Host", b"x")]))
        chunked = conn.read_response()
        assert chunked.framing == "chunked"
        assert chunked.body == response.body
        assert conn.still_serves(f"{gateway.prefix}/healthz".encode())
