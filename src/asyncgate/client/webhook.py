"""For webhook receivers: check a delivery's Standard Webhooks signature, and read it, in one call.

delivery = verify_webhook(secret, request.headers, await request.body())
delivery.run_id, delivery.status, delivery.upstream_status, delivery.body
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from asyncgate.errors import InvalidSignature
from asyncgate.headers import (
    CONTENT_TYPE,
    RUN_ID,
    RUN_STATUS,
    UPSTREAM_STATUS,
    WEBHOOK_ID,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
)
from asyncgate.runs import RunState
from asyncgate.signing import verify

#: How far a delivery's timestamp may be from the receiver's clock, in seconds (replay protection).
DEFAULT_TOLERANCE = 300


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """A verified delivery: which run ended how, and the upstream's response body."""

    #: The Standard Webhooks message id: the same on every attempt, so receivers de-duplicate on it.
    webhook_id: str
    timestamp: int
    run_id: str | None
    status: RunState | None
    upstream_status: int | None
    content_type: str | None
    body: bytes


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> WebhookDelivery:
    """The delivery if it is signed with ``secret`` (or one of several, while rotating); InvalidSignature if not.

    ``headers`` is the request's header mapping, any case; ``body`` the raw bytes, unparsed.
    A malformed secret raises ``InvalidSecret``: that is the receiver's configuration, not the sender's fault.
    """
    fields = {name.lower(): value for name, value in headers.items()}
    try:
        webhook_id = fields[WEBHOOK_ID.lower()]
        timestamp = fields[WEBHOOK_TIMESTAMP.lower()]
        signature = fields[WEBHOOK_SIGNATURE.lower()]
    except KeyError as exc:
        raise InvalidSignature(f"the {exc.args[0]} header is missing") from None
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("no secret to verify with")
    moment = time.time() if now is None else now
    failure: InvalidSignature | None = None
    for candidate in secrets:
        try:
            verify(candidate, webhook_id, timestamp, signature, body, moment, tolerance)
        except InvalidSignature as exc:
            failure = exc
        else:
            return _delivery(fields, webhook_id, int(timestamp), body)
    assert failure is not None
    raise failure


def _delivery(fields: Mapping[str, str], webhook_id: str, timestamp: int, body: bytes) -> WebhookDelivery:
    status = fields.get(RUN_STATUS.lower())
    upstream = fields.get(UPSTREAM_STATUS.lower(), "")
    return WebhookDelivery(
        webhook_id=webhook_id,
        timestamp=timestamp,
        run_id=fields.get(RUN_ID.lower()),
        status=RunState(status) if status in set(RunState) else None,
        upstream_status=int(upstream) if upstream.isdigit() else None,
        content_type=fields.get(CONTENT_TYPE.lower()),
        body=body,
    )
