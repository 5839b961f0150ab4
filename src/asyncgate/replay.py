"""Replaying a stored request against the upstream, and turning its answer into an Outcome."""

from __future__ import annotations

import asyncio

from asyncgate.errors import ResultTooLarge, UpstreamError, UpstreamTimeout
from asyncgate.headers import ATTEMPT, CONTENT_LENGTH_RAW, NOT_REPLAYED, PROGRESS_URL, RUN_ID, encode, end_to_end, raw
from asyncgate.output import Output, OutputSink
from asyncgate.runs import ErrorCode, Headers, Outcome, Run, RunError, RunResult, RunState
from asyncgate.tracing import NO_TRACING, Tracing, with_span
from asyncgate.upstream import Response, Upstream

#: As the upstream sees them, on every request the executor replays.
_RUN_ID = RUN_ID.encode("ascii")
_ATTEMPT = ATTEMPT.encode("ascii")
_PROGRESS_URL = PROGRESS_URL.encode("ascii")
#: Never replayed as the client sent it: only the executor announces a progress URL.
_DROPPED = NOT_REPLAYED | {raw(PROGRESS_URL)}


def outcome_of(result: RunResult) -> Outcome:
    """succeeded on 2xx; any other status fails the run, keeping the upstream's answer."""
    if 200 <= result.status < 300:
        return Outcome(RunState.SUCCEEDED, result=result)
    error = RunError(ErrorCode.UPSTREAM_ERROR, f"the upstream answered {result.status}")
    return Outcome(RunState.FAILED, result=result, error=error)


async def _read_limited(response: Response, limit: int, sink: OutputSink | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.chunks():
        size += len(chunk)
        if size > limit:
            raise ResultTooLarge()
        chunks.append(chunk)
        if sink is not None:
            await sink.feed(chunk)
    return b"".join(chunks)


async def _read_body(response: Response, limit: int, sink: OutputSink | None) -> bytes:
    """The whole body; a streaming one is relayed as output too, all of it written before returning."""
    if sink is None:
        return await _read_limited(response, limit, None)
    try:
        content = await _read_limited(response, limit, sink)
    except BaseException:
        sink.abort()
        raise
    await sink.close()
    return content


def _result_headers(response: Response) -> tuple[tuple[str, str], ...]:
    # Content-Length is recomputed when the result is served; framing belongs to each hop.
    kept = end_to_end(response.raw_headers, drop=frozenset({CONTENT_LENGTH_RAW}))
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in kept)


async def replay(
    upstream: Upstream,
    run: Run,
    body: bytes,
    max_result_bytes: int,
    tracing: Tracing = NO_TRACING,
    output: Output | None = None,
    progress_url: str | None = None,
) -> Outcome:
    """Send the run's request (marked with its id and attempt) and wait for the whole answer.

    Traced, the request names the attempt's span, so the upstream's own spans nest under it.
    With ``output``, a streaming answer is relayed as the run's output events as it arrives.
    With ``progress_url``, the request announces where the upstream may report its progress.
    """
    with tracing.upstream_attempt(run) as span:
        announced = ((_PROGRESS_URL, progress_url.encode("ascii")),) if progress_url else ()
        outcome = await _send(upstream, run, body, max_result_bytes, span.headers, output, announced)
        span.finish(outcome.upstream_status, outcome.error.code if outcome.error else None)
        return outcome


async def _send(
    upstream: Upstream,
    run: Run,
    body: bytes,
    max_result_bytes: int,
    trace: Headers,
    output: Output | None,
    announced: tuple[tuple[bytes, bytes], ...],
) -> Outcome:
    request = run.request
    # Runs stored by an earlier version may hold fields that are not replayed now: filtered again.
    headers = end_to_end(encode(with_span(request.headers, trace)), drop=_DROPPED)
    headers += ((_RUN_ID, run.run_id.encode("ascii")), (_ATTEMPT, str(run.attempt).encode()))
    headers += announced
    target = upstream.target(request.path.encode("latin-1"), request.query.encode("latin-1"))
    try:
        # The run's own timeout bounds the whole exchange, connect to last byte.
        async with asyncio.timeout(request.timeout):
            response = await upstream.request(
                request.method.encode("ascii"),
                target,
                headers,
                body or None,
                connect_timeout=min(upstream.connect_timeout, request.timeout),
            )
            try:
                status, result_headers = response.status, _result_headers(response)
                sink = None
                if output is not None:
                    sink = output.sink(run.run_id, run.attempt, response.raw_headers, run.request.hooks("output"))
                try:
                    content = await _read_body(response, max_result_bytes, sink)
                except ResultTooLarge:
                    error = RunError(
                        ErrorCode.RESULT_TOO_LARGE, f"the upstream's body exceeds {max_result_bytes} bytes"
                    )
                    return Outcome(RunState.FAILED, error=error, status=status)
            finally:
                response.release()
    except (TimeoutError, UpstreamTimeout):
        error = RunError(ErrorCode.TIMEOUT, f"the upstream did not answer within {request.timeout:g} s")
        return Outcome(RunState.FAILED, error=error)
    except UpstreamError as exc:
        error = RunError(ErrorCode.UPSTREAM_UNREACHABLE, f"the upstream could not be reached ({exc})")
        return Outcome(RunState.FAILED, error=error)
    return outcome_of(RunResult(status, result_headers, content))
