"""Replaying a stored request against the upstream, and turning its answer into an Outcome."""

from __future__ import annotations

import aiohttp

from asyncgate.headers import end_to_end
from asyncgate.intake import ATTEMPT_HEADER, RUN_ID_HEADER
from asyncgate.runs import ErrorCode, Outcome, Run, RunError, RunResult, RunState
from asyncgate.upstream import Upstream


class ResultTooLarge(Exception):
    """The upstream's body grew past limits.max_result_bytes."""


def outcome_of(result: RunResult) -> Outcome:
    """succeeded on 2xx; any other status fails the run, keeping the upstream's answer."""
    if 200 <= result.status < 300:
        return Outcome(RunState.SUCCEEDED, result=result)
    error = RunError(ErrorCode.UPSTREAM_ERROR, f"the upstream answered {result.status}")
    return Outcome(RunState.FAILED, result=result, error=error)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ResultTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _result_headers(response: aiohttp.ClientResponse) -> tuple[tuple[str, str], ...]:
    # Content-Length is recomputed when the result is served; framing belongs to each hop.
    kept = end_to_end(response.raw_headers, drop=frozenset({b"content-length"}))
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in kept)


async def replay(upstream: Upstream, run: Run, body: bytes, max_result_bytes: int) -> Outcome:
    """Send the run's request (marked with its id and attempt) and wait for the whole answer."""
    request = run.request
    headers = [*request.headers, (RUN_ID_HEADER, run.run_id), (ATTEMPT_HEADER, str(run.attempt))]
    url = upstream.url(request.path, request.query)
    try:
        response = await upstream.send(
            request.method, url, headers, body or None, deadline=upstream.run_timeout(request.timeout)
        )
        try:
            status, result_headers = response.status, _result_headers(response)
            try:
                content = await _read_limited(response, max_result_bytes)
            except ResultTooLarge:
                error = RunError(ErrorCode.RESULT_TOO_LARGE, f"the upstream's body exceeds {max_result_bytes} bytes")
                return Outcome(RunState.FAILED, error=error, status=status)
        finally:
            response.release()
    except TimeoutError:
        error = RunError(ErrorCode.TIMEOUT, f"the upstream did not answer within {request.timeout:g} s")
        return Outcome(RunState.FAILED, error=error)
    except aiohttp.ClientError as exc:
        error = RunError(
            ErrorCode.UPSTREAM_UNREACHABLE, f"the upstream could not be reached ({exc.__class__.__name__})"
        )
        return Outcome(RunState.FAILED, error=error)
    return outcome_of(RunResult(status, result_headers, content))
