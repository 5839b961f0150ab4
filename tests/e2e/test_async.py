"""Async intake and execution over real sockets, on both stores."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.redis_server import free_port
from tests.support.upstream import pattern_bytes
from tests.support.wait import wait_until

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def submit(gateway: Gateway, path: str, body: bytes = b"", **kwargs: Any) -> str:
    response = gateway.client.post(path, content=body, **kwargs)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    assert response.json() == {"run_id": run_id, "status": "queued"}
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}"
    return run_id


def test_async_query_flag_returns_202_and_runs_the_call(gateway: Gateway, upstream: Upstream) -> None:
    body = b'{"param": "hello world"}'
    response = gateway.client.post(
        "/echo?x=1&async=true&y=2",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer t0ken"},
    )
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{22}", run_id)
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}"
    assert "preference-applied" not in response.headers

    status = gateway.wait_final(run_id)
    assert status["status"] == "succeeded"
    assert status["upstream_status"] == 200
    assert status["error"] is None
    assert status["attempt"] == 1
    assert status["method"] == "POST"
    assert status["path"] == "/echo"
    for field in ("created_at", "started_at", "finished_at"):
        assert RFC3339.match(status[field]), status[field]
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]

    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    call = result.json()
    assert call["query"] == "x=1&y=2"
    assert call["body"] == body.decode()
    headers = dict(call["headers"])
    assert headers["asyncgate-run-id"] == run_id
    assert headers["asyncgate-attempt"] == "1"
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["content-type"] == "application/json"


def test_prefer_respond_async_returns_202_with_location_and_preference_applied(gateway: Gateway) -> None:
    response = gateway.client.post(
        "/echo", content=b"{}", headers=[("Prefer", "return=minimal, RESPOND-ASYNC; foo=bar"), ("Prefer", "x-other")]
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    run_id = response.json()["run_id"]
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    call = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").json()
    assert [v for k, v in call["headers"] if k == "prefer"] == ["return=minimal", "x-other"]


def test_async_flag_values(gateway: Gateway) -> None:
    for value in ("1", "YES", "True"):
        submit(gateway, f"/echo?async={value}")


def test_upstream_error_fails_the_run_and_keeps_the_response(gateway: Gateway) -> None:
    run_id = submit(gateway, "/status/500?async=true")
    status = gateway.wait_final(run_id)
    assert status["status"] == "failed"
    assert status["upstream_status"] == 500
    assert status["error"]["code"] == "upstream_error"
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert result.status_code == 500
    assert result.json() == {"status": 500}


def test_unreachable_upstream_fails_the_run(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"upstream": f"http://127.0.0.1:{free_port()}"})
    run_id = submit(gateway, "/echo?async=true")
    status = gateway.wait_final(run_id)
    assert status["status"] == "failed"
    assert status["error"]["code"] == "upstream_unreachable"
    assert status["upstream_status"] is None
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert result.status_code == 409
    assert result.json()["error"]["code"] == "no_upstream_response"


def test_an_upstream_that_resets_fails_the_run_and_not_the_gateway(gateway: Gateway) -> None:
    run_id = submit(gateway, "/reset?async=true")
    status = gateway.wait_final(run_id)
    assert status["status"] == "failed"
    assert status["error"]["code"] == "upstream_unreachable"
    with pytest.raises(httpx.RemoteProtocolError):
        gateway.client.get("/reset")
    assert gateway.client.get("/echo").status_code == 200


def test_run_timeout_fails_the_run(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway({"runs.timeout": 0.5})
    run_id = submit(gateway, "/sleep?seconds=30&async=true")
    status = gateway.wait_final(run_id)
    assert status["status"] == "failed"
    assert status["error"]["code"] == "timeout"


def test_result_over_the_limit_fails_the_run(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"limits.max_result_bytes": 1000})
    response = gateway.client.get("/stream?size=5000&async=true")
    assert response.status_code == 202
    status = gateway.wait_final(response.json()["run_id"])
    assert status["status"] == "failed"
    assert status["error"]["code"] == "result_too_large"
    assert status["upstream_status"] == 200


def test_result_is_binary_safe(gateway: Gateway) -> None:
    response = gateway.client.get("/stream?size=300000&async=true")
    run_id = response.json()["run_id"]
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/octet-stream"
    assert result.content == pattern_bytes(300000)


def test_result_before_finish_is_409_with_retry_after(gateway: Gateway) -> None:
    run_id = submit(gateway, "/sleep?seconds=3&async=true")
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "run_not_finished"
    assert response.headers["retry-after"] == "1"
    status = gateway.client.get(f"{gateway.prefix}/runs/{run_id}")
    assert status.json()["status"] in ("queued", "running")
    assert status.headers["retry-after"] == "1"


def test_unknown_run_is_404(gateway: Gateway) -> None:
    for suffix in ("", "/result"):
        response = gateway.client.get(f"{gateway.prefix}/runs/doesnotexist{suffix}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"


def test_body_over_the_limit_is_413_and_nothing_is_stored(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway({"limits.max_body_bytes": 100})
    response = gateway.client.post("/echo?async=true", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    chunked = gateway.client.post("/echo?async=true", content=iter([b"x" * 60, b"x" * 60]))
    assert chunked.status_code == 413
    assert gateway.stored_run_count() == 0


def test_malformed_webhook_is_400_and_nothing_is_stored(gateway: Gateway) -> None:
    for url in ("not a url", "ftp://example.com/x", "http://", "http://host:99999/x", "/relative"):
        response = gateway.client.post(f"/echo?async=true&webhookEndpoint={quote(url, safe='')}", content=b"x")
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == "invalid_webhook_url"
    assert gateway.stored_run_count() == 0


def test_webhook_receives_the_upstream_body(gateway: Gateway, receiver: Receiver) -> None:
    hook = quote(f"{receiver.url}/hook", safe="")
    body = orjson.dumps({"param": "hello world"})
    run_id = submit(
        gateway, f"/mirror?async=true&webhookEndpoint={hook}", body, headers={"Content-Type": "application/json"}
    )
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id), message="webhook delivery")[0]
    assert delivery["body"] == body
    assert delivery["headers"]["content-type"] == "application/json"
    assert delivery["headers"]["asyncgate-status"] == "succeeded"
    assert delivery["headers"]["asyncgate-upstream-status"] == "200"
    call = gateway.client.get(f"{gateway.prefix}/runs/{run_id}")
    assert call.json()["status"] == "succeeded"


def test_webhook_param_is_not_forwarded(gateway: Gateway, receiver: Receiver) -> None:
    hook = quote(f"{receiver.url}/hook", safe="")
    run_id = submit(gateway, f"/echo?a=1&async=true&webhookEndpoint={hook}&b=%20x")
    gateway.wait_final(run_id)
    call = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").json()
    assert call["query"] == "a=1&b=%20x"


def test_replay_marker_keeps_a_request_synchronous(gateway: Gateway) -> None:
    response = gateway.client.post("/echo?async=true", content=b"x", headers={"Asyncgate-Run-Id": "abc"})
    assert response.status_code == 200
    assert response.json()["query"] == "async=true"


def test_queued_runs_survive_a_restart(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    settings = {"limits.max_inflight": 1, "shutdown.drain_timeout": 0.2}
    first = make_gateway(settings)
    slow = first.client.get("/sleep?seconds=3&async=true").json()["run_id"]
    wait_until(lambda: first.run(slow)["status"] == "running", message="slow run started")
    queued = [submit(first, f"/echo?n={n}&async=true", b"payload") for n in range(3)]
    first.stop()

    second = make_gateway(settings)
    for run_id in [slow, *queued]:
        assert second.wait_final(run_id, timeout=30)["status"] == "succeeded", run_id
    # The interrupted GET was safe to send again: it is on its second attempt.
    assert second.run(slow)["attempt"] == 2


def test_health_and_readiness(gateway: Gateway, store_kind: str) -> None:
    assert gateway.client.get(f"{gateway.prefix}/healthz").json() == {"status": "ok"}
    ready = gateway.client.get(f"{gateway.prefix}/readyz").json()
    assert (ready["status"], ready["store"]) == ("ready", store_kind)
    assert ready["durability"]
    if store_kind == "embedded":
        assert ready["durability"].startswith("sqlite synchronous=full")
    else:
        # The suite's Redis keeps nothing on disk, and readiness says so.
        assert ready["warnings"] == ["appendonly is off"]
        assert "lost if Redis restarts" in ready["durability"]


def test_a_run_stores_and_replays_only_end_to_end_fields(gateway: Gateway) -> None:
    # Expect was answered by the gateway already; hop-by-hop fields (and the ones Connection
    # names) belong to the client's connection; the length is written afresh at replay.
    body = b'{"expect": "continue"}'
    headers = [
        ("Expect", "100-continue"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "this hop only"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("X-End-To-End", "kept"),
        ("Content-Type", "application/json"),
    ]
    run_id = submit(gateway, "/echo?async=true", body, headers=headers)
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    call = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").json()
    names = [name for name, _ in call["headers"]]
    for dropped in ("expect", "connection", "x-hop", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in names
    received = dict(call["headers"])
    assert received["x-end-to-end"] == "kept"
    assert received["content-type"] == "application/json"
    assert received["content-length"] == str(len(body))
    assert received["asyncgate-run-id"] == run_id
    assert call["body"] == body.decode()
