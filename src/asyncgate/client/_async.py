"""The asyncio client: ``AsyncClient`` and the ``AsyncRun`` handles it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from asyncgate.client import _protocol as protocol
from asyncgate.client._models import Result, RunEvent, RunPage, RunStatus
from asyncgate.client._protocol import DEFAULT_PREFIX, DEFAULT_TIMEOUT, Call, HeaderInput, ParamInput
from asyncgate.client.errors import AsyncgateClientError, TransportError, WaitTimeout

logger = logging.getLogger("asyncgate.client")


class AsyncClient:
    """A connection pool to one gateway, for asyncio. ``async with`` it, or ``await aclose()``.

    The same arguments and methods as ``Client``, awaited.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        headers: HeaderInput = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        prefix: str = DEFAULT_PREFIX,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = protocol.Endpoints(prefix)
        base_url, headers = protocol.connection(base_url, token, headers, environ)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            limits=protocol.DEFAULT_LIMITS,
            transport=transport,
            trust_env=trust_env,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: ParamInput = None,
        headers: HeaderInput = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        # The run's time limit on the gateway, not a local deadline: asyncio.timeout cannot say it.
        timeout: float | None = None,  # noqa: ASYNC109
        webhook_events: Sequence[str] | None = None,
    ) -> AsyncRun:
        """Submit ``method path`` as a run; ``timeout`` shortens the run's own time limit on the gateway."""
        call = protocol.submit_call(
            method,
            path,
            json=json,
            content=content,
            params=params,
            headers=headers,
            webhook=webhook,
            idempotency_key=idempotency_key,
            timeout=timeout,
            webhook_events=webhook_events,
        )
        submitted = protocol.parse_submitted(await self._send(call))
        return AsyncRun(self, submitted.run_id, location=submitted.location, replayed=submitted.replayed)

    async def run(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: ParamInput = None,
        headers: HeaderInput = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the run's time limit on the gateway
        wait_timeout: float | None = None,
    ) -> Result:
        """Submit, wait for the run to succeed (at most ``wait_timeout`` s) and return its result."""
        run = await self.submit(
            method,
            path,
            json=json,
            content=content,
            params=params,
            headers=headers,
            webhook=webhook,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        await run.wait(wait_timeout)
        return await run.result()

    def attach(self, run_id: str) -> AsyncRun:
        """A handle on an existing run (no call is made)."""
        return AsyncRun(self, run_id)

    async def list_runs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> RunPage:
        """One page of runs, newest first."""
        return protocol.parse_page(await self._send(protocol.list_call(self.endpoints, status, limit, cursor)))

    async def iter_runs(self, *, status: str | None = None, page_size: int | None = None) -> AsyncIterator[RunStatus]:
        """Every run, newest first, page after page."""
        cursor = None
        while True:
            page = await self.list_runs(status=status, limit=page_size, cursor=cursor)
            for run in page.runs:
                yield run
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _request(self, call: Call) -> httpx.Request:
        return self._http.build_request(
            call.method,
            call.url,
            params=call.params or None,
            headers=call.headers,
            content=call.content,
            timeout=protocol.timeout_for(self._http.timeout, call),
        )

    async def _send(self, call: Call) -> httpx.Response:
        try:
            return await self._http.send(self._request(call))
        except protocol.RESUMABLE_ERRORS as exc:
            raise protocol.transport_error(call, exc) from exc

    @contextlib.asynccontextmanager
    async def _stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        try:
            response = await self._http.send(self._request(call), stream=True)
        except protocol.RESUMABLE_ERRORS as exc:
            raise protocol.transport_error(call, exc) from exc
        try:
            if response.status_code != 200:
                await response.aread()  # an error body, for the error
            yield response
        finally:
            await response.aclose()


class AsyncRun:
    """A handle on one run, for asyncio: the same methods as ``Run``, awaited."""

    def __init__(
        self, client: AsyncClient, run_id: str, *, location: str | None = None, replayed: bool = False
    ) -> None:
        self.client = client
        self.run_id = run_id
        #: The status URL path the gateway answered the submission with.
        self.location = location
        #: True when the submission replayed an Idempotency-Key: this run was created earlier.
        self.replayed = replayed
        self._log = {"run_id": run_id}

    def __repr__(self) -> str:
        return f"<AsyncRun {self.run_id}>"

    async def status(self, wait: int | None = None) -> RunStatus:
        """The run's status now; with ``wait``, once it is final or after ``wait`` s (the gateway's limit is 60 s)."""
        call = protocol.status_call(self.client.endpoints, self.run_id, wait)
        return protocol.parse_status(await self.client._send(call))

    # ``timeout`` rather than asyncio.timeout: it shapes the long polls, and WaitTimeout carries the run.
    async def wait(self, timeout: float | None = None) -> RunStatus:  # noqa: ASYNC109
        """Wait until the run is final: its status if it succeeded; RunFailed, RunCancelled or WaitTimeout.

        It long-polls the gateway, and a lost connection is resumed with capped backoff, not raised.
        """
        plan = protocol.WaitPlan(self.client.endpoints, self.run_id, timeout, time.monotonic())
        while (call := plan.next_call(time.monotonic())) is not None:
            try:
                response = await self.client._send(call)
            except TransportError as exc:
                logger.info("run %s: the gateway is out of reach, resuming: %s", self.run_id, exc, extra=self._log)
                plan.failed()
            else:
                if (status := plan.received(response, time.monotonic())) is not None:
                    return protocol.settle(self, status, await self._failed_answer(status))
            await asyncio.sleep(plan.pause(time.monotonic()))
        raise WaitTimeout(self, plan.last, timeout or 0.0)

    async def _failed_answer(self, status: RunStatus) -> Result | None:
        """The upstream's answer to a failed run, for RunFailed; None if it has none or it cannot be had."""
        if not protocol.has_failed_answer(status):
            return None
        try:
            return await self.result()
        except AsyncgateClientError as exc:
            logger.info("run %s: the failed run's answer is out of reach: %s", self.run_id, exc, extra=self._log)
            return None

    async def result(self) -> Result:
        """The upstream's response (status, headers, body); APIError ``run_not_finished`` before there is one."""
        return protocol.parse_result(await self.client._send(protocol.result_call(self.client.endpoints, self.run_id)))

    async def cancel(self) -> RunStatus:
        """Cancel the run: its status (``cancelled``, or still ``running`` while the call is being aborted)."""
        return protocol.parse_status(await self.client._send(protocol.cancel_call(self.client.endpoints, self.run_id)))

    async def resend_webhook(self, webhook: str | None = None) -> RunStatus:
        """Deliver the run's webhook again (once it is final) to ``webhook``, or to the run's own URL
        while the gateway still holds it (it is deleted once a delivery is final); its status, with
        the delivery pending."""
        call = protocol.resend_webhook_call(self.client.endpoints, self.run_id, webhook)
        return protocol.parse_status(await self.client._send(call))

    async def events(self) -> AsyncIterator[RunEvent]:
        """Every event of the run as it happens (states, output, webhook), to its final state; reconnects itself."""
        plan = protocol.EventsPlan(self.client.endpoints, self.run_id)
        while not plan.done:
            try:
                async with self.client._stream(plan.next_call()) as response:
                    if plan.opened(response):
                        async for text in response.aiter_text():
                            for event in plan.feed(text):
                                yield event
                            if plan.done:
                                return
            except protocol.STREAM_ERRORS as exc:
                logger.info("run %s: the events stream broke, reconnecting: %s", self.run_id, exc, extra=self._log)
            await asyncio.sleep(plan.pause())

    async def stream(self) -> AsyncIterator[RunEvent]:
        """What the run produces as it works: its state changes and live ``output`` (and
        ``output_dropped``, ``progress``) events as they come, ending with its final state.

        ``event.output`` is each piece of a streaming upstream's answer; an attempt that starts
        again (its holder was lost) shows as ``queued``, then ``running`` with the next attempt.
        """
        async for event in self.events():
            if event.event != "webhook":
                yield event
