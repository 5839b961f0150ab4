"""verify_webhook: one call checks a delivery's Standard Webhooks signature and reads it."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from asyncgate.client import InvalidSecret, InvalidSignature, RunState, WebhookDelivery, verify_webhook
from asyncgate.signing import secret_key, signature_header

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 24).decode()
NOW = 1_800_000_000
BODY = b'{"answer": 42}'


def headers(secrets: list[str], body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    keys = [secret_key(secret) for secret in secrets]
    return {
        "Webhook-Id": "msg_r1",
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": signature_header(keys, "msg_r1", timestamp, body),
        "Asyncgate-Run-Id": "r1",
        "Asyncgate-Status": "failed",
        "Asyncgate-Upstream-Status": "500",
        "Content-Type": "application/json",
    }


def test_a_signed_delivery_verifies_and_reads_in_one_call() -> None:
    delivery = verify_webhook(SECRET, headers([SECRET]), BODY, now=NOW + 10)
    assert delivery == WebhookDelivery(
        webhook_id="msg_r1",
        timestamp=NOW,
        run_id="r1",
        status=RunState.FAILED,
        upstream_status=500,
        content_type="application/json",
        body=BODY,
    )


def test_any_of_several_secrets_verifies_while_rotating() -> None:
    signed_with_both = headers([OLD_SECRET, SECRET])
    assert verify_webhook([SECRET], signed_with_both, BODY, now=NOW).run_id == "r1"
    assert verify_webhook([OLD_SECRET, SECRET], headers([SECRET]), BODY, now=NOW).run_id == "r1"


@pytest.mark.parametrize(
    ("secret", "sent", "body", "now", "message"),
    [
        (OLD_SECRET, headers([SECRET]), BODY, NOW, "no signature matches"),
        (SECRET, headers([SECRET]), BODY + b" ", NOW, "no signature matches"),
        (SECRET, headers([SECRET]), BODY, NOW + 301, "too far from now"),
        (SECRET, headers([SECRET]), BODY, NOW - 301, "too far from now"),
        (SECRET, {**headers([SECRET]), "Webhook-Timestamp": "soon"}, BODY, NOW, "not an integer"),
        (SECRET, {k: v for k, v in headers([SECRET]).items() if k != "Webhook-Signature"}, BODY, NOW, "missing"),
    ],
)
def test_a_delivery_that_does_not_verify_raises_invalid_signature(
    secret: str, sent: dict[str, str], body: bytes, now: int, message: str
) -> None:
    with pytest.raises(InvalidSignature, match=message):
        verify_webhook(secret, sent, body, now=now)


def test_tolerance_and_lowercase_headers() -> None:
    lowered = {name.lower(): value for name, value in headers([SECRET]).items()}
    assert verify_webhook(SECRET, lowered, BODY, now=NOW + 3000, tolerance=3600).status is RunState.FAILED


def test_a_malformed_secret_is_the_receivers_error_not_the_senders() -> None:
    with pytest.raises(InvalidSecret):
        verify_webhook("not-a-secret", headers([SECRET]), BODY, now=NOW)
    with pytest.raises(ValueError, match="no secret"):
        verify_webhook([], headers([SECRET]), BODY, now=NOW)


def test_optional_asyncgate_headers_may_be_absent_or_empty() -> None:
    sent = {**headers([SECRET]), "Asyncgate-Upstream-Status": "", "Asyncgate-Status": "odd"}
    del sent["Content-Type"]
    delivery = verify_webhook(SECRET, sent, BODY, now=NOW)
    assert (delivery.status, delivery.upstream_status, delivery.content_type) == (None, None, None)


def test_signatures_of_the_reference_implementation_verify() -> None:
    moment = datetime.fromtimestamp(NOW, tz=UTC)
    signature = Webhook(SECRET).sign("msg_r1", moment, BODY.decode())
    sent = {"webhook-id": "msg_r1", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    assert verify_webhook(SECRET, sent, BODY, now=NOW).run_id is None
