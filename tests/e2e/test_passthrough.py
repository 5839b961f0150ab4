"""Synchronous pass-through over real sockets: what goes in comes out, streamed, minus hop-by-hop."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import GatewayFactory, Upstream
from tests.support.redis_server import free_port
from tests.support.upstream import pattern_bytes


@pytest.fixture
def store_kind() -> str:
    # The pass-through never touches the store; one kind is enough.
    return "embedded"


def header_values(call: dict[str, object], name: str) -> list[str]:
    headers = call["headers"]
    assert isinstance(headers, list)
    return [v for k, v in headers if k == name]


def test_path_and_query_arrive_exactly_as_sent(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/echo/a%2Fb%20c/%7Euser?x=1&x=2&y=%20&z=a+b&empty=&flag")
    assert response.status_code == 200
    call = response.json()
    assert call["raw_path"] == "/echo/a%2Fb%20c/%7Euser"
    assert call["query"] == "x=1&x=2&y=%20&z=a+b&empty=&flag"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_and_bodies_pass_through(make_gateway: GatewayFactory, method: str) -> None:
    gateway = make_gateway()
    body = b'{"param": "hello world"}'
    response = gateway.client.request(method, "/echo", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    call = response.json()
    assert call["method"] == method
    assert call["body"] == body.decode()
    assert header_values(call, "content-type") == ["application/json"]
    assert header_values(call, "content-length") == [str(len(body))]


def test_status_codes_and_bodies_come_back_unchanged(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/status/418")
    assert response.status_code == 418
    assert response.json() == {"status": 418}
    assert gateway.client.get("/status/204").status_code == 204


def test_head_request(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.head("/echo")
    assert response.status_code == 200
    assert response.content == b""


def test_hop_by_hop_request_headers_are_removed(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway()
    headers = {
        "Connection": "keep-alive, X-Private",
        "X-Private": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
    }
    response = gateway.client.get("/echo", headers=headers)
    call = response.json()
    names = {k for k, _ in call["headers"]}
    for hop in ("x-private", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"):
        assert hop not in names
    assert header_values(call, "x-end-to-end") == ["kept"]


def test_hop_by_hop_response_headers_are_removed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/hop")
    assert response.status_code == 200
    assert response.content == b"hop"
    assert "x-secret-hop" not in response.headers
    assert "keep-alive" not in response.headers


def test_forwarding_headers_are_set_and_appended(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get(
        "/echo", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.example", "Host": "api.example"}
    )
    call = response.json()
    assert header_values(call, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header_values(call, "x-forwarded-proto") == ["http"]
    assert header_values(call, "x-forwarded-host") == ["api.example"]
    assert header_values(call, "host") == [f"127.0.0.1:{gateway.config.upstream.rsplit(':', 1)[1]}"]


def test_repeated_response_headers_are_kept(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.headers["x-custom"] == "kept"


def test_streamed_download_is_byte_for_byte(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    size = 8 * 1024 * 1024 + 7
    digest = hashlib.sha256()
    received = 0
    with gateway.client.stream("GET", f"/stream?size={size}") as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_large_upload_is_streamed_not_buffered(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    chunk = os.urandom(1024 * 1024)
    count = 256  # 256 MiB: buffering it anywhere would show in the process's peak RSS

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(chunk)
    before = _max_rss_mib()
    response = gateway.client.post("/upload", content=body(), headers={"Content-Length": str(count * len(chunk))})
    assert response.status_code == 200
    assert response.json() == {"size": count * len(chunk), "sha256": digest.hexdigest()}
    assert _max_rss_mib() - before < 100


def test_unreachable_upstream_is_502_with_json(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"upstream": f"http://127.0.0.1:{free_port()}"})
    response = gateway.client.get("/echo")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert response.headers["content-type"] == "application/json"


def test_slow_upstream_is_504_with_json(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"proxy.read_timeout": 0.3})
    response = gateway.client.get("/sleep?seconds=5")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_async_false_stays_synchronous_and_untouched(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/echo?async=false&x=1")
    assert response.status_code == 200
    assert response.json()["query"] == "async=false&x=1"


def test_webhook_without_async_is_refused(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway()
    before = len(upstream.calls.all())
    response = gateway.client.post("/echo?webhookEndpoint=http%3A%2F%2Fexample.com%2Fhook", content=b"x")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_requires_async"
    assert len(upstream.calls.all()) == before


def test_invalid_async_flag_is_refused(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway()
    before = len(upstream.calls.all())
    response = gateway.client.post("/echo?async=maybe", content=b"x")
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "invalid_parameter", "message": "async must be true or false, got 'maybe'"}
    }
    assert len(upstream.calls.all()) == before


def test_unknown_gateway_path_is_json_404(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    response = gateway.client.get(f"{gateway.prefix}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_client_with_httpx_sees_no_transfer_encoding_artifacts(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    with httpx.Client(base_url=gateway.url, trust_env=False) as client:
        response = client.get("/stream?size=1000&chunk=100")
    assert response.content == pattern_bytes(1000)


# OPTIONS * is relayed as it is (tests/e2e/test_conformance.py).
@pytest.mark.parametrize("target", [b"http://evil.example/x", b"evil.example:443", b"*"])
def test_targets_that_are_not_paths_are_400_even_on_a_plain_server(
    make_gateway: GatewayFactory, upstream: Upstream, target: bytes
) -> None:
    # Plain uvicorn (h11), without asyncgate's hardened protocol: the app refuses on its own.
    gateway = make_gateway(http="h11")
    before = len(upstream.calls.all())
    method = b"CONNECT" if target == b"evil.example:443" else b"GET"
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5) as sock:
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    assert b'"invalid_target"' in reply
    assert len(upstream.calls.all()) == before
