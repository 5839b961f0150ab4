"""The gateway's own API under its prefix: run status, result, health. Thin handlers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asyncgate.errors import Conflict, NotFound, ServiceUnavailable, StoreUnavailable
from asyncgate.headers import encode
from asyncgate.responses import JSONResponse
from asyncgate.runs import Run, RunResult
from asyncgate.services import Services

#: Seconds a client polling an unfinished run should wait before asking again.
POLL_RETRY_AFTER = 1
#: Statuses that must not carry Content-Length (RFC 9110 §8.6).
_BODYLESS = frozenset({204, 304})


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def _run_or_404(request: Request) -> Run:
    run_id = request.path_params["run_id"]
    try:
        run = await services(request).store.get(run_id)
    except StoreUnavailable as exc:
        raise ServiceUnavailable("the run store is unavailable", code="store_unavailable", retry_after=1) from exc
    if run is None:
        raise NotFound("no run with this id", code="run_not_found")
    return run


async def run_status(request: Request) -> Response:
    run = await _run_or_404(request)
    headers = {} if run.state.is_final else {"Retry-After": str(POLL_RETRY_AFTER)}
    return JSONResponse(run.to_public(), headers=headers)


async def run_result(request: Request) -> Response:
    run = await _run_or_404(request)
    try:
        result = await services(request).store.result(run.run_id)
    except StoreUnavailable as exc:
        raise ServiceUnavailable("the run store is unavailable", code="store_unavailable", retry_after=1) from exc
    if result is not None:
        return stored_response(result)
    if not run.state.is_final:
        raise Conflict("the run has not finished yet", code="run_not_finished", retry_after=POLL_RETRY_AFTER)
    reason = run.error.message if run.error else "the run ended without one"
    raise Conflict(f"the run has no upstream response: {reason}", code="no_upstream_response")


def stored_response(result: RunResult) -> Response:
    """Exactly the upstream's answer: status, end-to-end headers (repeats kept) and body bytes."""
    response = Response(status_code=result.status)
    response.body = result.body
    response.raw_headers = encode(result.headers)
    if result.status not in _BODYLESS:
        response.raw_headers.append((b"content-length", str(len(result.body)).encode()))
    return response


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    if svc.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await svc.store.ping()
    except StoreUnavailable:
        return JSONResponse({"status": "unavailable", "store": svc.store_kind}, status_code=503)
    return JSONResponse({"status": "ready", "store": svc.store_kind})


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/runs/{run_id}", run_status, methods=["GET"]),
        Route("/runs/{run_id}/result", run_result, methods=["GET"]),
    ]
