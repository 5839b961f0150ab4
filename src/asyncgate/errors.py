"""The one error hierarchy of asyncgate.

    AsyncgateError
    ├── ConfigError                 bad configuration; the CLI prints it and exits 2
    ├── StoreError                  the run store failed
    │   └── StoreUnavailable        the store cannot be reached or is too slow
    └── ClientError                 the client's request is wrong; rendered as a 4xx
        ├── BadRequest              400 (malformed input)
        ├── NotFound                404 (unknown run, or not the caller's)
        ├── Conflict                409 (the run is not in a state that allows this)
        ├── Gone                    410 (a finished attempt's progress URL)
        ├── PayloadTooLarge         413
        ├── UnprocessableContent    422
        ├── TooManyRequests         429 (with Retry-After)
        └── ServiceUnavailable      503 (with Retry-After)

Client errors carry an HTTP status and a stable machine-readable ``code``; the one place
that turns them into responses is ``asyncgate.responses.error_response``.
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


class StoreError(AsyncgateError):
    """Raised when the run store fails in a way the caller cannot fix."""


class StoreUnavailable(StoreError):
    """Raised when the run store cannot be reached, or does not answer in time."""


class ClientError(AsyncgateError):
    """A problem with the client's request, rendered as ``{"error": {"code", "message"}}``."""

    status_code = 400
    code = "bad_request"

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


class BadRequest(ClientError):
    """Raised when the request is malformed or names an invalid parameter."""

    status_code = 400
    code = "bad_request"


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


class ServiceUnavailable(ClientError):
    """Raised when the gateway cannot take the request now (store down, draining)."""

    status_code = 503
    code = "unavailable"


class ClientDisconnected(Exception):
    """The client went away while its request body was still being read."""
