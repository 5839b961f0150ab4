"""Run control over real sockets: cancel, events, waiting, idempotency, backpressure, listing, retention."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import Gateway, GatewayFactory, Upstream
from tests.e2e.test_async import submit
from tests.support.wait import wait_until


def marker() -> str:
    return uuid.uuid4().hex[:12]


def calls_with(upstream: Upstream, tag: str) -> list[dict[str, object]]:
    return [c for c in upstream.calls.all() if tag in str(c.get("query", ""))]


def test_cancel_a_queued_run_never_reaches_the_upstream(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gateway = make_gateway({"limits.max_inflight": 1})
    blocker = gateway.client.get("/sleep?seconds=3&async=true").json()["run_id"]
    wait_until(lambda: gateway.run(blocker)["status"] == "running")
    tag = marker()
    queued = submit(gateway, f"/echo?tag={tag}&async=true", b"x")
    response = gateway.client.delete(f"{gateway.prefix}/runs/{queued}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["error"]["code"] == "cancelled"
    assert body["finished_at"] is not None
    again = gateway.client.delete(f"{gateway.prefix}/runs/{queued}")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "run_finished"
    assert gateway.wait_final(blocker)["status"] == "succeeded"
    assert calls_with(upstream, tag) == []
    assert gateway.client.get(f"{gateway.prefix}/runs/{queued}/result").json()["error"]["code"] == (
        "no_upstream_response"
    )


def test_cancel_a_running_run_aborts_the_upstream_call(gateway: Gateway, upstream: Upstream) -> None:
    tag = marker()
    run_id = gateway.client.get(f"/sleep?seconds=60&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: calls_with(upstream, tag), message="upstream call started")
    started = time.monotonic()
    response = gateway.client.delete(f"{gateway.prefix}/runs/{run_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 1.5
    wait_until(
        lambda: any(c.get("event") == "disconnected" for c in upstream.calls.all()[-20:]),
        message="upstream saw the disconnect",
    )
    assert gateway.run(run_id)["error"]["code"] == "cancelled"


def test_cancel_unknown_and_finished_runs(gateway: Gateway) -> None:
    assert gateway.client.delete(f"{gateway.prefix}/runs/nope").status_code == 404
    run_id = submit(gateway, "/echo?async=true")
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    response = gateway.client.delete(f"{gateway.prefix}/runs/{run_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "run_finished"
    assert gateway.run(run_id)["status"] == "succeeded"


def read_events(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with client.stream("GET", url, headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return events


def test_events_stream_every_state_change_and_end(gateway: Gateway) -> None:
    run_id = gateway.client.get("/sleep?seconds=0.5&async=true").json()["run_id"]
    events = read_events(gateway.client, f"{gateway.prefix}/runs/{run_id}/events")
    assert [e["event"] for e in events] == ["queued", "running", "succeeded"]
    assert len({e["id"] for e in events}) == 3
    assert '"upstream_status":200' in events[-1]["data"]
    replay = read_events(
        gateway.client, f"{gateway.prefix}/runs/{run_id}/events", headers={"Last-Event-ID": events[0]["id"]}
    )
    assert [e["event"] for e in replay] == ["running", "succeeded"]


def test_events_with_a_malformed_last_event_id_is_400(gateway: Gateway) -> None:
    run_id = submit(gateway, "/echo?async=true")
    for headers, query in (({"Last-Event-ID": "q"}, ""), ({}, "?after=%C3%A4")):
        response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/events{query}", headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_parameter"


def test_events_of_unknown_run_is_404(gateway: Gateway) -> None:
    response = gateway.client.get(f"{gateway.prefix}/runs/nope/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "run_not_found"


def test_long_poll_answers_when_the_run_finishes(gateway: Gateway) -> None:
    run_id = gateway.client.get("/sleep?seconds=0.5&async=true").json()["run_id"]
    started = time.monotonic()
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?wait=20")
    assert response.json()["status"] == "succeeded"
    assert time.monotonic() - started < 10
    assert "retry-after" not in response.headers


def test_long_poll_gives_up_after_its_wait(gateway: Gateway) -> None:
    run_id = gateway.client.get("/sleep?seconds=30&async=true").json()["run_id"]
    started = time.monotonic()
    response = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?wait=0.5")
    assert response.json()["status"] in ("queued", "running")
    assert 0.4 < time.monotonic() - started < 5
    assert response.headers["retry-after"] == "1"
    done = submit(gateway, "/echo?async=true")
    gateway.wait_final(done)
    assert gateway.client.get(f"{gateway.prefix}/runs/{done}?wait=3600").status_code == 200  # cut, not refused
    for bad in ("abc", "-1", "nan"):
        refused = gateway.client.get(f"{gateway.prefix}/runs/{run_id}?wait={bad}")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_parameter"


def test_prefer_wait_returns_the_upstream_response_when_fast(gateway: Gateway) -> None:
    response = gateway.client.post(
        "/echo?x=1", content=b"fast", headers={"Prefer": "respond-async, wait=10", "Content-Type": "text/plain"}
    )
    assert response.status_code == 200
    assert response.json()["body"] == "fast"
    assert response.json()["query"] == "x=1"
    run_id = response.headers["asyncgate-run-id"]
    assert gateway.run(run_id)["status"] == "succeeded"
    forwarded = [v for k, v in response.json()["headers"] if k == "prefer"]
    assert forwarded == []


def test_prefer_wait_falls_back_to_202_when_slow(gateway: Gateway) -> None:
    started = time.monotonic()
    response = gateway.client.get("/sleep?seconds=30", headers={"Prefer": "respond-async, wait=0.5"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    assert time.monotonic() - started < 5


def test_idempotency_key_replays_the_same_run(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    # Keys are scoped to the caller, so this needs callers: access.mode header.
    gateway = make_gateway({"access.mode": "header"})
    gateway.client.headers["Authorization"] = "Bearer first-caller"
    key = {"Idempotency-Key": f"order-{marker()}"}
    first = gateway.client.post("/echo?async=true", content=b"same", headers=key)
    second = gateway.client.post("/echo?async=true", content=b"same", headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]
    assert "asyncgate-idempotent-replay" not in first.headers
    assert second.headers["asyncgate-idempotent-replay"] == "true"
    different = gateway.client.post("/echo?async=true", content=b"other", headers=key)
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    other_caller = gateway.client.post(
        "/echo?async=true", content=b"same", headers={**key, "Authorization": "Bearer someone-else"}
    )
    assert other_caller.status_code == 202
    assert other_caller.json()["run_id"] != first.json()["run_id"]
    gateway.wait_final(first.json()["run_id"])
    result = gateway.client.get(f"{gateway.prefix}/runs/{first.json()['run_id']}/result").json()
    assert dict(result["headers"])["authorization"] == "Bearer first-caller"
    assert dict(result["headers"])["idempotency-key"] == key["Idempotency-Key"]


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_bad_idempotency_keys_are_400(gateway: Gateway, key: str) -> None:
    response = gateway.client.post("/echo?async=true", content=b"x", headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert gateway.stored_run_count() == 0


def test_racing_identical_submissions_make_one_run(gateway: Gateway) -> None:
    key = {"Idempotency-Key": f"race-{marker()}"}

    def post(_: int) -> str:
        with httpx.Client(base_url=gateway.url, trust_env=False) as client:
            response = client.post("/echo?async=true", content=b"race", headers=key)
            assert response.status_code == 202
            return str(response.json()["run_id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        run_ids = set(pool.map(post, range(16)))
    assert len(run_ids) == 1
    assert gateway.stored_run_count() == 1


def test_full_queue_is_429_and_nothing_accepted_is_lost(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"limits.max_inflight": 1, "limits.max_queued": 2})
    blocker = gateway.client.get("/sleep?seconds=2&async=true").json()["run_id"]
    wait_until(lambda: gateway.run(blocker)["status"] == "running")
    accepted = [submit(gateway, f"/echo?n={n}&async=true") for n in range(2)]
    refused = gateway.client.post("/echo?async=true", content=b"x")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "queue_full"
    assert gateway.stored_run_count() == 3
    for run_id in [blocker, *accepted]:
        assert gateway.wait_final(run_id)["status"] == "succeeded"


def test_listing_pages_newest_first_and_filters(gateway: Gateway) -> None:
    run_ids = [submit(gateway, f"/echo?n={n}&async=true") for n in range(3)]
    for run_id in run_ids:
        gateway.wait_final(run_id)
    page = gateway.client.get(f"{gateway.prefix}/runs?limit=2").json()
    assert [r["run_id"] for r in page["runs"]] == run_ids[::-1][:2]
    assert page["next_cursor"]
    rest = gateway.client.get(f"{gateway.prefix}/runs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [r["run_id"] for r in rest["runs"]] == run_ids[:1]
    assert rest["next_cursor"] is None
    succeeded = gateway.client.get(f"{gateway.prefix}/runs?status=succeeded").json()["runs"]
    assert {r["run_id"] for r in succeeded} == set(run_ids)
    assert gateway.client.get(f"{gateway.prefix}/runs?status=running").json()["runs"] == []
    for bad in ("status=done", "limit=0", "limit=1000", "limit=x", "cursor=x", "cursor=nan"):
        response = gateway.client.get(f"{gateway.prefix}/runs?{bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_parameter"


def test_finished_runs_expire_after_retention(make_gateway: GatewayFactory, store_kind: str) -> None:
    gateway = make_gateway({"runs.retention": 1, "runs.recovery_interval": 0.2})
    key = {"Idempotency-Key": f"keep-{marker()}"}
    run_id = gateway.client.post("/echo?async=true", content=b"r", headers=key).json()["run_id"]
    gateway.wait_final(run_id)
    wait_until(
        lambda: gateway.client.get(f"{gateway.prefix}/runs/{run_id}").status_code == 404, timeout=10, message="expiry"
    )
    assert gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").status_code == 404
    wait_until(lambda: gateway.stored_run_count() == 0, timeout=10, message="purged")
    if store_kind == "redis":
        # What stays: the work queue, the deployment's identity record, the fleet's heartbeat, the
        # gateways' heartbeats, the counters (claims, for the queue's rate) and the key signing
        # progress URLs: one small key each per deployment.
        wait_until(
            lambda: gateway.redis_keys() <= {"queue", "deployment", "alive", "gateways", "counters", "progress_key"},
            timeout=10,
            message=f"keys left: {gateway.redis_keys()}",
        )
    # The idempotency key went with its run: the same key makes a new run.
    again = gateway.client.post("/echo?async=true", content=b"r", headers=key).json()["run_id"]
    assert again != run_id


def test_per_request_timeout(gateway: Gateway) -> None:
    run_id = gateway.client.get("/sleep?seconds=30&async=true", headers={"Asyncgate-Timeout": "0.5"}).json()["run_id"]
    status = gateway.wait_final(run_id)
    assert status["error"]["code"] == "timeout"
    for bad in ("0", "-1", "abc", str(13 * 3600)):
        response = gateway.client.get("/echo?async=true", headers={"Asyncgate-Timeout": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_timeout"
    sync = gateway.client.get("/echo", headers={"Asyncgate-Timeout": "5"})
    assert sync.status_code == 400
    assert sync.json()["error"]["code"] == "webhook_requires_async"


def test_runs_finishing_while_leases_are_renewed_are_not_reported_lost(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Renewals go through every held run one store call at a time; a run that finishes
    # meanwhile is "not running" to the store, which is its own finish, not a lost lease.
    gateway = make_gateway({"runs.lease_renewal": 0.005, "runs.lease": 10, "limits.max_inflight": 500})
    tag = marker()
    caplog.set_level("WARNING", logger="asyncgate.executor")
    run_ids = [submit(gateway, f"/echo?delay=0.{i % 10}&tag={tag}&async=true") for i in range(300)]
    for run_id in run_ids:
        assert gateway.wait_final(run_id)["status"] == "succeeded"
    assert [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()] == []
