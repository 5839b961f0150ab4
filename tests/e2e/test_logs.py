"""The gateway's log lines about runs, from a real gateway: each names its run, in words and as a field."""

from __future__ import annotations

import logging

import pytest

from tests.e2e.conftest import GatewayFactory, Receiver
from tests.e2e.test_async import submit
from tests.e2e.test_webhooks import delivery_state, hook
from tests.support.wait import wait_until


def test_run_lines_carry_the_run_id_rounded_durations_and_why_a_delivery_failed(
    make_gateway: GatewayFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gateway = make_gateway({"webhooks.schedule": [0, 0.1]})
    receiver.deliveries.script = [500, 502]
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    wait_until(lambda: delivery_state(gateway, run_id, "failed"), timeout=20)
    assert gateway.client.get("/echo").status_code == 200

    lines = [record for record in caplog.records if getattr(record, "run_id", None) == run_id]
    # The intake logs "accepted" once the store has the run, and the executor may claim it and
    # log "started" before the intake's task runs again: the two lines come in either order.
    assert sorted(record.getMessage() for record in lines[:2]) == [
        f"run {run_id} accepted: POST /echo",
        f"run {run_id} started (attempt 1)",
    ]
    assert [record.getMessage() for record in lines[2:]] == [
        f"run {run_id} succeeded (upstream 200)",
        f"run {run_id}: webhook attempt 1 failed, will retry: the receiver answered 500",
        f"run {run_id}: webhook attempt 2 failed: the receiver answered 502",
    ]
    assert [record.levelname for record in lines[-2:]] == ["INFO", "WARNING"]
    # No line about this run goes without its id as a field.
    ours = [record for record in caplog.records if record.name.startswith("asyncgate")]
    assert all(record in lines for record in ours if run_id in record.getMessage())
    finished = lines[2].__dict__["duration_ms"]
    access = next(record for record in caplog.records if record.name == "asyncgate.access")
    for duration in (finished, access.__dict__["duration_ms"]):
        assert isinstance(duration, float) and duration == round(duration, 1) and duration >= 0


def test_a_run_without_an_upstream_answer_says_why_and_no_upstream_status(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gateway = make_gateway()
    run_id = submit(gateway, "/sleep?seconds=30&async=true", b"")
    wait_until(lambda: gateway.client.get(f"{gateway.prefix}/runs/{run_id}").json()["status"] == "running", timeout=10)
    assert gateway.client.delete(f"{gateway.prefix}/runs/{run_id}").json()["status"] == "cancelled"

    def finished() -> list[str]:
        messages = [record.getMessage() for record in caplog.records if getattr(record, "run_id", None) == run_id]
        return [message for message in messages if message.startswith(f"run {run_id} cancelled")]

    wait_until(finished, timeout=10)
    assert finished() == [f"run {run_id} cancelled: cancelled"]
