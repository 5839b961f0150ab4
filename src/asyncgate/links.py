"""Where and when a client looks next for a run: its URLs, in its status document and as Link
headers (RFC 8288), and the Retry-After that paces its polls.

The one place that knows where a run's resources live. URLs are paths relative to the gateway,
under its configured prefix, like ``Location``: the gateway does not know the scheme and host
its clients reach it by (a load balancer, a path-preserving ingress), and a relative reference
resolves against whichever one they used.
"""

from __future__ import annotations

import math

#: The names of a run's URLs: keys of the status document's ``urls``, and ``rel`` of its Links.
#: ``status`` is a registered relation type (RFC 8631); the others are this API's own names,
#: kept short so that ``response.links["result"]`` works in any client library.
STATUS, RESULT, EVENTS, CANCEL = "status", "result", "events", "cancel"
#: The query parameter of ``GET {prefix}/runs/{id}`` asking for ``303 See Other`` to the result.
REDIRECT_PARAM = "redirect"
REDIRECT_TO_RESULT = "result"


class RunLinks:
    """Builds a run's URLs under the gateway's prefix."""

    def __init__(self, prefix: str) -> None:
        self.runs = f"{prefix}/runs/"

    def status(self, run_id: str) -> str:
        return self.runs + run_id

    def urls(self, run_id: str) -> dict[str, str]:
        """The status document's ``urls``; cancelling is ``DELETE`` on the run's own URL."""
        status = self.runs + run_id
        return {STATUS: status, RESULT: f"{status}/result", EVENTS: f"{status}/events", CANCEL: status}

    def header(self, run_id: str) -> str:
        """The ``Link`` header value naming the same URLs."""
        return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in self.urls(run_id).items())


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds (the header has no fractions), at least one."""
    return max(1, math.ceil(seconds))
