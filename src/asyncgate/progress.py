"""Progress reports from the upstream: their one JSON form, and the capability URL that takes them.

An upstream reports ``{"progress": 0.42, "message": "step 3 of 7"}`` in either of two ways,
both needing no client library (docs/progress.md says why these two):

- a POST to the URL the executor announces in the ``Asyncgate-Progress-Url`` request header; its
  last segment is an HMAC of the run id and the attempt, so the URL grants nothing but reporting
  for that attempt, checked by any replica with the store's shared key and no lookup;
- an SSE event named ``asyncgate.progress`` in a streaming answer (output.py turns it into a
  report instead of an output event).

Pure functions only: parsing and checking a report, making and checking a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
from typing import Any
from urllib.parse import urlsplit

import orjson

from asyncgate.errors import BadRequest, PayloadTooLarge

#: The request header that announces the callback URL to the upstream.
PROGRESS_URL_HEADER = "Asyncgate-Progress-Url"
#: The SSE event name a streaming upstream gives a report in its own answer.
SSE_EVENT = "asyncgate.progress"
#: A report's body, at most: a fraction and a message fit many times over.
MAX_REPORT_BYTES = 4096
#: A report's message, at most, in UTF-8 bytes.
MAX_MESSAGE_BYTES = 1024
#: Progress events a run's log keeps; past it only the latest stays (the status always has it).
KEPT_REPORTS = 1000
#: What a report may hold; anything else is refused, so the format can grow without guessing.
_FIELDS = frozenset({"progress", "percent", "message"})


def _fraction(name: str, value: Any, scale: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number", code="invalid_progress")
    if not 0 <= value <= scale:
        raise BadRequest(f"{name} must be between 0 and {scale:g}", code="invalid_progress")
    return float(value) / scale


def check_report(raw: Any) -> dict[str, Any]:
    """A report's fields (``progress`` as a fraction, ``message``) from its parsed JSON; BadRequest if malformed.

    ``progress`` is a fraction from 0 to 1, ``percent`` the same from 0 to 100 (one or the
    other); ``message`` a string of at most MAX_MESSAGE_BYTES. At least one must be given.
    """
    if not isinstance(raw, dict):
        raise BadRequest("a progress report must be a JSON object", code="invalid_progress")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field in a progress report: {unknown[0]}", code="invalid_progress")
    if "progress" in raw and "percent" in raw:
        raise BadRequest("give progress (0 to 1) or percent (0 to 100), not both", code="invalid_progress")
    report: dict[str, Any] = {}
    if raw.get("progress") is not None:
        report["progress"] = _fraction("progress", raw["progress"], 1.0)
    elif raw.get("percent") is not None:
        report["progress"] = _fraction("percent", raw["percent"], 100.0)
    message = raw.get("message")
    if message is not None:
        if not isinstance(message, str):
            raise BadRequest("message must be a string", code="invalid_progress")
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            raise BadRequest(f"message is longer than {MAX_MESSAGE_BYTES} bytes", code="invalid_progress")
        report["message"] = message
    if not report:
        raise BadRequest("a progress report needs progress, percent or message", code="invalid_progress")
    return report


def parse_report(body: bytes) -> dict[str, Any]:
    """A report from a POST body; PayloadTooLarge or BadRequest if it is not one."""
    if len(body) > MAX_REPORT_BYTES:
        raise PayloadTooLarge(f"a progress report is at most {MAX_REPORT_BYTES} bytes", code="progress_too_large")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("a progress report must be JSON", code="invalid_progress") from None
    return check_report(raw)


def report_in_stream(data: str) -> dict[str, Any] | None:
    """A report from the data of an ``asyncgate.progress`` SSE event, or None if it is not one
    (it is then relayed as ordinary output rather than dropped)."""
    if len(data) > MAX_REPORT_BYTES:
        return None
    try:
        return check_report(orjson.loads(data))
    except (orjson.JSONDecodeError, BadRequest):
        return None


def progress_event(report: dict[str, Any], attempt: int, at: float) -> dict[str, Any]:
    """The ``progress`` event of the run's log (and, as it is, the run's latest report)."""
    return {"event": "progress", "attempt": attempt, "at": at, "progress": None, "message": None, **report}


def token(key: bytes, run_id: str, attempt: int) -> str:
    """The capability of one attempt: base64url of HMAC-SHA256 over the run id and the attempt."""
    digest = hmac.new(key, f"{run_id}\n{attempt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_matches(key: bytes, run_id: str, attempt: int, given: str) -> bool:
    """Whether ``given`` is the attempt's token; in constant time, so it cannot be guessed piecewise."""
    return hmac.compare_digest(token(key, run_id, attempt).encode(), given.encode("utf-8", "replace"))


def callback_path(prefix: str, run_id: str, attempt: int, secret: str) -> str:
    return f"{prefix}/runs/{run_id}/attempts/{attempt}/progress/{secret}"


def redacted_path(path: str) -> str:
    """A callback path with its token hidden, for logs."""
    head, marker, _ = path.rpartition("/progress/")
    return f"{head}{marker}***" if marker else path


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_base_url(upstream: str, host: str, port: int) -> str | None:
    """Where an upstream on this host reaches the gateway: its loopback address, or None when the
    upstream runs elsewhere (a base URL must then be configured, or no URL is announced)."""
    if not _loopback(urlsplit(upstream).hostname or ""):
        return None
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening everywhere: loopback included
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
