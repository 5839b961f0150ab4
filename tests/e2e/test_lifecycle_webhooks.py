"""Lifecycle webhooks: start, output, progress and completed deliveries, each signed, numbered and
in order, to receivers that asked for them; receivers that asked for nothing see no change."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from asyncgate.client import Client, verify_webhook
from tests.e2e.conftest import GatewayFactory, Receiver
from tests.e2e.test_async import submit
from tests.e2e.test_webhooks import FAST, SECRET, hook
from tests.support.wait import wait_until

LIFECYCLE = {**FAST, "webhooks.output_batch_interval": "200ms"}


def delivered_through(receiver: Receiver, run_id: str, last: str) -> list[dict[str, Any]]:
    """The run's deliveries (distinct webhook-ids, as first received) once its ``last`` event came."""

    def done() -> list[dict[str, Any]] | None:
        deliveries = receiver.deliveries.for_run(run_id)
        events = [d["headers"].get("asyncgate-webhook-event") for d in deliveries]
        return deliveries if last in events else None

    deliveries = wait_until(done, 20, message=f"{last} delivery")
    first: dict[str, dict[str, Any]] = {}
    for delivery in deliveries:
        first.setdefault(delivery["headers"]["webhook-id"], delivery)
    return list(first.values())


def test_every_event_asked_for_is_delivered_signed_numbered_and_in_order(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = make_gateway(LIFECYCLE)
    events = "start,output,progress,completed"
    run_id = submit(
        gateway,
        f"/progress-sse?count=6&interval=0.02&async=true&webhookEndpoint={hook(receiver)}&webhookEvents={events}",
    )
    deliveries = delivered_through(receiver, run_id, "completed")
    kinds = [d["headers"]["asyncgate-webhook-event"] for d in deliveries]
    assert kinds[0] == "start" and kinds[-1] == "completed"
    assert set(kinds[1:-1]) == {"output", "progress"}
    sequences = [int(d["headers"]["asyncgate-webhook-sequence"]) for d in deliveries]
    assert sequences == list(range(1, len(deliveries) + 1))
    ids = [d["headers"]["webhook-id"] for d in deliveries]
    assert ids[-1] == f"msg_{run_id}" and ids[:-1] == [f"msg_{run_id}_{n}" for n in sequences[:-1]]
    for delivery in deliveries[:-1]:
        Webhook(SECRET).verify(delivery["body"], delivery["headers"])  # raises unless signed right
    verify_webhook(SECRET, deliveries[-1]["headers"], deliveries[-1]["body"])  # completed: not JSON here
    bodies = [orjson.loads(d["body"]) for d in deliveries[:-1]]
    assert bodies[0] == {"type": "run.start", "run_id": run_id, "attempt": 1, "at": bodies[0]["at"]}
    outputs = [e for b in bodies if b["type"] == "run.output" for e in b["events"]]
    assert [e["data"] for e in outputs] == [f"token-{i}" for i in range(6)]
    assert [e["seq"] for e in outputs] == list(range(6))
    batches = [b for b in bodies if b["type"] == "run.output"]
    assert len(batches) < 6  # batched by time, not a delivery per token
    assert [(b["from_seq"], b["to_seq"]) for b in batches] == [
        (b["events"][0]["seq"], b["events"][-1]["seq"]) for b in batches
    ]
    reports = [b["progress"] for b in bodies if b["type"] == "run.progress"]
    assert reports == sorted(reports) and reports[-1] == 1.0
    assert all(b["run_id"] == run_id and b["attempt"] == 1 for b in bodies)
    # completed is today's delivery: the upstream's answer as it is.
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result")
    assert deliveries[-1]["body"] == result.content
    webhook = gateway.run(run_id)["webhook"]
    assert webhook["events"] == ["start", "output", "progress", "completed"] and webhook["state"] == "delivered"


def test_the_header_form_and_reports_posted_by_the_upstream(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(LIFECYCLE)
    headers = {"Asyncgate-Webhook": f"{receiver.url}/hook", "Asyncgate-Webhook-Events": "completed, progress"}
    run_id = submit(gateway, "/progress-callback?count=3&interval=0.05&async=true", headers=headers)
    deliveries = delivered_through(receiver, run_id, "completed")
    kinds = [d["headers"]["asyncgate-webhook-event"] for d in deliveries]
    assert kinds[-1] == "completed" and set(kinds[:-1]) == {"progress"}
    reports = [orjson.loads(d["body"]) for d in deliveries[:-1]]
    # Reports waiting behind one being sent are replaced by later ones: the latest always arrives.
    assert 1 <= len(reports) <= 3 and reports[-1]["progress"] == 1.0 and reports[-1]["message"] == "step 3 of 3"
    assert [int(d["headers"]["asyncgate-webhook-sequence"]) for d in deliveries] == sorted(
        int(d["headers"]["asyncgate-webhook-sequence"]) for d in deliveries
    )


def test_a_failing_receiver_gets_each_event_again_with_its_id_and_still_in_order(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = make_gateway(LIFECYCLE)
    receiver.deliveries.script = [500, 503]  # the start delivery fails twice
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}&webhookEvents=start,completed")
    wait_until(
        lambda: [d for d in receiver.deliveries.for_run(run_id) if d["headers"]["webhook-id"] == f"msg_{run_id}"]
    )
    received = receiver.deliveries.for_run(run_id)
    assert [d["headers"]["asyncgate-webhook-event"] for d in received] == ["start"] * 3 + ["completed"]
    assert [d["headers"]["webhook-id"] for d in received[:3]] == [f"msg_{run_id}_1"] * 3
    assert received[-1]["headers"]["asyncgate-webhook-sequence"] == "2"


def test_a_receiver_gets_exactly_the_events_it_asked_for(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(LIFECYCLE)
    run_id = submit(
        gateway, f"/sse-tokens?count=3&interval=0.01&async=true&webhookEndpoint={hook(receiver)}&webhookEvents=start"
    )
    assert gateway.wait_final(run_id)["webhook"]["events"] == ["start"]
    deliveries = delivered_through(receiver, run_id, "start")
    other = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}")  # a later run, to wait past
    wait_until(lambda: receiver.deliveries.for_run(other))
    assert [d["headers"]["asyncgate-webhook-event"] for d in receiver.deliveries.for_run(run_id)] == ["start"]
    assert len(deliveries) == 1


def test_a_receiver_that_asked_for_nothing_sees_no_change(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(LIFECYCLE)
    run_id = submit(gateway, f"/progress-sse?count=2&interval=0.01&async=true&webhookEndpoint={hook(receiver)}")
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id))[0]
    headers = delivery["headers"]
    assert headers["webhook-id"] == f"msg_{run_id}"
    assert "asyncgate-webhook-event" not in headers and "asyncgate-webhook-sequence" not in headers
    assert headers["asyncgate-status"] == "succeeded"
    assert gateway.wait_final(run_id)["webhook"]["events"] == ["completed"]
    assert len(receiver.deliveries.for_run(run_id)) == 1


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("async=true&webhookEndpoint={hook}&webhookEvents=start,finished", {}, "invalid_webhook_events"),
        ("async=true&webhookEndpoint={hook}&webhookEvents=", {}, "invalid_webhook_events"),
        ("async=true&webhookEvents=start", {}, "invalid_webhook_events"),
        ("webhookEndpoint={hook}&webhookEvents=start", {}, "webhook_requires_async"),
        ("async=true&webhookEndpoint={hook}", {"Asyncgate-Webhook-Events": "start, logs"}, "invalid_webhook_events"),
    ],
)
def test_unknown_or_misplaced_webhook_events_are_refused(
    make_gateway: GatewayFactory, receiver: Receiver, query: str, headers: dict[str, str], code: str
) -> None:
    gateway = make_gateway()
    response = gateway.client.post("/echo?" + query.format(hook=hook(receiver)), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert gateway.client.get(f"{gateway.prefix}/runs").json()["runs"] == []


def test_the_sdk_asks_for_events_by_name(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(LIFECYCLE)
    with Client(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("GET", "/echo", webhook=f"{receiver.url}/hook", webhook_events=["completed", "start"])
        assert run.wait(timeout=15).webhook is not None
    deliveries = delivered_through(receiver, run.run_id, "completed")
    assert [d["headers"]["asyncgate-webhook-event"] for d in deliveries] == ["start", "completed"]
