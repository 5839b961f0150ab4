"""Route policies over real sockets, on both stores: each key honoured, and reported where it should be."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.wait import wait_until


def routes(hook: str) -> list[dict[str, Any]]:
    """A dozen routes over the test upstream's /echo/{rest}, one per setting, and a catch-all."""
    return [
        {"name": "sync-only", "path": "/echo/sync/**", "async": "never"},
        {"name": "batch", "methods": ["POST"], "path": "/echo/batch/*", "async": "always"},
        {"name": "safe-post", "methods": "POST", "path": "/echo/safe/**", "idempotent": True},
        {"methods": ["POST"], "path": "/echo/charge/**"},
        {"name": "fragile", "methods": ["GET"], "path": "/echo/fragile/**", "idempotent": False},
        {"name": "short", "path": "/echo/short/**", "timeout": "1s"},
        {"name": "once", "path": "/echo/once/**", "max_attempts": 1},
        {"name": "small", "path": "/echo/small/**", "max_body_bytes": "1KiB"},
        {"name": "hooked", "path": "/echo/hooked/**", "webhook": {"url": hook, "events": ["completed"]}},
        {"name": "put", "methods": ["PUT"], "path": "/echo/put/*", "async": "always"},
        {"name": "deep", "path": "/echo/*/deep"},
        {"name": "rest", "path": "/**"},
    ]


@pytest.fixture
def routed(make_gateway: GatewayFactory, receiver: Receiver) -> Gateway:
    return make_gateway({"routes": routes(f"{receiver.url}/route-hook?token=s3cret")})


def accepted(response: Any) -> str:
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def test_a_dozen_routes_are_served_and_reported(routed: Gateway) -> None:
    ready = routed.client.get(f"{routed.prefix}/readyz").json()
    assert ready["status"] == "ready"
    reported = ready["routes"]
    assert [r["name"] for r in reported] == [
        "sync-only", "batch", "safe-post", "3", "fragile", "short", "once", "small", "hooked", "put", "deep", "rest"
    ]  # fmt: skip
    assert reported[1] == {
        "name": "batch",
        "methods": ["POST"],
        "path": "/echo/batch/*",
        "async": "always",
        "idempotent": None,
        "timeout": routed.config.runs.timeout,
        "max_attempts": routed.config.runs.max_attempts,
        "max_body_bytes": routed.config.limits.max_body_bytes,
        "webhook": None,
        "priority": 0,
        "priority_max": 0,
        "queue_deadline": None,
        "share": None,
    }
    assert reported[5]["timeout"] == 1.0 and reported[6]["max_attempts"] == 1 and reported[7]["max_body_bytes"] == 1024
    assert reported[8]["webhook"]["url"].endswith("/route-hook?token=***")  # the token never shows
    assert "s3cret" not in routed.client.get(f"{routed.prefix}/readyz").text
    document = routed.client.get(f"{routed.prefix}/openapi.json").json()
    validate(document)
    assert document["x-asyncgate-routes"] == reported
    assert "| batch | POST | `/echo/batch/*` | always |" in document["paths"]["/{path}"]["description"]
    assert "route" in document["components"]["schemas"]["RunStatus"]["required"]


def test_never_refuses_the_async_flag_and_passes_through(routed: Gateway) -> None:
    requests: list[dict[str, Any]] = [{"params": {"async": "true"}}, {"headers": {"Prefer": "respond-async"}}]
    for request in requests:
        response = routed.client.post("/echo/sync/x", content=b"hi", **request)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "error": {
                "code": "async_not_allowed",
                "message": "requests to /echo/sync/** are never asynchronous (route sync-only); "
                "send it without async=true or Prefer: respond-async",
            }
        }
    direct = routed.client.post("/echo/sync/x", content=b"hi")
    assert direct.status_code == 200
    assert direct.json()["body"] == "hi"
    assert routed.stored_run_count() == 0


def test_always_makes_a_run_unasked_and_refuses_async_false(routed: Gateway, upstream: Upstream) -> None:
    run_id = accepted(routed.client.post("/echo/batch/job", content=b"payload"))
    done = routed.wait_final(run_id)
    assert (done["status"], done["route"], done["method"], done["path"]) == (
        "succeeded",
        "batch",
        "POST",
        "/echo/batch/job",
    )
    result = routed.client.get(f"{routed.prefix}/runs/{run_id}/result").json()
    assert result["body"] == "payload"
    refused = routed.client.post("/echo/batch/job", params={"async": "false"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "sync_not_allowed"
    # Only the route's methods and path match: others fall through to the catch-all, synchronous.
    assert routed.client.get("/echo/batch/job").status_code == 200
    assert routed.client.post("/echo/batch/job/more").status_code == 200
    put_id = accepted(routed.client.put("/echo/put/7", content=b"x"))
    assert routed.wait_final(put_id)["route"] == "put"
    # A run with no policy of its own shows the catch-all; the deep pattern matches one segment.
    assert routed.wait_final(accepted(routed.client.get("/echo/a/deep?async=true")))["route"] == "deep"
    assert routed.wait_final(accepted(routed.client.get("/echo/a/b/deep?async=true")))["route"] == "rest"


def test_route_timeout_bounds_the_run_and_the_clients_header(routed: Gateway) -> None:
    run_id = accepted(routed.client.get("/echo/short/x", params={"async": "true", "delay": "3"}))
    done = routed.wait_final(run_id)
    assert done["status"] == "failed"
    assert done["error"] == {"code": "timeout", "message": "the upstream did not answer within 1 s"}
    assert done["route"] == "short"
    longer = routed.client.get("/echo/short/x", params={"async": "true"}, headers={"Asyncgate-Timeout": "5"})
    assert longer.status_code == 400
    assert longer.json()["error"] == {
        "code": "invalid_timeout",
        "message": "Asyncgate-Timeout must be a number of seconds in (0, 1]",
    }


def test_route_body_limit(routed: Gateway) -> None:
    too_big = routed.client.post("/echo/small/x?async=true", content=b"x" * 1025)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert (
        routed.wait_final(accepted(routed.client.post("/echo/small/x?async=true", content=b"x" * 1024)))["status"]
        == "succeeded"
    )
    # The same body elsewhere is under the gateway-wide limit.
    assert (
        routed.wait_final(accepted(routed.client.post("/echo/other?async=true", content=b"x" * 1025)))["route"]
        == "rest"
    )


def test_route_default_webhook_is_delivered(routed: Gateway, receiver: Receiver) -> None:
    run_id = accepted(routed.client.post("/echo/hooked/x?async=true", content=b"done"))
    wait_until(lambda: receiver.deliveries.for_run(run_id), message="route webhook delivered")
    delivery = receiver.deliveries.for_run(run_id)[0]
    assert delivery["path"] == "/route-hook"
    assert delivery["headers"]["asyncgate-status"] == "succeeded"
    status = wait_until(lambda: (r := routed.run(run_id))["webhook"]["state"] == "delivered" and r)
    assert status["webhook"]["url"].endswith("/route-hook?token=***")
    assert status["route"] == "hooked"
    # Runs on other routes get no webhook: the default is the route's, not the gateway's.
    other = routed.wait_final(accepted(routed.client.post("/echo/other?async=true")))
    assert other["webhook"] is None


def test_resending_and_attempts_follow_the_route_stored_with_the_run(
    make_gateway: GatewayFactory, receiver: Receiver, upstream: Upstream
) -> None:
    """The first gateway stops mid-call; one without any routes finishes the work from the store."""
    first = make_gateway({"routes": routes(f"{receiver.url}/h"), "shutdown.drain_timeout": 0.5})
    submitted = {
        "safe": accepted(first.client.post("/echo/safe/x?async=true&delay=3", content=b"a")),
        "charge": accepted(first.client.post("/echo/charge/x?async=true&delay=3", content=b"b")),
        "fragile": accepted(first.client.get("/echo/fragile/x?async=true&delay=3")),
        "once": accepted(first.client.get("/echo/once/x?async=true&delay=3")),
        "plain-get": accepted(first.client.get("/echo/plain?async=true&delay=3")),
    }
    wait_until(lambda: all(first.run(r)["status"] == "running" for r in submitted.values()), message="all running")
    first.stop()
    second = make_gateway()
    assert second.config.routes == ()
    outcomes = {name: second.wait_final(run_id, timeout=20) for name, run_id in submitted.items()}
    summary = {
        name: (run["status"], run["attempt"], run["error"]["code"] if run["error"] else None, run["route"])
        for name, run in outcomes.items()
    }
    assert summary == {
        "safe": ("succeeded", 2, None, "safe-post"),  # a POST, re-sent because its route says so
        "charge": ("failed", 1, "lost", "3"),  # a POST without a word from its route
        "fragile": ("failed", 1, "lost", "fragile"),  # a GET, not re-sent because its route says so
        "once": ("failed", 1, "max_attempts", "once"),
        "plain-get": ("succeeded", 2, None, "rest"),
    }
