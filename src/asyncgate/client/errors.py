"""The errors the client raises, one tree.

    AsyncgateClientError
    ├── TransportError          the gateway could not be reached, or the connection broke
    ├── ProtocolError           the gateway answered something the protocol does not allow
    ├── APIError                the gateway's API refused the call: 4xx/5xx with a stable ``code``
    └── RunError                a run did not end as the caller needed; ``run`` is attached
        ├── RunFailed           the run failed or expired (``error_code``; the upstream's status, headers, body start)
        ├── RunCancelled        the run was cancelled
        └── WaitTimeout         the run was not final within the caller's timeout

A webhook receiver gets ``InvalidSignature`` (from the gateway's own tree in ``asyncgate.errors``,
re-exported by ``asyncgate.client``) from ``verify_webhook``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from asyncgate.client._async import AsyncRun
    from asyncgate.client._models import Result, RunStatus
    from asyncgate.client._sync import Run

#: How much of a failed run's upstream body ``RunFailed`` keeps, in bytes.
BODY_PREVIEW = 4096
#: How much of that body the error's message shows, in characters.
MESSAGE_PREVIEW = 200


class AsyncgateClientError(Exception):
    """Base class of every error the client raises on purpose."""


class TransportError(AsyncgateClientError):
    """Raised when a call cannot reach the gateway or its connection breaks (``wait`` resumes instead)."""


class ProtocolError(AsyncgateClientError):
    """Raised when the gateway's answer is not what the protocol allows (not asyncgate, or a bug)."""


class APIError(AsyncgateClientError):
    """Raised when the gateway answers a call with a 4xx or 5xx error.

    ``code`` is stable and meant to be matched on (``run_not_found``, ``run_not_finished``,
    ``run_finished``, ``idempotency_key_reused``, ...); ``message`` is for people.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.response = response


class RunError(AsyncgateClientError):
    """A run did not end as the caller needed; ``run`` is its handle, ``status`` the last one seen."""

    def __init__(self, message: str, run: Run | AsyncRun, status: RunStatus | None) -> None:
        super().__init__(message)
        self.run = run
        self.status = status

    @property
    def run_id(self) -> str:
        return self.run.run_id


class RunFailed(RunError):
    """Raised by ``wait`` (and ``Client.run``) when the run ended ``failed``, or ``expired`` in the queue.

    When the upstream answered, ``upstream_status``, ``upstream_headers`` and ``upstream_body``
    (its first ``BODY_PREVIEW`` bytes) say how; otherwise they are None, None and ``b""``, and
    ``error_code`` says why there is no answer (``upstream_unreachable``, ``timeout``, ...).
    """

    def __init__(self, run: Run | AsyncRun, status: RunStatus, result: Result | None = None) -> None:
        error = status.error
        self.upstream_status = status.upstream_status
        self.upstream_headers = result.headers if result is not None else None
        self.upstream_body = result.content[:BODY_PREVIEW] if result is not None else b""
        self.error_code = error.code if error else None
        self.error_message = error.message if error else None
        upstream = f", upstream status {status.upstream_status}" if status.upstream_status is not None else ""
        message = f"run {run.run_id} failed: {self.error_code}{upstream}: {self.error_message}"
        if self.upstream_body:
            message += f": {self.upstream_body.decode(errors='replace')[:MESSAGE_PREVIEW]!r}"
        super().__init__(message, run, status)


class RunCancelled(RunError):
    """Raised by ``wait`` (and ``Client.run``) when the run ended ``cancelled``."""

    def __init__(self, run: Run | AsyncRun, status: RunStatus) -> None:
        super().__init__(f"run {run.run_id} was cancelled", run, status)


class WaitTimeout(RunError, TimeoutError):
    """Raised by ``wait`` when the run is not final within ``timeout`` seconds; the run goes on."""

    def __init__(self, run: Run | AsyncRun, status: RunStatus | None, timeout: float) -> None:
        state = status.state.value if status is not None else "unknown"
        super().__init__(f"run {run.run_id} is still {state} after {timeout:g} s", run, status)
        self.timeout = timeout
