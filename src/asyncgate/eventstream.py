"""A run's event stream as Server-Sent Events: GET {prefix}/runs/{id}/events.

Served straight from ASGI by ``RunEvents``, before starlette's app, routing and exception
middleware: a listener keeps its request open for as long as it follows the run, and every
layer it passed through stays alive with it. Those layers cost about 6 KiB per open stream,
a third of a listener's memory (measured with 1,000 idle SSE connections: uvicorn alone 9.8 KiB
each, under a starlette app 16.1 KiB), and a replica may hold thousands of listeners.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator

from starlette.datastructures import Headers, QueryParams
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from asyncgate.errors import BadRequest, HTTPError, NotFound, ServerError, ServiceUnavailable, StoreError
from asyncgate.headers import CACHE_CONTROL, LAST_EVENT_ID, X_ACCEL_BUFFERING
from asyncgate.progress import redacted_path
from asyncgate.responses import send_error
from asyncgate.runs import Run
from asyncgate.services import Services

logger = logging.getLogger("asyncgate")

#: The query parameter that resumes a stream, for clients that cannot send Last-Event-ID.
AFTER_PARAM = "after"
#: How long an EventSource waits before reconnecting, sent as the stream's first line.
RECONNECT_MS = 1000
#: Event ids as the stores write them: a Redis stream id, or an SQLite row number.
_EVENT_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_SUFFIX = "/events"


def store_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("the run store is unavailable", code="store_unavailable", retry_after=1)


def run_not_found() -> NotFound:
    # One answer for "no such run" and "not yours", so that existence does not leak.
    return NotFound("no run with this id", code="run_not_found")


async def visible_run(svc: Services, scope: Scope, run_id: str) -> Run:
    """The run, if this request's caller may see it; one 404 for "no such run" and "not yours",
    so that existence does not leak."""
    principal = svc.access.principal(scope)
    try:
        run = await svc.records.get(run_id)
    except StoreError as exc:
        raise store_unavailable() from exc
    if run is None or not principal.can_see(run):
        svc.access.missed(principal)
        raise run_not_found()
    return run


def resume_after(scope: Scope) -> str | None:
    """The event id a listener resumes after: Last-Event-ID, else ``?after=``; checked."""
    after = Headers(scope=scope).get(LAST_EVENT_ID) or QueryParams(scope["query_string"]).get(AFTER_PARAM)
    if after is not None and not _EVENT_ID.fullmatch(after):
        raise BadRequest(f"{LAST_EVENT_ID} must be the id of an event of this stream", code="invalid_parameter")
    return after


class EventStreamResponse(StreamingResponse):
    """An SSE stream without a task of its own watching for the client to leave.

    A listener costs the request's task and nothing more (starlette's StreamingResponse adds a
    task group and a task per response): a client gone is noticed by the next write failing,
    which comes with the next event or within READ_WAIT s (the keep-alive), and ends the
    stream, leaving its feed.
    """

    def __init__(self, stream: AsyncGenerator[bytes, None]) -> None:
        headers = {CACHE_CONTROL: "no-cache", X_ACCEL_BUFFERING: "no"}
        super().__init__(stream, media_type="text/event-stream", headers=headers)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client left: a write failed, and the stream ends here
        finally:
            await self.stream.aclose()  # leaves the run's feed now, not when collected


async def event_stream(svc: Services, run_id: str, after: str | None) -> AsyncGenerator[bytes, None]:
    yield b"retry: %d\n\n" % RECONNECT_MS
    async with contextlib.aclosing(svc.feeds.follow(run_id, after)) as batches:
        async for batch in batches:
            if batch.data:
                yield batch.data  # shared by the run's listeners keeping up, not copied
            if batch.final is not None:
                # What the log already holds after the final state (webhook changes), then the end.
                later = await svc.feeds.after_final(run_id, batch.final.id)
                if later.data:
                    yield later.data
                return
            if not batch.events:
                if await svc.records.get(run_id) is None:
                    return
                yield b": keep-alive\n\n"


class RunEvents:
    """``GET {prefix}/runs/{id}/events``, answered below starlette (see the module's doc)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._runs = services.config.server.prefix + "/runs/"

    def run_id(self, scope: Scope) -> str | None:
        """The run id, when ``scope`` asks for a run's event stream; else None (starlette answers)."""
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(self._runs) or not path.endswith(_SUFFIX):
            return None
        run_id = path[len(self._runs) : -len(_SUFFIX)]
        return run_id if run_id and "/" not in run_id else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        try:
            run = await visible_run(self.services, scope, run_id)
            after = resume_after(scope)
        except HTTPError as exc:
            await send_error(send, exc)
            return
        except Exception:
            # As the control app's last handler does: logged (a progress URL's token never is), a 500.
            logger.exception("unhandled error in GET %s", redacted_path(scope["path"]))
            await send_error(send, ServerError("the gateway failed to handle the request"))
            return
        # Only the id is kept while the stream lasts, not the run as read.
        await EventStreamResponse(event_stream(self.services, run.run_id, after))(scope, receive, send)
