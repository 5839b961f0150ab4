"""Progress: an upstream reports it in its SSE stream or by POSTing to the URL its request announces;
the status shows the latest report and the event stream each one, from any replica."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory, Upstream
from tests.e2e.test_output import follow, listener
from tests.support.wait import wait_until


def progress_of(events: list[dict[str, Any]]) -> list[tuple[float, str]]:
    return [(e["data"]["progress"], e["data"]["message"]) for e in events if e["event"] == "progress"]


def announced_url(upstream: Upstream, run_id: str) -> str | None:
    """The progress URL the upstream was given on its last call for the run."""
    calls = [dict(call.get("headers", [])) for call in upstream.calls.all()]
    urls = [headers.get("asyncgate-progress-url") for headers in calls if headers.get("asyncgate-run-id") == run_id]
    return urls[-1] if urls else None


def test_progress_in_an_sse_stream_reaches_listeners_and_the_status(
    make_gateway: GatewayFactory, store_kind: str
) -> None:
    holder = make_gateway()
    other = listener(make_gateway, store_kind, holder)
    run_id = holder.client.post("/progress-sse?count=4&interval=0.05&hold=1&async=true").json()["run_id"]
    events: list[dict[str, Any]] = []
    status_at_last_report = None
    for event in follow(other, run_id):
        events.append(event)
        if event["event"] == "progress" and event["data"]["progress"] == 1.0:
            status_at_last_report = other.run(run_id)
    assert status_at_last_report is not None and status_at_last_report["status"] == "running"
    assert status_at_last_report["progress"]["value"] == 1.0
    assert status_at_last_report["progress"]["message"] == "token 4 of 4"
    kinds = [e["event"] for e in events]
    assert kinds == ["queued", "running", *["output", "progress"] * 4, "succeeded"]
    assert progress_of(events) == [
        (0.25, "token 1 of 4"),
        (0.5, "token 2 of 4"),
        (0.75, "token 3 of 4"),
        (1.0, "token 4 of 4"),
    ]
    assert all(e["data"]["attempt"] == 1 and e["data"]["run_id"] == run_id for e in events if e["event"] == "progress")
    assert [e["data"]["data"] for e in events if e["event"] == "output"] == [f"token-{i}" for i in range(4)]
    # The result stays the upstream's answer exactly, reports included.
    result = other.client.get(f"{other.prefix}/runs/{run_id}/result")
    assert result.content.count(b"event: asyncgate.progress") == 4
    final = other.run(run_id)
    assert final["status"] == "succeeded" and final["progress"]["value"] == 1.0
    assert final["progress"]["attempt"] == 1 and final["progress"]["at"].endswith("Z")


def test_progress_posted_to_the_announced_url_reaches_listeners_and_the_status(
    make_gateway: GatewayFactory, store_kind: str, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    if store_kind == "redis":
        # The upstream reports to a replica that does not hold the run (as behind a Service).
        other = make_gateway({"runs.execute": False})
        holder = make_gateway({"runs.progress_base_url": other.url})
    else:
        holder = other = make_gateway()
    run_id = holder.client.post("/progress-callback?count=3&interval=0.05&hold=0.5&async=true").json()["run_id"]
    events = list(follow(other, run_id))
    assert [e["event"] for e in events] == ["queued", "running", "progress", "progress", "progress", "succeeded"]
    assert progress_of(events) == [
        (pytest.approx(1 / 3), "step 1 of 3"),
        (pytest.approx(2 / 3), "step 2 of 3"),
        (1.0, "step 3 of 3"),
    ]
    result = other.client.get(f"{other.prefix}/runs/{run_id}/result").json()
    assert result == {"announced": True, "statuses": [204, 204, 204]}
    status = other.run(run_id)
    assert status["progress"]["value"] == 1.0 and status["progress"]["message"] == "step 3 of 3"

    url = announced_url(upstream, run_id)
    assert url is not None and url.startswith(f"{other.url}{other.prefix}/runs/{run_id}/attempts/1/progress/")
    # Once the attempt is over its URL is refused as gone; a wrong token is unknown.
    late = holder.client.post(url, json={"progress": 0.5})
    assert late.status_code == 410 and late.json()["error"]["code"] == "attempt_over"
    wrong = holder.client.post(url[:-4] + "AAAA", json={"progress": 0.5})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "not_found"
    other_attempt = holder.client.post(url.replace("/attempts/1/", "/attempts/2/"), json={"progress": 0.5})
    assert other_attempt.status_code == 404
    # The token is a secret: never in status, events, pages or logs.
    token = url.rsplit("/", 1)[1]
    for page in (f"/runs/{run_id}", f"/runs/{run_id}/events", "/runs", "/ui/"):
        assert token not in holder.client.get(holder.prefix + page).text
    # (The fake upstream's own HTTP client logs the URL it calls; the gateway's loggers must not.)
    assert not [r for r in caplog.records if r.name.startswith("asyncgate") and token in r.getMessage()]
    assert [r for r in caplog.records if r.name.startswith("asyncgate")]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"progress": 1.5}', 400, "invalid_progress"),
        (b'{"percent": -1}', 400, "invalid_progress"),
        (b'{"progress": 0.5, "percent": 50}', 400, "invalid_progress"),
        (b'{"progress": "half"}', 400, "invalid_progress"),
        (b'{"message": 7}', 400, "invalid_progress"),
        (b'{"step": 1}', 400, "invalid_progress"),
        (b"{}", 400, "invalid_progress"),
        (b"[0.5]", 400, "invalid_progress"),
        (b"half done", 400, "invalid_progress"),
        (b'{"message": "' + b"x" * 1025 + b'"}', 400, "invalid_progress"),
        (b'{"message": "' + b"x" * 5000 + b'"}', 413, "progress_too_large"),
    ],
)
def test_bad_progress_reports_are_refused_and_change_nothing(
    gateway: Gateway, upstream: Upstream, body: bytes, status: int, code: str
) -> None:
    run_id = gateway.client.post("/progress-callback?count=0&hold=3&async=true").json()["run_id"]
    wait_until(lambda: gateway.run(run_id)["status"] == "running", 10, message="running")
    url = wait_until(lambda: announced_url(upstream, run_id), 10, message="called")
    answer = gateway.client.post(url, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"]
    assert gateway.run(run_id)["progress"] is None
    gateway.client.delete(f"{gateway.prefix}/runs/{run_id}")


def test_a_progress_url_sent_by_the_client_is_not_passed_on(gateway: Gateway, upstream: Upstream) -> None:
    headers = {"Asyncgate-Progress-Url": "http://attacker.example/steal"}
    run_id = gateway.client.post("/progress-callback?count=1&async=true", headers=headers).json()["run_id"]
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    call = next(
        dict(c.get("headers", []))
        for c in upstream.calls.all()
        if dict(c.get("headers", [])).get("asyncgate-run-id") == run_id
    )
    assert call["asyncgate-progress-url"].startswith(gateway.url)
    sent = next(
        c.get("headers", []) for c in upstream.calls.all() if ["asyncgate-run-id", run_id] in c.get("headers", [])
    )
    assert [name for name, _ in sent if name == "asyncgate-progress-url"] == ["asyncgate-progress-url"]
