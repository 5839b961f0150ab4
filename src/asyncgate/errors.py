"""The one error hierarchy of asyncgate.

    AsyncgateError
    ├── ConfigError                 bad configuration; the CLI prints it and exits 2
    ├── StoreError                  the run store failed
    │   └── StoreUnavailable        the store cannot be reached or is too slow
    ├── StoreRefused                the store declined a change and holds what it held
    │   ├── QueueFull               limits.max_queued runs wait already
    │   ├── ShareExceeded           the caller holds its whole share of runs queued or running
    │   └── WebhookUrlDeleted       a redelivery names no URL and the run's own is gone
    ├── UpstreamError               the exchange with the upstream (or a webhook receiver) failed
    │   ├── ConnectFailed           no connection could be made: nothing was sent
    │   └── UpstreamTimeout         the upstream was silent too long, or slow to connect
    ├── ClientDisconnected          the client went away while its body was being read
    ├── ResultTooLarge              a run's upstream body outgrew limits.max_result_bytes
    ├── BlockedDestination          a webhook destination is refused (loopback, private, ...)
    ├── InvalidSecret               a signing secret is not ``whsec_<base64>``
    ├── InvalidSignature            a webhook delivery's signature does not verify
    └── HTTPError                   rendered as ``{"error": {"code", "message"}}``
        ├── ClientError             4xx: the client's request is wrong
        │   ├── BadRequest          400 (malformed input)
        │   ├── Unauthenticated     401 (no caller named where runs must belong to one)
        │   ├── NotFound            404 (unknown run, or not the caller's)
        │   ├── Conflict            409 (the run is not in a state that allows this)
        │   ├── Gone                410 (a finished attempt's progress URL)
        │   ├── PayloadTooLarge     413
        │   ├── UnprocessableContent 422
        │   └── TooManyRequests     429 (with Retry-After)
        └── ServerError             5xx: the gateway or its upstream cannot answer now
            ├── BadGateway          502 (the upstream cannot be reached or broke off)
            ├── ServiceUnavailable  503 (store down, draining; with Retry-After)
            └── GatewayTimeout      504 (the upstream did not answer in time)

HTTP errors carry ``status_code`` and a stable machine-readable ``code``; the one place that
turns them into responses is ``asyncgate.responses`` (``error_response``, ``send_error``).
Everything else is raised and caught inside the gateway (the signing errors also by webhook
receivers, through ``asyncgate.client``). None derives from a builtin exception: a caller
catching ``ValueError`` or ``TimeoutError`` never catches one of these by accident.
"""

from __future__ import annotations


class AsyncgateError(Exception):
    """Base class of every error asyncgate raises on purpose."""


class ConfigError(AsyncgateError):
    """Raised when the configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# -- the run store


class StoreError(AsyncgateError):
    """Raised when the run store fails in a way the caller cannot fix."""


class StoreUnavailable(StoreError):
    """Raised when the run store cannot be reached, or does not answer in time."""


class StoreRefused(AsyncgateError):
    """Base class of the store's deliberate refusals: nothing was changed, and retrying as is fails again."""


class QueueFull(StoreRefused):
    """Raised by ``create`` when limits.max_queued runs have not started yet; nothing was stored."""


class ShareExceeded(StoreRefused):
    """Raised by ``create`` when a share's counter (``limits.max_per_caller``, a route's ``share``) is
    at its limit; nothing was stored. ``limit`` and ``where`` ("on route batch") describe the share."""

    def __init__(self, key: str, limit: int, where: str = "") -> None:
        super().__init__(key)
        self.limit = limit
        self.where = where


class WebhookUrlDeleted(StoreRefused):
    """Raised by ``redeliver`` when no URL is named and the run's own was deleted as its last delivery ended."""


# -- the upstream and webhook receivers (asyncgate.http1)


class UpstreamError(AsyncgateError):
    """Raised when the upstream cannot be reached, or breaks the exchange off."""


class ConnectFailed(UpstreamError):
    """Raised when no connection could be made: nothing was sent, so another address may be tried."""


class UpstreamTimeout(UpstreamError):
    """Raised when the upstream stays silent longer than the read timeout, or takes too long to connect."""


# -- the gateway's own flow


class ClientDisconnected(AsyncgateError):
    """Raised when the client goes away while its request body is still being read."""


class ResultTooLarge(AsyncgateError):
    """Raised while a run's upstream body is read, once it grows past limits.max_result_bytes."""


class BlockedDestination(AsyncgateError):
    """Raised when a webhook destination is refused; ``reason`` names the rule (``"loopback"``...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- webhook signatures (asyncgate.signing), also raised to receivers by asyncgate.client


class InvalidSecret(AsyncgateError):
    """Raised when a signing secret is not of the ``whsec_<base64>`` form, or holds under 16 bytes."""


class InvalidSignature(AsyncgateError):
    """Raised when a delivery's signature does not match, or its timestamp is too far from now."""


# -- answers to HTTP clients


class HTTPError(AsyncgateError):
    """Base class of the errors answered to an HTTP client as ``{"error": {"code", "message"}}``."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)


class ClientError(HTTPError):
    """Base class of the 4xx answers: the client's request is wrong, or refused as it stands."""

    status_code = 400
    code = "bad_request"


class BadRequest(ClientError):
    """Raised when the request is malformed or names an invalid parameter."""

    status_code = 400
    code = "bad_request"


class Unauthenticated(ClientError):
    """Raised when the request names no caller, and runs must belong to someone (access.mode: header)."""

    status_code = 401
    code = "credentials_required"


class NotFound(ClientError):
    """Raised when a run does not exist (or is not visible to the caller)."""

    status_code = 404
    code = "not_found"


class Conflict(ClientError):
    """Raised when the run's state does not allow the operation."""

    status_code = 409
    code = "conflict"


class Gone(ClientError):
    """What the request names existed and is over for good (a finished attempt's progress URL)."""

    status_code = 410
    code = "gone"


class PayloadTooLarge(ClientError):
    """Raised when a request body exceeds the configured limit."""

    status_code = 413
    code = "payload_too_large"


class UnprocessableContent(ClientError):
    """Raised when a well-formed request contradicts what the gateway already holds."""

    status_code = 422
    code = "unprocessable"


class TooManyRequests(ClientError):
    """Raised when the gateway refuses work to protect itself."""

    status_code = 429
    code = "too_many_requests"


class ServerError(HTTPError):
    """Base class of the 5xx answers: the gateway or its upstream cannot answer now, though the request may be fine."""

    status_code = 500
    code = "internal_error"


class BadGateway(ServerError):
    """Raised when the upstream cannot be reached, or breaks the connection before answering."""

    status_code = 502
    code = "upstream_unreachable"


class ServiceUnavailable(ServerError):
    """Raised when the gateway cannot take the request now (store down, draining)."""

    status_code = 503
    code = "unavailable"


class GatewayTimeout(ServerError):
    """Raised when the upstream does not answer in time."""

    status_code = 504
    code = "upstream_timeout"
