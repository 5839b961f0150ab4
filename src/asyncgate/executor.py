"""The executor: claims queued runs, holds their upstream calls, renews leases, recovers lost runs."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_random_exponential

from asyncgate.config import Config
from asyncgate.errors import StoreError, StoreUnavailable
from asyncgate.metrics import Metrics
from asyncgate.replay import replay
from asyncgate.runs import ErrorCode, Outcome, Run, RunError, RunState, recovery_outcome
from asyncgate.store.base import Lease, RunStore
from asyncgate.tracing import NO_TRACING, Tracing
from asyncgate.upstream import Upstream

logger = logging.getLogger("asyncgate.executor")

P = ParamSpec("P")
T = TypeVar("T")

#: Called once a run's final state is recorded, e.g. to deliver its webhook.
FinishedCallback = Callable[[Run, Outcome], Awaitable[None]]

#: Pause before asking an unreachable store for work again.
STORE_RETRY_DELAY = 1.0
#: Expired runs handled per recovery pass.
RECOVERY_BATCH = 100


def owner_id() -> str:
    """A name for this gateway process, unique even when pods share a hostname."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Executor:
    """Runs queued work with at most ``limits.max_inflight`` upstream calls at once."""

    def __init__(
        self,
        config: Config,
        store: RunStore,
        upstream: Upstream,
        on_finished: FinishedCallback,
        metrics: Metrics,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.config = config
        self.tracing = tracing
        self.metrics = metrics
        self.store = store
        self.upstream = upstream
        self.on_finished = on_finished
        self.owner = owner_id()
        self._held: dict[asyncio.Task[None], Run] = {}
        #: The task of each held run while its upstream call is in progress (what a cancel stops).
        self._calls: dict[str, asyncio.Task[None]] = {}
        #: Runs a client asked to cancel: their task's CancelledError is a cancel, not a shutdown.
        self._cancelling: set[str] = set()
        #: Runs whose upstream call is over and whose outcome is being recorded: not renewed,
        #: since the recording itself ends the lease (renewing then would look like a lost lease).
        self._recording: set[str] = set()
        self._room = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._drain_started: float | None = None

    @property
    def inflight(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="asyncgate-claim"),
            asyncio.create_task(self._renew_loop(), name="asyncgate-renew"),
            asyncio.create_task(self._recovery_loop(), name="asyncgate-recover"),
            asyncio.create_task(self._cancel_loop(), name="asyncgate-cancel"),
        ]

    def cancel_local(self, run_id: str) -> bool:
        """Abort the upstream call of a run this gateway holds; False if it holds none."""
        task = self._calls.get(run_id)
        if task is None:
            return False
        if run_id not in self._cancelling:
            self._cancelling.add(run_id)
            task.cancel()
        return True

    def stop_claiming(self) -> None:
        """Take no new runs (a drain began); held runs go on."""
        if self._loops:
            self._loops[0].cancel()
        if self._drain_started is None:
            self._drain_started = time.monotonic()

    async def stop(self, drain_timeout: float) -> None:
        """Take no new runs, let held ones finish within ``drain_timeout`` s of the drain's start,
        then hand the rest back: re-queued at once when safe to send again, else failed as lost."""
        self.stop_claiming()
        assert self._drain_started is not None
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        left = drain_timeout - (time.monotonic() - self._drain_started)
        if self._held and left > 0:
            await asyncio.wait(list(self._held), timeout=left)
        remaining = dict(self._held)
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, return_exceptions=True)
        for run in remaining.values():
            await self._hand_back(run)

    async def _claim_loop(self) -> None:
        while True:
            room = self.config.limits.max_inflight - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                runs = await self.store.claim(self.owner, room, self.config.runs.poll_interval, self.config.runs.lease)
            except StoreError as exc:
                self.metrics.store_errors.inc()
                logger.warning("cannot claim runs: %s", exc)
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            for run in runs:
                task = asyncio.create_task(self._execute(run), name=f"asyncgate-run-{run.run_id}")
                self._held[task] = run
                task.add_done_callback(self._release)
                self.metrics.runs_inflight.set(len(self._held))
                if run.attempt == 1 and run.started_at is not None:
                    self.metrics.queue_wait.observe(max(0.0, run.started_at - run.created_at))
                    self.tracing.queue_wait(run)

    def _release(self, task: asyncio.Task[None]) -> None:
        self._held.pop(task, None)
        self.metrics.runs_inflight.set(len(self._held))
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("run task failed", exc_info=task.exception())

    async def _execute(self, run: Run) -> None:
        body = await self._with_store_retries(self.store.request_body, run.run_id)
        if body is None:
            return  # the run expired or was removed while queued
        logger.info("run %s started (attempt %d)", run.run_id, run.attempt, extra={"run_id": run.run_id})
        started = time.perf_counter()
        try:
            outcome = await self._call(run, body)
        finally:
            self.metrics.upstream_duration.observe(time.perf_counter() - started)
        self._recording.add(run.run_id)
        try:
            await self._record(run, outcome)
        finally:
            self._recording.discard(run.run_id)

    async def _call(self, run: Run, body: bytes) -> Outcome:
        """The upstream call's outcome, or CANCELLED when a client cancels the run meanwhile.

        A cancel cancels this very task (no second task per run: 10,000 held runs must stay
        cheap); cancelling it closes the upstream connection, so the upstream sees the client go.
        """
        task = asyncio.current_task()
        assert task is not None
        self._calls[run.run_id] = task
        try:
            return await replay(self.upstream, run, body, self.config.limits.max_result_bytes, self.tracing)
        except asyncio.CancelledError:
            if run.run_id not in self._cancelling or task.uncancel() > 0:
                raise  # a shutdown or a lost lease, not (only) a client's cancel
            error = RunError(ErrorCode.CANCELLED, "cancelled by a client while running")
            return Outcome(RunState.CANCELLED, error=error)
        finally:
            del self._calls[run.run_id]
            self._cancelling.discard(run.run_id)

    async def _record(self, run: Run, outcome: Outcome) -> None:
        recorded = await self._with_store_retries(
            self.store.finish, run.run_id, run.attempt, outcome, self.config.runs.retention
        )
        if not recorded:
            logger.warning(
                "run %s: attempt %d no longer holds the run; its outcome is discarded",
                run.run_id,
                run.attempt,
                extra={"run_id": run.run_id},
            )
            return
        await self._finished(run, outcome)

    async def _finished(self, run: Run, outcome: Outcome) -> None:
        code = outcome.error.code if outcome.error else ""
        self.metrics.runs_finished.labels(outcome.state.value, code).inc()
        extra: dict[str, object] = {
            "run_id": run.run_id,
            "status": outcome.state.value,
            "upstream_status": outcome.upstream_status,
        }
        if run.started_at is not None:
            extra["duration_ms"] = round((time.time() - run.started_at) * 1000, 1)
        why = f" {code}" if code else ""
        logger.info("run %s %s (upstream %s)%s", run.run_id, outcome.state, outcome.upstream_status, why, extra=extra)
        await self.on_finished(run, outcome)

    async def _with_store_retries(self, operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        # A run's upstream answer is too valuable to drop because the store blinked: keep
        # trying until the store is back or the gateway shuts down (which cancels this).
        try:
            return await operation(*args, **kwargs)
        except StoreUnavailable:
            pass  # retried below, with backoff; the first try skips tenacity's per-call cost
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            stop=stop_never,
            reraise=True,
        ):
            with attempt:
                return await operation(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.runs.lease_renewal)
            for task, run in list(self._held.items()):
                if run.run_id in self._recording:
                    continue
                try:
                    lease = await self.store.renew(run.run_id, run.attempt, self.config.runs.lease)
                except StoreError:
                    self.metrics.store_errors.inc()
                    continue
                if self._held.get(task) is not run or run.run_id in self._recording:
                    # It finished while this loop went through the others (10,000 held runs take
                    # a while): the store's "not running" is its own finish, not a lost lease.
                    continue
                self.metrics.lease_renewals.labels(lease.value).inc()
                if lease is Lease.CANCEL:
                    # The cancel message may have been missed (it is fire-and-forget); the flag is not.
                    self.cancel_local(run.run_id)
                elif lease is Lease.LOST:
                    # Another gateway reclaimed the run: this attempt's answer would be refused.
                    extra = {"run_id": run.run_id}
                    logger.warning("run %s: lease lost, abandoning attempt %d", run.run_id, run.attempt, extra=extra)
                    task.cancel()

    async def _cancel_loop(self) -> None:
        while True:
            try:
                async for run_id in self.store.cancellations():
                    if self.cancel_local(run_id):
                        logger.info("run %s: cancelling its upstream call", run_id, extra={"run_id": run_id})
            except StoreError as exc:
                logger.warning("cancel messages interrupted: %s", exc)
            await asyncio.sleep(STORE_RETRY_DELAY)

    async def _recovery_loop(self) -> None:
        while True:
            try:
                for run in await self.store.expired(RECOVERY_BATCH):
                    if run.state is RunState.RUNNING and not self._holds(run):
                        await self._recover(run)
                await self.store.purge()
                self.metrics.runs_queued.set(await self.store.queued_count())
            except StoreError as exc:
                self.metrics.store_errors.inc()
                logger.warning("cannot look for lost runs: %s", exc)
            await asyncio.sleep(self.config.runs.recovery_interval)

    def _holds(self, run: Run) -> bool:
        return any(held.run_id == run.run_id and held.attempt == run.attempt for held in self._held.values())

    async def _recover(self, run: Run) -> None:
        outcome = recovery_outcome(run, self.config.runs.max_attempts)
        if outcome is None:
            if await self.store.requeue(run.run_id, run.attempt):
                self.metrics.runs_reclaimed.labels("requeued").inc()
                extra = {"run_id": run.run_id}
                logger.warning(
                    "run %s: holder lost, queued again after attempt %d", run.run_id, run.attempt, extra=extra
                )
            return
        if await self.store.finish(run.run_id, run.attempt, outcome, self.config.runs.retention):
            self.metrics.runs_reclaimed.labels("failed").inc()
            await self._finished(run, outcome)

    async def _hand_back(self, run: Run) -> None:
        try:
            await self._recover(run)
        except StoreError:
            # The lease will expire and another gateway will recover the run.
            extra = {"run_id": run.run_id}
            logger.warning("run %s: could not hand back on shutdown; its lease will expire", run.run_id, extra=extra)
