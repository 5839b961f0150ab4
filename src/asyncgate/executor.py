"""The executor: claims queued runs, holds their upstream calls, renews leases, recovers lost runs."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_random_exponential

from asyncgate.config import Config
from asyncgate.errors import StoreUnavailable
from asyncgate.replay import replay
from asyncgate.runs import Outcome, Run, RunState, recovery_outcome
from asyncgate.store.base import RunStore
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

    def __init__(self, config: Config, store: RunStore, upstream: Upstream, on_finished: FinishedCallback) -> None:
        self.config = config
        self.store = store
        self.upstream = upstream
        self.on_finished = on_finished
        self.owner = owner_id()
        self._held: dict[asyncio.Task[None], Run] = {}
        self._room = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def inflight(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="asyncgate-claim"),
            asyncio.create_task(self._renew_loop(), name="asyncgate-renew"),
            asyncio.create_task(self._recovery_loop(), name="asyncgate-recover"),
        ]

    async def stop(self, drain_timeout: float) -> None:
        """Take no new runs, let held ones finish for ``drain_timeout`` s, then hand the rest back."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._held:
            await asyncio.wait(list(self._held), timeout=drain_timeout)
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
            except StoreUnavailable as exc:
                logger.warning("cannot claim runs, the store is unavailable: %s", exc)
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            for run in runs:
                task = asyncio.create_task(self._execute(run), name=f"asyncgate-run-{run.run_id}")
                self._held[task] = run
                task.add_done_callback(self._release)

    def _release(self, task: asyncio.Task[None]) -> None:
        self._held.pop(task, None)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("run task failed", exc_info=task.exception())

    async def _execute(self, run: Run) -> None:
        body = await self._with_store_retries(self.store.request_body, run.run_id)
        if body is None:
            return  # the run expired or was removed while queued
        logger.info("run %s started (attempt %d)", run.run_id, run.attempt)
        outcome = await replay(self.upstream, run, body, self.config.limits.max_result_bytes)
        await self._record(run, outcome)

    async def _record(self, run: Run, outcome: Outcome) -> None:
        recorded = await self._with_store_retries(
            self.store.finish, run.run_id, run.attempt, outcome, self.config.runs.retention
        )
        if not recorded:
            logger.warning(
                "run %s: attempt %d no longer holds the run; its outcome is discarded", run.run_id, run.attempt
            )
            return
        code = outcome.error.code if outcome.error else "-"
        logger.info("run %s %s (upstream %s, %s)", run.run_id, outcome.state, outcome.upstream_status, code)
        await self.on_finished(run, outcome)

    async def _with_store_retries(self, operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        # A run's upstream answer is too valuable to drop because the store blinked: keep
        # trying until the store is back or the gateway shuts down (which cancels this).
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
                try:
                    held = await self.store.renew(run.run_id, run.attempt, self.config.runs.lease)
                except StoreUnavailable:
                    continue
                if not held:
                    # Another gateway reclaimed the run: this attempt's answer would be refused.
                    logger.warning("run %s: lease lost, abandoning attempt %d", run.run_id, run.attempt)
                    task.cancel()

    async def _recovery_loop(self) -> None:
        while True:
            try:
                for run in await self.store.expired(RECOVERY_BATCH):
                    if run.state is RunState.RUNNING and not self._holds(run):
                        await self._recover(run)
            except StoreUnavailable as exc:
                logger.warning("cannot look for lost runs, the store is unavailable: %s", exc)
            await asyncio.sleep(self.config.runs.recovery_interval)

    def _holds(self, run: Run) -> bool:
        return any(held.run_id == run.run_id and held.attempt == run.attempt for held in self._held.values())

    async def _recover(self, run: Run) -> None:
        outcome = recovery_outcome(run, self.config.runs.max_attempts)
        if outcome is None:
            if await self.store.requeue(run.run_id, run.attempt):
                logger.warning("run %s: holder lost, queued again after attempt %d", run.run_id, run.attempt)
            return
        if await self.store.finish(run.run_id, run.attempt, outcome, self.config.runs.retention):
            logger.warning("run %s: holder lost, %s", run.run_id, outcome.error.code if outcome.error else "failed")
            await self.on_finished(run, outcome)

    async def _hand_back(self, run: Run) -> None:
        try:
            await self._recover(run)
        except StoreUnavailable:
            # The lease will expire and another gateway will recover the run.
            logger.warning("run %s: could not hand back on shutdown; its lease will expire", run.run_id)
