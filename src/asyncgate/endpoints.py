"""The gateway's own API under its prefix: runs (status, result, cancel, events, list), health.

Thin handlers: parse, call the store or a service, answer.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asyncgate import progress
from asyncgate.config import Config
from asyncgate.errors import BadRequest, Conflict, Gone, NotFound, StoreError, WebhookUrlDeleted
from asyncgate.eventstream import (
    EventStreamResponse,
    event_stream,
    resume_after,
    run_not_found,
    store_unavailable,
    visible_run,
)
from asyncgate.headers import LINK, LOCATION, RETRY_AFTER, WEBHOOK
from asyncgate.intake import WEBHOOK_PARAM, validate_webhook_url
from asyncgate.lifecycle import progress_body
from asyncgate.links import REDIRECT_PARAM, REDIRECT_TO_RESULT, RESULT, RunLinks, retry_after
from asyncgate.metrics import CONTENT_TYPE
from asyncgate.policies import effective
from asyncgate.responses import JSONResponse, stored_response
from asyncgate.runs import ErrorCode, Run, RunState, now
from asyncgate.services import Services
from asyncgate.status import status_document
from asyncgate.store.base import CancelResult, QueuePosition
from asyncgate.waiting import wait_until_final

#: How long DELETE waits for the holder of a running run to confirm its cancellation.
CANCEL_CONFIRM_SECONDS = 5.0
DEFAULT_PAGE = 50
MAX_PAGE = 200
#: Runs one count examines at most, newest first, so that counting a large store stays quick.
COUNT_LIMIT = 10_000
#: Query parameters: the status's long poll, an event stream's resumption, the listing's filter and pages.
WAIT_PARAM = "wait"
STATUS_PARAM = "status"
LIMIT_PARAM = "limit"
CURSOR_PARAM = "cursor"


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def _run_or_404(request: Request) -> Run:
    return await visible_run(services(request), request.scope, request.path_params["run_id"])


def _links(request: Request) -> RunLinks:
    return RunLinks(services(request).config.server.prefix)


def _poll_after(request: Request) -> int:
    """Seconds a client polling an unfinished run should wait before asking again."""
    return retry_after(services(request).config.runs.retry_after)


def _status_response(
    request: Request, run: Run, status_code: int = 200, queue: QueuePosition | None = None
) -> Response:
    links = _links(request)
    headers: dict[str, str] = {LINK: links.header(run.run_id)}
    if not run.state.is_final:
        headers[RETRY_AFTER] = str(_poll_after(request))
    document = status_document(run, links)
    if queue is not None:
        document["queue"] = {"ahead": queue.ahead, "estimated_wait": queue.wait}
    return JSONResponse(document, status_code=status_code, headers=headers)


async def _queue_position(request: Request, run: Run) -> QueuePosition | None:
    """Where a queued run stands; None for any other, or when the store cannot say right now."""
    if run.state is not RunState.QUEUED:
        return None
    try:
        return await services(request).records.queue_position(run)
    except StoreError:
        return None  # the status itself was read: a position is a nicety


def _has_result(run: Run) -> bool:
    """Whether the run ended with an upstream response kept (a body over the limit is not)."""
    too_large = run.error is not None and run.error.code == ErrorCode.RESULT_TOO_LARGE
    return run.state.is_final and run.upstream_status is not None and not too_large


def _redirect(request: Request) -> bool:
    value = request.query_params.get(REDIRECT_PARAM)
    if value is not None and value != REDIRECT_TO_RESULT:
        raise BadRequest(f"{REDIRECT_PARAM} must be {REDIRECT_TO_RESULT}", code="invalid_parameter")
    return value is not None


def _seconds(request: Request, name: str, maximum: float) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not value >= 0:
        raise BadRequest(
            f"{name} must be a number of seconds (at most {maximum:g} is honoured)", code="invalid_parameter"
        )
    # Like Prefer: wait (RFC 7240), a longer wait than the gateway allows is cut, not refused.
    return min(value, maximum)


async def run_status(request: Request) -> Response:
    run = await _run_or_404(request)
    wait = _seconds(request, WAIT_PARAM, services(request).config.limits.max_wait)
    redirect = _redirect(request)
    if wait and not run.state.is_final:
        try:
            run = await wait_until_final(services(request).records, run.run_id, wait) or run
        except StoreError as exc:
            raise store_unavailable() from exc
    if redirect and _has_result(run):
        # Opt-in only: a client that follows redirects blindly would otherwise fetch a result,
        # perhaps a large one, when it asked for a status. 303 makes the follow-up a GET.
        # The body is the status document, the "short hypertext note" RFC 9110 asks of a 303.
        links = _links(request)
        headers: dict[str, str] = {LOCATION: links.urls(run.run_id)[RESULT], LINK: links.header(run.run_id)}
        return JSONResponse(status_document(run, links), status_code=303, headers=headers)
    return _status_response(request, run, queue=await _queue_position(request, run))


async def run_result(request: Request) -> Response:
    run = await _run_or_404(request)
    try:
        result = await services(request).records.result(run.run_id)
    except StoreError as exc:
        raise store_unavailable() from exc
    if result is not None:
        return stored_response(result)
    if not run.state.is_final:
        raise Conflict("the run has not finished yet", code="run_not_finished", retry_after=_poll_after(request))
    reason = run.error.message if run.error else "the run ended without one"
    raise Conflict(f"the run has no upstream response: {reason}", code="no_upstream_response")


async def cancel_run(request: Request) -> Response:
    svc = services(request)
    run_id = (await _run_or_404(request)).run_id
    try:
        outcome = await svc.records.cancel(run_id, svc.config.runs.retention)
        if outcome is CancelResult.REQUESTED:
            svc.executor.cancel_local(run_id)
            run = await wait_until_final(svc.records, run_id, CANCEL_CONFIRM_SECONDS)
        else:
            run = await svc.records.get(run_id)
    except StoreError as exc:
        raise store_unavailable() from exc
    if outcome is CancelResult.MISSING or run is None:
        raise run_not_found()
    if outcome is CancelResult.FINISHED:
        raise Conflict(f"the run has already finished ({run.state})", code="run_finished")
    if outcome is CancelResult.CANCELLED:
        svc.webhooks.wake()
    return _status_response(request, run, 200 if run.state.is_final else 202)


def _webhook_url(request: Request) -> str | None:
    """The URL a redelivery names, given as at submission (?webhookEndpoint= or Asyncgate-Webhook)."""
    urls = [*request.query_params.getlist(WEBHOOK_PARAM), *request.headers.getlist(WEBHOOK)]
    if len(urls) > 1:
        raise BadRequest(f"{WEBHOOK_PARAM} is given more than once", code="invalid_webhook_url")
    allow = services(request).config.webhooks.allow
    return validate_webhook_url(urls[0], allow) if urls else None


async def redeliver_webhook(request: Request) -> Response:
    svc = services(request)
    run = await _run_or_404(request)
    if run.request.webhook_url is None:
        raise Conflict("the run has no webhook", code="no_webhook")
    if not run.state.is_final:
        raise Conflict("the run has not finished yet", code="run_not_finished", retry_after=_poll_after(request))
    url = _webhook_url(request)
    try:
        if not await svc.deliveries.redeliver(run.run_id, url):
            raise run_not_found()
        run = await svc.records.get(run.run_id) or run
    except WebhookUrlDeleted:
        raise Conflict(
            f"the run's webhook URL was deleted when its last delivery ended; name it again with ?{WEBHOOK_PARAM}=",
            code="webhook_url_deleted",
        ) from None
    except StoreError as exc:
        raise store_unavailable() from exc
    svc.webhooks.wake()
    return JSONResponse(status_document(run, _links(request)), status_code=202)


async def _body_up_to(request: Request, limit: int) -> bytes:
    """The request's body, read no further than one byte past ``limit``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


async def report_progress(request: Request) -> Response:
    """An upstream's progress report, to the capability URL its attempt was given (progress.py).

    No caller credentials: the upstream has none, and the URL's token is the capability. A wrong
    token is told apart from nothing (404, as any unknown URL); a finished attempt gets 410.
    """
    svc = services(request)
    run_id, attempt_text = request.path_params["run_id"], request.path_params["attempt"]
    attempt = int(attempt_text) if attempt_text.isdigit() and len(attempt_text) < 10 else 0
    try:
        key = await svc.execution.progress_key()
    except StoreError as exc:
        raise store_unavailable() from exc
    if attempt < 1 or not progress.token_matches(key, run_id, attempt, request.path_params["token"]):
        raise NotFound("no such progress URL", code="not_found")
    report = progress.parse_report(await _body_up_to(request, progress.MAX_REPORT_BYTES))
    event = progress.progress_event(report, attempt, now())
    hook = progress_body(run_id, event)
    try:
        kept, max_hooks = progress.KEPT_REPORTS, svc.config.webhooks.max_pending_events
        event_id = await svc.execution.report_progress(run_id, attempt, event, kept, hook, max_hooks)
    except StoreError as exc:
        raise store_unavailable() from exc
    if event_id is None:
        raise Gone("this attempt of the run is over: stop reporting its progress", code="attempt_over")
    svc.webhooks.wake_hooks()  # in case the run's webhook asked for progress
    return Response(status_code=204)


def _is_cursor(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


async def run_events(request: Request) -> Response:
    """Reached only by what RunEvents leaves to starlette (HEAD): the same stream."""
    run = await _run_or_404(request)
    return EventStreamResponse(event_stream(services(request), run.run_id, resume_after(request.scope)))


async def list_runs(request: Request) -> Response:
    params = request.query_params
    state = None
    if STATUS_PARAM in params:
        try:
            state = RunState(params[STATUS_PARAM])
        except ValueError:
            allowed = ", ".join(s.value for s in RunState)
            raise BadRequest(f"{STATUS_PARAM} must be one of {allowed}", code="invalid_parameter") from None
    try:
        limit = int(params.get(LIMIT_PARAM, DEFAULT_PAGE))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"{LIMIT_PARAM} must be a whole number from 1 to {MAX_PAGE}", code="invalid_parameter")
    cursor = params.get(CURSOR_PARAM)
    if cursor is not None and not _is_cursor(cursor):
        raise BadRequest(f"{CURSOR_PARAM} must be the next_cursor of a previous page", code="invalid_parameter")
    svc = services(request)
    principal = svc.access.principal(request.scope)
    caller = None if principal.sees_all else principal.caller
    try:
        runs, cursor = await svc.records.list_runs(caller, state, limit, cursor)
    except StoreError as exc:
        raise store_unavailable() from exc
    links = _links(request)
    return JSONResponse({"runs": [status_document(run, links) for run in runs], "next_cursor": cursor})


async def count_runs(request: Request) -> Response:
    """How many of the caller's runs are in each state, over the newest COUNT_LIMIT runs."""
    svc = services(request)
    principal = svc.access.principal(request.scope)
    caller = None if principal.sees_all else principal.caller
    counts = dict.fromkeys(RunState, 0)
    cursor = None
    examined = 0
    # Counted page by page through the listing, so the stores need nothing new and the count
    # obeys exactly the listing's access rule.
    try:
        while examined < COUNT_LIMIT:
            runs, cursor = await svc.records.list_runs(caller, None, MAX_PAGE, cursor)
            for run in runs:
                counts[run.state] += 1
            examined += len(runs)
            if cursor is None:
                break
    except StoreError as exc:
        raise store_unavailable() from exc
    body = {"counts": {state.value: n for state, n in counts.items()}, "total": examined, "complete": cursor is None}
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    svc = services(request)
    if not svc.config.runs.execute:
        # The executor's recovery loop keeps this gauge current; a replica without one reads it
        # at scrape time, so that queue-depth dashboards and autoscalers see it on every replica.
        try:
            svc.metrics.runs_queued.set(await svc.execution.queued_count())
        except StoreError:
            svc.metrics.store_errors.inc()
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)


def route_policies(config: Config) -> list[dict[str, Any]]:
    """Each route policy with the settings in force on it (the gateway's where it sets none)."""
    defaults = {
        "timeout": config.runs.timeout,
        "max_attempts": config.runs.max_attempts,
        "max_body_bytes": config.limits.max_body_bytes,
        "webhook": config.webhooks.default_url,
        "share": config.limits.max_per_caller,
    }
    return [effective(route, defaults) for route in config.routes]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    if svc.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await svc.lifecycle.ping()
        report = await svc.lifecycle.durability()
    except StoreError as exc:
        # The reason comes from the store (unreachable, refusing writes, another upstream's
        # runs), never from a request, and holds no secret: Redis errors name no credentials.
        body = {"status": "unavailable", "store": svc.store_kind, "reason": str(exc)}
        return JSONResponse(body, status_code=503)
    if svc.config.routes:
        report = {**report, "routes": route_policies(svc.config)}
    return JSONResponse({"status": "ready", "store": svc.store_kind, **report})


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/runs", list_runs, methods=["GET"]),
        # Before /runs/{run_id}; run ids are 22 characters long, so none is "counts".
        Route("/runs/counts", count_runs, methods=["GET"]),
        Route("/runs/{run_id}", run_status, methods=["GET"]),
        Route("/runs/{run_id}", cancel_run, methods=["DELETE"]),
        Route("/runs/{run_id}/result", run_result, methods=["GET"]),
        Route("/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/runs/{run_id}/webhook", redeliver_webhook, methods=["POST"]),
        Route("/runs/{run_id}/attempts/{attempt}/progress/{token}", report_progress, methods=["POST"]),
    ]
