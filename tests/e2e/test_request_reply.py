"""The asynchronous request-reply pattern over real sockets, on both stores: Retry-After, the run's
URLs in the status document and in Link headers, and the opt-in 303 to the result."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.support.redis_server import free_port
from tests.support.wait import wait_until

RUN_FIELDS = {
    "run_id",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "method",
    "path",
    "upstream_status",
    "error",
    "attempt",
    "webhook",
    "route",
    "progress",
    "urls",
}


def urls(prefix: str, run_id: str) -> dict[str, str]:
    run = f"{prefix}/runs/{run_id}"
    return {"status": run, "result": f"{run}/result", "events": f"{run}/events", "cancel": run}


def link_header(prefix: str, run_id: str) -> str:
    return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in urls(prefix, run_id).items())


def links(response: httpx.Response) -> dict[str, str]:
    # httpx keys a link by its rel, else by its URL, which every link has: the key is never None.
    return {rel: link["url"] for rel, link in response.links.items() if rel is not None}


def accepted(gateway: Gateway, path: str, **kwargs: Any) -> tuple[str, httpx.Response]:
    response = gateway.client.post(path, content=b'{"param": 1}', **kwargs)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"]), response


def test_202_carries_location_retry_after_and_links(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"runs.retry_after": "2500ms"})
    run_id, response = accepted(gateway, "/sleep?seconds=30&async=true")
    assert response.json() == {"run_id": run_id, "status": "queued"}
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}"
    assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert response.headers["link"] == link_header(gateway.prefix, run_id)
    assert links(response) == {
        "status": response.headers["location"],
        "result": f"{gateway.prefix}/runs/{run_id}/result",
        "events": f"{gateway.prefix}/runs/{run_id}/events",
        "cancel": response.headers["location"],
    }
    assert gateway.client.delete(links(response)["cancel"]).status_code == 200


def test_status_names_the_runs_urls_and_each_one_works(gateway: Gateway) -> None:
    run_id, _ = accepted(gateway, "/sleep?seconds=30&async=true")
    wait_until(lambda: gateway.run(run_id)["status"] == "running", message="run started")
    status = gateway.client.get(f"{gateway.prefix}/runs/{run_id}")
    assert status.status_code == 200
    assert status.headers["retry-after"] == "1"
    assert status.headers["link"] == link_header(gateway.prefix, run_id)
    body = status.json()
    assert set(body) == RUN_FIELDS
    assert body["status"] == "running"
    assert body["urls"] == urls(gateway.prefix, run_id) == links(status)

    early = gateway.client.get(body["urls"]["result"])
    assert (early.status_code, early.json()["error"]["code"]) == (409, "run_not_finished")
    cancelled = gateway.client.delete(body["urls"]["cancel"])
    assert cancelled.status_code == 200
    assert cancelled.headers["link"] == link_header(gateway.prefix, run_id)
    assert "retry-after" not in cancelled.headers
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["urls"] == body["urls"]
    with gateway.client.stream("GET", body["urls"]["events"]) as events:
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        text = events.read().decode()
    assert [line for line in text.splitlines() if line.startswith("event:")] == [
        "event: queued",
        "event: running",
        "event: cancelled",
    ]


def test_finished_run_redirects_to_its_result_only_when_asked(gateway: Gateway) -> None:
    run_id, _ = accepted(gateway, "/echo?async=true", headers={"Content-Type": "application/json"})
    final = gateway.wait_final(run_id)
    status_url = f"{gateway.prefix}/runs/{run_id}"

    plain = gateway.client.get(status_url)
    assert plain.status_code == 200
    assert "retry-after" not in plain.headers
    assert plain.headers["link"] == link_header(gateway.prefix, run_id)
    assert plain.json() == final

    redirect = gateway.client.get(status_url, params={"redirect": "result"})
    assert redirect.status_code == 303
    assert redirect.headers["location"] == f"{status_url}/result"
    assert redirect.headers["link"] == link_header(gateway.prefix, run_id)
    assert redirect.headers["content-type"] == "application/json"
    assert redirect.json() == final

    followed = gateway.client.get(status_url, params={"redirect": "result"}, follow_redirects=True)
    assert [r.status_code for r in followed.history] == [303]
    assert followed.status_code == 200
    assert followed.headers["content-type"] == "application/json"
    assert followed.json()["body"] == '{"param": 1}'
    assert followed.content == gateway.client.get(f"{status_url}/result").content


def test_a_failed_runs_upstream_answer_is_a_result_to_redirect_to(gateway: Gateway) -> None:
    run_id, _ = accepted(gateway, "/status/500?async=true")
    assert gateway.wait_final(run_id)["status"] == "failed"
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?redirect=result", follow_redirects=True)
    assert [r.status_code for r in response.history] == [303]
    assert (response.status_code, response.json()) == (500, {"status": 500})


def test_long_poll_with_redirect_leads_to_the_result_in_one_call(gateway: Gateway) -> None:
    run_id, _ = accepted(gateway, "/sleep?seconds=0.5&async=true")
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}", params={"wait": 30, "redirect": "result"})
    assert response.status_code == 303
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}/result"
    assert response.json()["status"] == "succeeded"


def test_redirect_is_not_given_before_the_end_nor_after_a_cancel(gateway: Gateway) -> None:
    running, _ = accepted(gateway, "/sleep?seconds=30&async=true")
    response = gateway.client.get(f"{gateway.prefix}/runs/{running}?redirect=result")
    assert response.status_code == 200
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] in ("queued", "running")
    assert gateway.client.delete(f"{gateway.prefix}/runs/{running}").status_code == 200
    cancelled = gateway.client.get(f"{gateway.prefix}/runs/{running}?redirect=result")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")


def test_redirect_is_not_given_without_an_upstream_answer(make_gateway: GatewayFactory) -> None:
    unreachable = make_gateway({"upstream": f"http://127.0.0.1:{free_port()}"})
    run_id, _ = accepted(unreachable, "/echo?async=true")
    assert unreachable.wait_final(run_id)["error"]["code"] == "upstream_unreachable"
    response = unreachable.client.get(f"{unreachable.prefix}/runs/{run_id}?redirect=result")
    assert response.status_code == 200
    assert response.json()["upstream_status"] is None
    assert "location" not in response.headers


def test_result_over_the_limit_is_not_redirected_to(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"limits.max_result_bytes": 1000})
    submitted = gateway.client.get("/stream?size=5000&chunk=1000&async=true")
    assert submitted.status_code == 202
    run_id = submitted.json()["run_id"]
    final = gateway.wait_final(run_id)
    assert (final["upstream_status"], final["error"]["code"]) == (200, "result_too_large")
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?redirect=result")
    assert response.status_code == 200
    assert response.json() == final


def test_an_unknown_redirect_is_400(gateway: Gateway) -> None:
    run_id, _ = accepted(gateway, "/echo?async=true")
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?redirect=status")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "invalid_parameter", "message": "redirect must be result"}}


def test_urls_follow_the_configured_prefix(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server.prefix": "/gw/api"})
    run_id, response = accepted(gateway, "/echo?async=true")
    assert response.headers["location"] == f"/gw/api/runs/{run_id}"
    assert response.headers["link"] == link_header("/gw/api", run_id)
    gateway.wait_final(run_id)
    status = gateway.client.get(f"/gw/api/runs/{run_id}?redirect=result")
    assert status.headers["location"] == f"/gw/api/runs/{run_id}/result"
    assert status.json()["urls"] == urls("/gw/api", run_id)
    page = gateway.client.get("/gw/api/runs").json()
    assert [run["urls"] for run in page["runs"]] == [urls("/gw/api", run_id)]


def test_idempotent_replay_names_the_same_run_and_urls(gateway: Gateway) -> None:
    key = {"Idempotency-Key": "order-1"}
    run_id, first = accepted(gateway, "/echo?async=true", headers=key)
    again_id, again = accepted(gateway, "/echo?async=true", headers=key)
    assert again_id == run_id
    assert again.headers["asyncgate-idempotent-replay"] == "true"
    for response in (first, again):
        assert response.headers["retry-after"] == "1"
        assert response.headers["link"] == link_header(gateway.prefix, run_id)
