"""runs.execute false: an intake-only replica accepts and answers; worker replicas sharing its Redis execute."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.e2e.test_run_control import calls_with
from tests.support.wait import wait_until

INTAKE_ONLY = {"runs.execute": False}


@pytest.fixture
def store_kind() -> str:
    return "redis"


@pytest.fixture
def intake_upstream() -> Iterator[Upstream]:
    """An upstream of the intake-only replica's own, so that any call it made would show."""
    server = Upstream()
    yield server
    server.server.stop()


def submit(gateway: Gateway, path: str) -> str:
    response = gateway.client.post(path, content=b"payload")
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    assert response.headers["location"] == f"{gateway.prefix}/runs/{run_id}"
    return run_id


def test_runs_accepted_by_an_intake_only_replica_are_executed_by_a_worker(
    make_gateway: GatewayFactory, upstream: Upstream, intake_upstream: Upstream
) -> None:
    intake = make_gateway({**INTAKE_ONLY, "upstream": intake_upstream.url})
    tag = uuid.uuid4().hex[:8]
    run_ids = [submit(intake, f"/echo?tag={tag}&n={n}&async=true") for n in range(5)]
    assert {intake.run(run_id)["status"] for run_id in run_ids} == {"queued"}

    worker = make_gateway()
    for run_id in run_ids:
        assert worker.wait_final(run_id)["status"] == "succeeded"
        from_intake = intake.client.get(f"{intake.prefix}/runs/{run_id}/result")
        from_worker = worker.client.get(f"{worker.prefix}/runs/{run_id}/result")
        assert from_intake.status_code == from_worker.status_code == 200
        assert from_intake.content == from_worker.content
        assert from_intake.json()["body"] == "payload"
        assert intake.run(run_id) == worker.run(run_id)
    assert len(calls_with(upstream, tag)) == 5
    # The runs were queued before any worker existed, yet the intake-only replica took none.
    assert intake_upstream.calls.all() == []


def test_cancelling_through_the_intake_only_replica_reaches_the_worker(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    intake = make_gateway(INTAKE_ONLY)
    worker = make_gateway()
    tag = uuid.uuid4().hex[:8]
    run_id = submit(intake, f"/sleep?seconds=60&tag={tag}&async=true")
    wait_until(lambda: calls_with(upstream, tag), message="the worker called the upstream")

    response = intake.client.delete(f"{intake.prefix}/runs/{run_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["code"] == "cancelled"
    wait_until(
        lambda: any(c.get("event") == "disconnected" and tag in c.get("query", "") for c in upstream.calls.all()),
        message="the upstream saw the worker's call aborted",
    )
    assert worker.run(run_id)["status"] == "cancelled"


def test_a_queued_run_is_cancelled_by_the_intake_only_replica_alone(make_gateway: GatewayFactory) -> None:
    intake = make_gateway(INTAKE_ONLY)
    run_id = submit(intake, "/echo?async=true")
    response = intake.client.delete(f"{intake.prefix}/runs/{run_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert intake.run(run_id)["status"] == "cancelled"


def test_the_intake_only_replica_delivers_webhooks(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    intake = make_gateway(INTAKE_ONLY)
    worker = make_gateway()
    run_id = submit(intake, f"/echo?async=true&webhookEndpoint={receiver.url}/hook")
    wait_until(lambda: receiver.deliveries.for_run(run_id), message="the first delivery")
    worker.stop()
    # With the worker gone, only the intake-only replica can send the delivery asked for again.
    hook = {"Asyncgate-Webhook": f"{receiver.url}/hook"}  # the run's own was deleted once delivered
    response = intake.client.post(f"{intake.prefix}/runs/{run_id}/webhook", headers=hook)
    assert response.status_code == 202, response.text
    wait_until(lambda: len(receiver.deliveries.for_run(run_id)) == 2, message="the second delivery")
    deliveries = receiver.deliveries.for_run(run_id)
    assert deliveries[0]["body"] == deliveries[1]["body"]
    # The receiver answers before the gateway records the answer: wait for the record.
    wait_until(
        lambda: intake.run(run_id)["webhook"]["state"] == "delivered", message="the redelivery recorded as delivered"
    )


def test_the_intake_only_replica_is_ready_and_reports_the_queue(make_gateway: GatewayFactory) -> None:
    intake = make_gateway(INTAKE_ONLY)
    assert intake.client.get(f"{intake.prefix}/healthz").json() == {"status": "ok"}
    ready = intake.client.get(f"{intake.prefix}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["store"] == "redis"
    for _ in range(3):
        submit(intake, "/echo?async=true")
    # No executor refreshes the queue gauge here: the scrape itself does.
    metrics = intake.client.get(f"{intake.prefix}/metrics").text
    assert 'asyncgate_runs_queued{scope="deployment"} 3.0' in metrics.splitlines()
