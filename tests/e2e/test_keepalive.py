"""After every exchange the client's connection serves another request, or was closed cleanly.

Under both of uvicorn's parsers, against an upstream on raw sockets that sends exact bytes.
tests/e2e/test_conformance.py covers the same ground exchange by exchange; these are the cases
that once left a connection unusable, each named for what broke it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator

import pytest

from asyncgate.config import load
from asyncgate.server import protocol_class, uvicorn_options
from tests.e2e.conftest import Gateway
from tests.support.rawhttp import Broken, RawConnection, request
from tests.support.rawupstream import RawUpstream, Script, Step, answer

SCRIPTS = {
    "304-length": answer(b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n'),
    "204-length": answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    "early-413": answer(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
        read_body=False,
        then="close",
    ),
    "reset-mid-body": Script((Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf"),), then="reset"),
}


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream(SCRIPTS)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def gateway(request: pytest.FixtureRequest, raw_upstream: RawUpstream) -> Iterator[Gateway]:
    overrides = {"upstream": raw_upstream.url, "store.data_dir": tempfile.mkdtemp(), "access.mode": "open"}
    config = load(None, environ={}, overrides=overrides)
    server = Gateway(config, **{**uvicorn_options(config), "http": protocol_class(request.param, 2.0)})
    yield server
    server.stop()


def test_304_with_content_length_passes_and_the_connection_serves_on(gateway: Gateway) -> None:
    # RFC 9110 8.6: a 304 may give the selected representation's length; no body follows it.
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"GET", b"/s/304-length", [(b"Host", b"x"), (b"If-None-Match", b'"v1"')]))
        response = conn.read_response()
        assert (response.status, response.body, response.framing) == (304, b"", "none")
        assert response.first(b"content-length") == b"5"
        assert response.first(b"etag") == b'"v1"'
        assert conn.still_serves()


def test_204_with_content_length_sends_no_body(gateway: Gateway) -> None:
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"GET", b"/s/204-length", [(b"Host", b"x")]))
        response = conn.read_response()
        assert (response.status, response.body) == (204, b"")
        assert conn.still_serves()


def test_upstream_answering_before_the_body_keeps_the_client_connection(gateway: Gateway) -> None:
    body = b"x" * 300_000
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"POST", b"/s/early-413", [(b"Host", b"x"), (b"Content-Length", b"300000")], body))
        response = conn.read_response(b"POST")
        assert (response.status, response.body) == (413, b"big")
        assert response.values(b"connection") == []  # the upstream's close is its own hop's
        assert conn.still_serves()


def test_expect_continue_refused_by_the_gateway_closes_the_connection(gateway: Gateway) -> None:
    # The gateway's own API answers 405 without asking for the body: the client never got
    # 100 Continue, so its next bytes could be the body or a request. The connection ends.
    head = [(b"Host", b"x"), (b"Content-Length", b"10"), (b"Expect", b"100-continue")]
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"POST", gateway.prefix.encode() + b"/healthz", head))
        response = conn.await_continue(b"POST")
        assert response is not None
        assert response.status == 405
        assert response.interim == []
        assert response.values(b"connection") == [b"close"]
        assert conn.closed_cleanly()


def test_expect_continue_accepted_gets_100_then_the_answer(gateway: Gateway, raw_upstream: RawUpstream) -> None:
    head = [(b"Host", b"x"), (b"Content-Length", b"10"), (b"Expect", b"100-continue")]
    with RawConnection(gateway.server.port) as conn:
        marker = uuid.uuid4().hex.encode()
        conn.send(request(b"POST", b"/s/none/" + marker, head))
        interim = conn.await_continue(b"POST")
        assert interim is not None and interim.status == 100
        conn.send(b"0123456789")
        response = conn.read_response(b"POST")
        assert (response.status, response.body) == (200, b"ok")
        assert conn.still_serves()
    (received,) = raw_upstream.requests_to(marker)
    assert received.body == b"0123456789"


def test_upstream_reset_mid_body_closes_the_client_connection(gateway: Gateway) -> None:
    # The status line is gone already: cutting the connection is the only honest signal left.
    with RawConnection(gateway.server.port) as conn:
        conn.send(request(b"GET", b"/s/reset-mid-body", [(b"Host", b"x")]))
        with pytest.raises(Broken, match="96 bytes short"):
            conn.read_response()
        assert conn.eof
    with RawConnection(gateway.server.port) as conn:
        assert conn.still_serves()
