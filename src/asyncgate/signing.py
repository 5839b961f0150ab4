"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com), as pure functions.

A secret is ``whsec_`` followed by the base64 of its key bytes. The signed content is
``{webhook-id}.{webhook-timestamp}.{body}``; the ``webhook-signature`` header holds one
``v1,<base64 HMAC-SHA256>`` per secret, space-separated, so receivers keep verifying while
secrets are rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from asyncgate.errors import InvalidSecret, InvalidSignature

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_...`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a signing secret must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise InvalidSecret("a signing secret must be base64 after whsec_") from None
    if len(key) < 16:
        raise InvalidSecret("a signing secret must hold at least 16 bytes")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` element."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: Iterable[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per key, space-separated."""
    return " ".join(sign(key, webhook_id, timestamp, body) for key in keys)


def verify(
    secret: str,
    webhook_id: str,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    tolerance: float = 300,
) -> None:
    """Raise InvalidSignature unless one of ``signature``'s v1 elements is ``secret``'s."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not an integer") from None
    if abs(now - sent_at) > tolerance:
        raise InvalidSignature("webhook-timestamp is too far from now")
    expected = sign(secret_key(secret), webhook_id, sent_at, body)
    if not any(hmac.compare_digest(expected, element) for element in signature.split()):
        raise InvalidSignature("no signature matches")
