"""WebSockets through the gateway, under both of uvicorn's parsers: a real client (the
``websockets`` library) and a real server (tests/support/wsupstream.py), spliced by the gateway."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as connect_sync
from websockets.typing import Subprotocol

from asyncgate.config import load
from asyncgate.server import protocol_class, uvicorn_options
from asyncgate.websocket import WebSocketTunnel
from tests.e2e.conftest import Gateway
from tests.support.rawhttp import RawConnection, request
from tests.support.wait import wait_until
from tests.support.wsupstream import WebSocketUpstream

MAX_MESSAGE = 64 * 1024
#: The idle timeout of the gateway that tests it; the others' is long enough for a loaded machine.
IDLE = 1.0


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def gateway(request: pytest.FixtureRequest, ws_upstream: WebSocketUpstream) -> Iterator[Gateway]:
    overrides = {
        "upstream": ws_upstream.url,
        "store.data_dir": tempfile.mkdtemp(),
        "access.mode": "open",
        "proxy.websocket_max_message_bytes": MAX_MESSAGE,
        "proxy.websocket_idle_timeout": 60,
    }
    config = load(None, environ={}, overrides=overrides)
    server = Gateway(config, **{**uvicorn_options(config), "http": protocol_class(request.param)})
    yield server
    server.stop()


def ws_url(gateway: Gateway, path: str) -> str:
    return f"ws://127.0.0.1:{gateway.server.port}{path}"


def test_messages_echo_both_ways_text_and_binary(gateway: Gateway) -> None:
    with connect_sync(ws_url(gateway, "/echo")) as ws:
        for message in ("hello", b"\x00\xff" * 1000, "é" * 5000, b""):
            ws.send(message)
            assert ws.recv() == message


def test_subprotocol_extensions_and_headers_are_negotiated_end_to_end(gateway: Gateway) -> None:
    with connect_sync(
        ws_url(gateway, "/hello?x=1"),
        subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")],
        additional_headers={"X-Token": "abc"},
    ) as ws:
        seen = json.loads(ws.recv())
        # The client and the upstream agreed these between them, through the gateway.
        assert ws.subprotocol == seen["subprotocol"] == "chat.v2"
        assert [ext.name for ext in ws.protocol.extensions] == seen["extensions"] == ["permessage-deflate"]
        assert ws.response is not None and ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["path"] == "/hello?x=1"
    assert headers["x-token"] == "abc"
    assert headers["host"] == f"127.0.0.1:{gateway.config.upstream.rsplit(':', 1)[1]}"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gateway.server.port}"
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    assert "permessage-deflate" in headers["sec-websocket-extensions"]


def test_upstream_pings_reach_the_client_and_its_pong_comes_back(gateway: Gateway) -> None:
    with connect_sync(ws_url(gateway, "/ping")) as ws:
        assert ws.recv(timeout=5) == "pong after True"


def test_client_pings_reach_the_upstream(gateway: Gateway) -> None:
    with connect_sync(ws_url(gateway, "/echo")) as ws:
        assert ws.ping(b"p").wait(5)


@pytest.mark.parametrize("code", [1000, 1001, 4000, 4999])
def test_upstream_close_codes_and_reasons_reach_the_client(gateway: Gateway, code: int) -> None:
    with connect_sync(ws_url(gateway, f"/close/{code}")) as ws:
        ws.send("close now")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, "bye")


def test_client_close_code_reaches_the_upstream(gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    before = len(ws_upstream.ends("/echo"))
    with connect_sync(ws_url(gateway, "/echo")) as ws:
        ws.send("x")
        ws.recv()
        ws.close(4321, "done here")
    ends = wait_until(lambda: ws_upstream.ends("/echo")[before:], 5, message="the upstream's end")
    assert ends[-1] == {"path": "/echo", "code": 4321, "reason": "done here", "received": True}


def test_upstream_vanishing_mid_message_ends_the_client_connection(gateway: Gateway) -> None:
    with connect_sync(ws_url(gateway, "/vanish")) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is None  # no close frame: the connection just ended (1006)


def test_client_vanishing_mid_message_ends_the_upstream_connection(
    gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    before = len(ws_upstream.ends("/echo"))
    with connect_sync(ws_url(gateway, "/echo"), compression=None) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        ws.socket.sendall(b"\x82\xfe\x10\x00abcd" + b"y" * 50)  # a masked 4096-byte frame, cut short
        ws.socket.shutdown(socket.SHUT_RDWR)
    ends = wait_until(lambda: ws_upstream.ends("/echo")[before:], 5, message="the upstream's end")
    assert ends[-1]["code"] == 1006
    assert ends[-1]["received"] is False


def test_a_message_over_the_limit_closes_both_sides_with_1009(gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    before = len(ws_upstream.ends("/echo"))
    with connect_sync(ws_url(gateway, "/echo"), compression=None, max_size=None) as ws:
        ws.send(b"a" * MAX_MESSAGE)  # at the limit: relayed
        assert len(ws.recv()) == MAX_MESSAGE
        ws.send(b"a" * (MAX_MESSAGE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    ends = wait_until(lambda: ws_upstream.ends("/echo")[before:], 5, message="the upstream's end")
    assert ends[-1]["code"] == 1009


def test_an_upstream_message_over_the_limit_closes_with_1009(gateway: Gateway) -> None:
    with connect_sync(ws_url(gateway, f"/big/{MAX_MESSAGE + 1}"), compression=None, max_size=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_an_idle_connection_is_closed_with_1001(ws_upstream: WebSocketUpstream) -> None:
    overrides = {
        "upstream": ws_upstream.url,
        "store.data_dir": tempfile.mkdtemp(),
        "proxy.websocket_idle_timeout": IDLE,
    }
    config = load(None, environ={}, overrides=overrides)
    gateway = Gateway(config, **uvicorn_options(config))
    try:
        started = time.monotonic()
        with connect_sync(ws_url(gateway, "/echo")) as ws:
            ws.send("activity")
            assert ws.recv() == "activity"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=IDLE + 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert IDLE <= time.monotonic() - started < IDLE + 4
    finally:
        gateway.stop()


def test_upstream_refusal_comes_back_as_it_was(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect_sync(ws_url(gateway, "/refuse"))
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b'{"refused": true}'


@pytest.mark.parametrize("target", ["/echo?async=true", "/echo?webhookEndpoint=http%3A%2F%2Fh%2Fx&async=1"])
def test_an_async_websocket_is_refused_with_400_json(gateway: Gateway, target: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect_sync(ws_url(gateway, target))
    response = refused.value.response
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["error"]["code"] in ("websocket_not_async", "invalid_parameter")


def test_prefer_respond_async_on_a_websocket_is_refused(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect_sync(ws_url(gateway, "/echo"), additional_headers={"Prefer": "respond-async"})
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["error"]["code"] == "websocket_not_async"


def test_the_gateway_api_has_no_websocket(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect_sync(ws_url(gateway, f"{gateway.prefix}/runs"))
    assert refused.value.response.status_code == 404


def test_a_smuggling_shaped_upgrade_is_refused(gateway: Gateway) -> None:
    head = [
        (b"Host", b"x"),
        (b"Host", b"y"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"GET", b"/echo", head))
        response = conn.read_response()
        assert response.status == 400
        assert conn.closed_cleanly()


def test_unreachable_upstream_is_502(ws_upstream: WebSocketUpstream) -> None:
    config = load(None, environ={}, overrides={"upstream": "http://127.0.0.1:9", "store.data_dir": tempfile.mkdtemp()})
    gateway = Gateway(config, **uvicorn_options(config))
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect_sync(ws_url(gateway, "/echo"))
        assert refused.value.response.status_code == 502
    finally:
        gateway.stop()


def test_a_thousand_connections_echo_at_once(gateway: Gateway) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))

    async def one(index: int) -> bool:
        async with connect(ws_url(gateway, "/echo"), open_timeout=60, compression=None) as ws:
            for turn in range(3):
                await ws.send(f"{index}:{turn}")
                if await ws.recv() != f"{index}:{turn}":
                    return False
        return True

    async def all_of_them() -> list[bool]:
        return await asyncio.gather(*(one(i) for i in range(1000)))

    started = time.monotonic()
    assert all(asyncio.run(asyncio.wait_for(all_of_them(), 90)))
    assert time.monotonic() - started < 90


def test_stopping_the_gateway_closes_open_websockets_with_1001(ws_upstream: WebSocketUpstream) -> None:
    overrides = {"upstream": ws_upstream.url, "store.data_dir": tempfile.mkdtemp()}
    config = load(None, environ={}, overrides=overrides)
    gateway = Gateway(config, **uvicorn_options(config))
    with connect_sync(ws_url(gateway, "/echo")) as ws:
        ws.send("before")
        assert ws.recv() == "before"
        gateway.stop()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def tunnels(gateway: Gateway) -> list[WebSocketTunnel]:
    return [c for c in gateway.server.server.server_state.connections if isinstance(c, WebSocketTunnel)]


def upstream_paused(tunnel: WebSocketTunnel) -> bool:
    upstream = tunnel.upstream.transport if tunnel.upstream else None
    return upstream is not None and not upstream.is_reading()


def test_a_slow_client_slows_the_upstream_down(gateway: Gateway) -> None:
    count = 1024  # 64 MiB: more than every socket buffer on the way can hold
    with connect_sync(ws_url(gateway, f"/flood/{count}"), compression=None, max_size=None, max_queue=1) as ws:
        # The client reads nothing: the gateway stops reading the upstream rather than buffer.
        (tunnel,) = wait_until(lambda: [t for t in tunnels(gateway) if t.open], 5, message="the tunnel")
        wait_until(lambda: upstream_paused(tunnel), 10, message="paused")
        assert tunnel.client.get_write_buffer_size() < 1024 * 1024
        received = sum(len(ws.recv(timeout=10)) for _ in range(count))  # then everything arrives
    assert received == count * 65536


def test_a_slow_upstream_slows_the_client_down(gateway: Gateway) -> None:
    # The gateway reads nothing more from this client: its close waits for no answer.
    with connect_sync(ws_url(gateway, "/sink"), compression=None, close_timeout=0.5) as ws:
        (tunnel,) = wait_until(lambda: [t for t in tunnels(gateway) if t.open], 5, message="the tunnel")
        message = b"s" * 65536

        def flooded() -> bool:
            # The upstream reads nothing: the gateway stops reading the client rather than buffer.
            if tunnel.client.is_reading():
                ws.send(message)
                return False
            return True

        wait_until(flooded, 20, message="the client's connection paused")
        assert tunnel.upstream is not None and tunnel.upstream.transport is not None
        assert tunnel.upstream.transport.get_write_buffer_size() < 1024 * 1024


def test_a_route_that_is_always_async_refuses_websockets(ws_upstream: WebSocketUpstream) -> None:
    routes = [
        {"name": "batch", "path": "/batch/**", "async": "always"},
        {"name": "never", "path": "/echo", "async": "never"},
    ]
    overrides = {"upstream": ws_upstream.url, "store.data_dir": tempfile.mkdtemp(), "routes": routes}
    config = load(None, environ={}, overrides=overrides)
    gateway = Gateway(config, **uvicorn_options(config))
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect_sync(ws_url(gateway, "/batch/jobs"))
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body)["error"]["code"] == "websocket_not_async"
        with pytest.raises(InvalidStatus) as refused:
            connect_sync(ws_url(gateway, "/echo?async=true"))  # the route's own refusal
        assert json.loads(refused.value.response.body)["error"]["code"] == "async_not_allowed"
        with connect_sync(ws_url(gateway, "/echo")) as ws:
            ws.send("sync is fine here")
            assert ws.recv() == "sync is fine here"
    finally:
        gateway.stop()
