"""Webhook delivery over real sockets: signed, retried until delivered, durable across restarts."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.conftest import GatewayFactory, Receiver
from tests.e2e.test_async import submit
from tests.support.wait import wait_until

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
FAST = {"webhooks.schedule": [0, 0.2, 0.2, 0.2], "webhooks.signing_secrets": [SECRET, OLD_SECRET]}


def hook(receiver: Receiver, name: str = "hook") -> str:
    return quote(f"{receiver.url}/{name}", safe="")


def delivery_state(gateway: Any, run_id: str, state: str) -> dict[str, Any] | None:
    webhook: dict[str, Any] = gateway.run(run_id)["webhook"]
    return webhook if webhook["state"] == state else None


def test_delivery_is_signed_per_standard_webhooks(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(FAST)
    body = orjson.dumps({"answer": 42})
    run_id = submit(
        gateway,
        f"/mirror?async=true&webhookEndpoint={hook(receiver)}",
        body,
        headers={"Content-Type": "application/json"},
    )
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id))[0]
    headers = delivery["headers"]
    assert headers["webhook-id"] == f"msg_{run_id}"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        assert Webhook(secret).verify(delivery["body"], headers) == {"answer": 42}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery["body"] + b" ", headers)
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery["body"], stale)
    webhook = wait_until(lambda: delivery_state(gateway, run_id, "delivered"))
    assert webhook["attempts"] == 1
    assert webhook["last_status"] == 200
    assert webhook["url"] == f"{receiver.url}/hook"


def test_failures_are_retried_until_delivered_with_one_webhook_id(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = make_gateway(FAST)
    receiver.deliveries.script = [500, 500, (503, {"Retry-After": "1"})]
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    webhook = wait_until(lambda: delivery_state(gateway, run_id, "delivered"), timeout=20)
    attempts = receiver.deliveries.for_run(run_id)
    assert len(attempts) == 4
    assert {a["headers"]["webhook-id"] for a in attempts} == {f"msg_{run_id}"}
    assert webhook["attempts"] == 4
    # The 503's Retry-After (1 s) was honoured over the 0.2 s schedule.
    stamps = [int(a["headers"]["webhook-timestamp"]) for a in attempts]
    assert stamps[3] - stamps[2] >= 1
    for attempt in attempts:
        Webhook(SECRET).verify(attempt["body"], attempt["headers"], json_parse=False)


def test_gone_stops_at_once(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway(FAST)
    receiver.deliveries.script = [410]
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    webhook = wait_until(lambda: delivery_state(gateway, run_id, "gone"))
    assert webhook["attempts"] == 1
    assert webhook["last_status"] == 410
    assert gateway.run(run_id)["status"] == "succeeded"
    assert len(receiver.deliveries.for_run(run_id)) == 1


def test_redirects_are_failed_attempts_never_followed(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({**FAST, "webhooks.schedule": [0, 0.2]})
    target = f"{receiver.url}/target"
    receiver.deliveries.script = [(307, {"Location": target}), (308, {"Location": target})]
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    webhook = wait_until(lambda: delivery_state(gateway, run_id, "failed"))
    assert webhook["attempts"] == 2
    assert webhook["last_status"] == 308
    assert "redirect" in webhook["last_error"]
    assert [d["path"] for d in receiver.deliveries.all()] == ["/hook", "/hook"]


def test_dead_letter_stays_visible_and_can_be_resent(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({**FAST, "webhooks.schedule": [0, 0.1]})
    receiver.deliveries.script = [500, 502]
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    failed = wait_until(lambda: delivery_state(gateway, run_id, "failed"))
    assert failed["attempts"] == 2
    assert failed["last_status"] == 502
    assert failed["next_attempt_at"] is None
    # The URL was deleted with the final delivery: a redelivery names it again.
    refused = gateway.client.post(f"{gateway.prefix}/runs/{run_id}/webhook")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "webhook_url_deleted"
    response = gateway.client.post(
        f"{gateway.prefix}/runs/{run_id}/webhook", params={"webhookEndpoint": f"{receiver.url}/hook"}
    )
    assert response.status_code == 202
    wait_until(lambda: delivery_state(gateway, run_id, "delivered"))
    ids = {d["headers"]["webhook-id"] for d in receiver.deliveries.for_run(run_id)}
    assert ids == {f"msg_{run_id}"}
    assert len(receiver.deliveries.for_run(run_id)) == 3


def test_redelivery_needs_a_finished_run_with_a_webhook(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    run_id = submit(gateway, "/echo?async=true")
    gateway.wait_final(run_id)
    response = gateway.client.post(f"{gateway.prefix}/runs/{run_id}/webhook")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_webhook"
    assert gateway.client.post(f"{gateway.prefix}/runs/nope/webhook").status_code == 404


def test_webhook_header_and_default_url(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({"webhooks.default_url": f"{receiver.url}/default"})
    by_header = submit(gateway, "/echo?async=true", b"h", headers={"Asyncgate-Webhook": f"{receiver.url}/header"})
    by_default = submit(gateway, "/echo?async=true", b"d")
    wait_until(lambda: receiver.deliveries.for_run(by_header) and receiver.deliveries.for_run(by_default))
    assert receiver.deliveries.for_run(by_header)[0]["path"] == "/header"
    assert receiver.deliveries.for_run(by_default)[0]["path"] == "/default"
    upstream_saw = orjson.loads(receiver.deliveries.for_run(by_header)[0]["body"])
    assert "asyncgate-webhook" not in {k for k, _ in upstream_saw["headers"]}


def test_failed_and_cancelled_runs_are_delivered_too(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({"limits.max_inflight": 1})
    failed = submit(gateway, f"/status/500?async=true&webhookEndpoint={hook(receiver)}")
    blocker = gateway.client.get("/sleep?seconds=2&async=true").json()["run_id"]
    wait_until(lambda: gateway.run(blocker)["status"] == "running")
    cancelled = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}")
    assert gateway.client.delete(f"{gateway.prefix}/runs/{cancelled}").json()["status"] == "cancelled"
    first = wait_until(lambda: receiver.deliveries.for_run(failed))[0]
    assert first["headers"]["asyncgate-status"] == "failed"
    assert first["headers"]["asyncgate-upstream-status"] == "500"
    assert orjson.loads(first["body"]) == {"status": 500}
    second = wait_until(lambda: receiver.deliveries.for_run(cancelled))[0]
    assert second["headers"]["asyncgate-status"] == "cancelled"
    assert second["body"] == b""


def test_envelope_format(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({"webhooks.format": "envelope"})
    run_id = submit(
        gateway,
        f"/mirror?async=true&webhookEndpoint={hook(receiver)}",
        b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    binary = gateway.client.get(f"/stream?size=10&async=true&webhookEndpoint={hook(receiver)}").json()["run_id"]
    payload = orjson.loads(wait_until(lambda: receiver.deliveries.for_run(run_id))[0]["body"])
    assert payload["run_id"] == run_id
    assert payload["status"] == "succeeded"
    assert payload["upstream_status"] == 200
    assert payload["result"] == {"a": 1}
    assert payload["error"] is None
    assert payload["duration_seconds"] >= 0
    other = orjson.loads(wait_until(lambda: receiver.deliveries.for_run(binary))[0]["body"])
    assert base64.b64decode(other["result"]["base64"]) == bytes(range(10))
    assert other["result"]["content_type"] == "application/octet-stream"


def test_a_delivery_pending_at_shutdown_is_made_after_restart(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    settings = {"webhooks.schedule": [0, 1.5]}
    first = make_gateway(settings)
    receiver.deliveries.script = [500]
    run_id = submit(first, f"/echo?async=true&webhookEndpoint={hook(receiver)}", b"x")
    wait_until(lambda: delivery_state(first, run_id, "pending") and receiver.deliveries.for_run(run_id))
    first.stop()
    second = make_gateway(settings)
    webhook = wait_until(lambda: delivery_state(second, run_id, "delivered"), timeout=20)
    assert webhook["attempts"] == 2
    assert {d["headers"]["webhook-id"] for d in receiver.deliveries.for_run(run_id)} == {f"msg_{run_id}"}


def test_webhook_events_appear_in_the_log(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway()
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={hook(receiver)}")
    wait_until(lambda: delivery_state(gateway, run_id, "delivered"))
    text = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/events").text
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert events == ["queued", "running", "succeeded", "webhook"]
    assert '"state":"delivered"' in text


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "gopher://example.com/",
    ],
)
def test_forbidden_webhook_addresses_are_refused_at_submission(make_gateway: GatewayFactory, url: str) -> None:
    gateway = make_gateway({"webhooks.allow": []})
    response = gateway.client.post(f"/echo?async=true&webhookEndpoint={quote(url, safe='')}", content=b"x")
    assert response.status_code == 400, url
    assert response.json()["error"]["code"] in ("blocked_destination", "invalid_webhook_url")
    assert gateway.stored_run_count() == 0


def test_a_name_resolving_to_a_forbidden_address_fails_the_delivery(make_gateway: GatewayFactory) -> None:
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["10.1.2.3"]

    gateway = make_gateway({"webhooks.allow": []}, resolver=resolver)
    run_id = submit(gateway, "/echo?async=true&webhookEndpoint=http%3A%2F%2Fhooks.internal.example%2Fh")
    webhook = wait_until(lambda: delivery_state(gateway, run_id, "failed"))
    assert webhook["attempts"] == 1
    assert webhook["last_error"].startswith("blocked_destination")
    assert lookups == ["hooks.internal.example"]
    assert gateway.run(run_id)["status"] == "succeeded"


def test_an_allowed_name_is_delivered_to_the_address_it_resolved_to(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    gateway = make_gateway({"webhooks.allow": ["hooks.cluster.local"]}, resolver=resolver)
    url = f"http://hooks.cluster.local:{receiver.server.port}/in-cluster"
    run_id = submit(gateway, f"/echo?async=true&webhookEndpoint={quote(url, safe='')}")
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id))[0]
    assert delivery["path"] == "/in-cluster"
    assert delivery["headers"]["host"] == f"hooks.cluster.local:{receiver.server.port}"
