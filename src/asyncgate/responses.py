"""JSON responses, written straight to ASGI (the hot path skips starlette) or as starlette objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from asyncgate.errors import HTTPError
from asyncgate.headers import CONTENT_LENGTH_RAW, CONTENT_TYPE_RAW, encode
from asyncgate.runs import RunResult

#: Statuses that must not carry Content-Length (RFC 9110 §8.6).
_BODYLESS = frozenset({204, 304})


def error_body(code: str, message: str) -> bytes:
    """The one shape of every error the gateway answers: ``{"error": {"code", "message"}}``."""
    return orjson.dumps({"error": {"code": code, "message": message}})


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: HTTPError) -> Response:
    """The error as a starlette response, for handlers and exception handlers."""
    body = error_body(error.code, error.message)
    return Response(body, status_code=error.status_code, headers=error.headers, media_type="application/json")


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Send a complete JSON response on a raw ASGI connection."""
    raw = [(CONTENT_TYPE_RAW, b"application/json"), (CONTENT_LENGTH_RAW, str(len(body)).encode())]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: HTTPError) -> None:
    """The error written straight to ASGI, for the paths that skip starlette."""
    await send_json(send, error.status_code, error_body(error.code, error.message), error.headers)


def stored_response(result: RunResult) -> Response:
    """Exactly the upstream's answer: status, end-to-end headers (repeats kept) and body bytes."""
    response = Response(status_code=result.status)
    response.body = result.body
    response.raw_headers = encode(result.headers)
    if result.status not in _BODYLESS:
        response.raw_headers.append((CONTENT_LENGTH_RAW, str(len(result.body)).encode()))
    return response
