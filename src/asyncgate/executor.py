"""The executor: claims queued runs, holds their upstream calls, renews leases, recovers lost runs."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_random_exponential

from asyncgate import progress
from asyncgate.config import Config
from asyncgate.errors import StoreError, StoreUnavailable
from asyncgate.lifecycle import queue_start
from asyncgate.metrics import Metrics
from asyncgate.output import HookLimits, Output
from asyncgate.replay import replay
from asyncgate.runs import (
    EXPIRED_OUTCOME,
    ErrorCode,
    Outcome,
    Run,
    RunError,
    RunState,
    now,
    past_deadline,
    recovery_outcome,
)
from asyncgate.store.base import EXPIRE_BATCH, Execution, Finished, Liveness
from asyncgate.tasks import settle
from asyncgate.tracing import NO_TRACING, Tracing
from asyncgate.upstream import Upstream

logger = logging.getLogger("asyncgate.executor")

P = ParamSpec("P")
T = TypeVar("T")

#: Pause before asking an unreachable store for work again.
STORE_RETRY_DELAY = 1.0
#: Longest pause between renewal attempts while the store cannot be reached.
RENEW_RETRY_DELAY = 0.25
#: How far apart two graces' ends must be to be two graces (logged each), not one seen twice.
GRACE_JITTER = 0.5
#: Expired runs handled per store call of a recovery pass.
RECOVERY_BATCH = 100
#: Batches per recovery pass, at most: a lost gateway's thousands of runs come back in one pass
#: or a few, not one batch per recovery interval.
RECOVERY_ROUNDS = 20


class Phase(enum.Enum):
    #: Claimed; the request has not been sent, so handing the run back can never repeat it.
    STARTING = enum.auto()
    #: The upstream call is under way: the request may have reached the upstream.
    CALLING = enum.auto()
    #: The call is over and its outcome is being written; that write ends the lease itself.
    RECORDING = enum.auto()


@dataclasses.dataclass(eq=False)
class Held:
    """One attempt of one run that this gateway holds, from its claim to its release."""

    run: Run
    task: asyncio.Task[None] = dataclasses.field(init=False)
    phase: Phase = Phase.STARTING
    #: A client asked to cancel it: the task's CancelledError is that cancel, not a shutdown.
    cancelling: bool = False


def owner_id() -> str:
    """A name for this gateway process, unique even when pods share a hostname."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Webhooks(Protocol):
    """What the executor tells the webhook dispatcher as runs with a webhook end here."""

    def wake(self) -> None:
        """A run with a webhook ended here: look for due deliveries now, not at the next poll."""

    def take_lease(self, run: Run) -> float | None:
        """How long the finish of ``run`` should take its delivery for, to ``hand`` it over;
        None leaves the delivery pending in the store, for any gateway to take."""

    def hand(self, run: Run, outcome: Outcome, finished: Finished) -> None:
        """Send the delivery that ``finish`` took as ``run`` ended here as ``outcome``."""


class Executor:
    """Runs queued work with at most ``limits.max_inflight`` upstream calls at once."""

    def __init__(
        self,
        config: Config,
        store: Execution,
        upstream: Upstream,
        webhooks: Webhooks,
        metrics: Metrics,
        tracing: Tracing = NO_TRACING,
        on_hook: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        #: Called when a lifecycle webhook delivery was queued here, to send it without waiting.
        self.on_hook = on_hook
        self.tracing = tracing
        self.metrics = metrics
        self.store = store
        self.upstream = upstream
        #: Told when a run with a webhook has finished here, so its delivery goes now rather
        #: than at the dispatcher's next poll.
        self.webhooks = webhooks
        hooks = config.webhooks
        limits = HookLimits(hooks.output_batch_interval, hooks.output_batch_bytes, hooks.max_pending_events)
        self.output = Output(store, config.runs.output_max_events, config.runs.output_max_bytes, limits, on_hook)
        #: Where the upstream reaches this gateway to report progress; None announces no URL.
        self.progress_base = config.runs.progress_base_url or progress.default_base_url(
            config.upstream, config.server.host, config.server.port
        )
        self._progress_key: bytes | None = None
        #: This gateway's name in the store, which its heartbeat keeps alive. A new one once the
        #: store says the heartbeat ran out (its runs are anybody's to recover then).
        self.owner = owner_id()
        #: Set once the store took a heartbeat under ``owner``: claims wait for it, so that every
        #: run claimed is held under the heartbeat rather than a lease of its own.
        self._alive = asyncio.Event()
        #: The attempt this gateway holds of each run. One per run: a newer claim of a run means
        #: the store took the older attempt back, so the older one is stale and is dropped (#22).
        self._held: dict[str, Held] = {}
        self._room = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        #: Renewal, recovery and cancel messages: they run until the last held run is let go.
        self._loops: list[asyncio.Task[None]] = []
        self._drain_started: float | None = None
        #: Set when stop() lets the loops go. They look at it besides being cancelled: redis-py
        #: was seen to swallow a cancel landing inside a command (#22), and a loop going on
        #: after it would hang the gateway's exit.
        self._stopping = False
        runs = config.runs
        #: A silence of every gateway this long could let a lease run out unrenewed: the store was
        #: down or unreachable. At least two renewal passes, so a live fleet is never that quiet.
        self._quiet = max(runs.lease - runs.lease_renewal, 2 * runs.lease_renewal)
        #: What a live holder needs to renew once the store is back: its next pass, with a margin.
        self._grace = 2 * runs.lease_renewal + STORE_RETRY_DELAY
        #: A store call of this gateway failed since its last heartbeat.
        self._store_failed = False
        self._resume_at = 0.0
        self._grace_logged = 0.0

    def start(self) -> None:
        self._claimer = asyncio.create_task(self._claim_loop(), name="asyncgate-claim")
        self._loops = [
            asyncio.create_task(self._renew_loop(), name="asyncgate-renew"),
            asyncio.create_task(self._recovery_loop(), name="asyncgate-recover"),
            asyncio.create_task(self._cancel_loop(), name="asyncgate-cancel"),
        ]

    def listening(self, port: int) -> None:
        """The server listens on ``port`` (one chosen at bind time, as with port 0): the default
        progress URL names it. A configured ``runs.progress_base_url`` stays as it is."""
        if self.config.runs.progress_base_url is None:
            self.progress_base = progress.default_base_url(self.config.upstream, self.config.server.host, port)

    async def prepare(self) -> None:
        """Read (or make) the key of progress URLs before the first run needs it; a store that
        cannot be reached now is asked again by the first run."""
        if self.progress_base is not None and self._progress_key is None:
            try:
                self._progress_key = await self.store.progress_key()
            except StoreError as exc:
                logger.warning("the key of progress URLs is not read yet: %s", exc)

    async def _progress_url(self, run: Run) -> str | None:
        """The capability URL announced to this attempt, or None when none can be."""
        if self.progress_base is None:
            return None
        if self._progress_key is None:
            try:
                self._progress_key = await self.store.progress_key()
            except StoreError as exc:
                # Progress is a convenience: the run goes on without a URL this time.
                logger.warning("run %s: no progress URL: %s", run.run_id, exc, extra={"run_id": run.run_id})
                return None
        secret = progress.token(self._progress_key, run.run_id, run.attempt)
        return self.progress_base + progress.callback_path(self.config.server.prefix, run.run_id, run.attempt, secret)

    def cancel_local(self, run_id: str) -> bool:
        """Abort the upstream call of a run this gateway holds; False if it holds none."""
        held = self._held.get(run_id)
        if held is None or held.phase is Phase.RECORDING:
            return False
        if not held.cancelling:
            held.cancelling = True
            if held.phase is Phase.CALLING:
                held.task.cancel()  # else _execute sees the flag before it sends anything
        return True

    def stop_claiming(self) -> None:
        """Take no new runs (a drain began); held runs go on."""
        if self._drain_started is not None:
            return  # cancelled once only: a second cancel could cut the hand-back of a claim
        self._drain_started = time.monotonic()
        if self._claimer is not None:
            self._claimer.cancel()

    async def stop(self, drain_timeout: float) -> None:
        """Take no new runs, let held ones finish within ``drain_timeout`` s of the drain's start,
        then hand the rest back: re-queued at once when safe to send again, else failed as lost.

        Leases are renewed until the last held run is let go, so no other gateway takes a run
        that is still being served here (#22).
        """
        self.stop_claiming()
        assert self._drain_started is not None
        if self._claimer is not None:
            await settle([self._claimer])
        left = drain_timeout - (time.monotonic() - self._drain_started)
        if self._held and left > 0:
            await asyncio.wait([held.task for held in self._held.values()], timeout=left)
        remaining = list(self._held.values())
        for held in remaining:
            held.task.cancel()
        await settle([held.task for held in remaining])
        for held in remaining:
            await self._hand_back(held)
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await settle(self._loops)

    async def _claim_loop(self) -> None:
        while self._drain_started is None:
            if not self._alive.is_set():
                await self._alive.wait()
                continue
            room = self.config.limits.max_inflight - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                runs = await self._claim(room)
            except StoreError as exc:
                self.metrics.store_errors.inc()
                self._store_failed = True
                logger.warning("cannot claim runs: %s", exc)
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            except Exception:
                # A bug, or redis-py failing in a way of its own (in a Cluster's failover it was
                # seen to raise AttributeError on a connection closed under a command): loud, and
                # the loop goes on. Ended, it left every run queued under a gateway whose
                # heartbeat, answers and readiness all went on as if it were taking them.
                self.metrics.store_errors.inc()
                logger.exception("claiming runs failed; trying again")
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            for run in runs:
                self._start(run)

    async def _claim(self, room: int) -> list[Run]:
        """Claim up to ``room`` runs; a drain beginning meanwhile hands what was claimed back at once.

        The store call is shielded: cut between the store's write and its reply, it would leave
        runs marked running that no task holds, orphaned until their lease ran out (#22).
        """
        runs = self.config.runs
        claim = asyncio.ensure_future(self.store.claim(self.owner, room, runs.poll_interval, runs.lease))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            try:
                unsent = await claim
            except StoreError:
                unsent = []  # the store never answered: any run it took comes back when its lease runs out
            for run in unsent:
                await self._give_back(run)
            raise

    def _start(self, run: Run) -> None:
        stale = self._held.get(run.run_id)
        if stale is not None:
            # This gateway's older attempt outlived its lease: the store refuses its outcome anyway.
            extra = {"run_id": run.run_id}
            logger.warning(
                "run %s: attempt %d replaces stale attempt %d", run.run_id, run.attempt, stale.run.attempt, extra=extra
            )
            stale.task.cancel()
        held = Held(run)
        held.task = asyncio.create_task(self._execute(held), name=f"asyncgate-run-{run.run_id}")
        held.task.add_done_callback(lambda task: self._release(held))
        self._held[run.run_id] = held
        self.metrics.runs_inflight.set(len(self._held))
        if run.attempt == 1 and run.started_at is not None:
            self.metrics.queue_wait.observe(max(0.0, run.started_at - run.created_at))
            self.tracing.queue_wait(run)

    def _release(self, held: Held) -> None:
        if self._held.get(held.run.run_id) is held:
            del self._held[held.run.run_id]
        self.metrics.runs_inflight.set(len(self._held))
        self._room.set()
        if not held.task.cancelled() and held.task.exception() is not None:
            extra = {"run_id": held.run.run_id}
            logger.error("run %s: task failed", held.run.run_id, exc_info=held.task.exception(), extra=extra)

    async def _execute(self, held: Held) -> None:
        run = held.run
        body = await self._with_store_retries(self.store.request_body, run.run_id)
        if body is None:
            return  # the run expired or was removed while queued
        if held.cancelling:
            outcome = Outcome(RunState.CANCELLED, error=RunError(ErrorCode.CANCELLED, "cancelled by a client"))
        elif run.started_at is not None and past_deadline(run, run.started_at):
            # Claimed after its queue deadline, before the sweep found it: it is never sent.
            outcome = EXPIRED_OUTCOME
        else:
            logger.info("run %s started (attempt %d)", run.run_id, run.attempt, extra={"run_id": run.run_id})
            started = time.perf_counter()
            try:
                outcome = await self._call(held, body)
            finally:
                self.metrics.upstream_duration.observe(time.perf_counter() - started)
        held.phase = Phase.RECORDING
        await self._record(run, outcome)

    async def _call(self, held: Held, body: bytes) -> Outcome:
        """The upstream call's outcome, or CANCELLED when a client cancels the run meanwhile.

        A cancel cancels this very task (no second task per run: 10,000 held runs must stay
        cheap); cancelling it closes the upstream connection, so the upstream sees the client go.
        """
        held.phase = Phase.CALLING
        try:
            await queue_start(self.store, held.run, self.config.webhooks.max_pending_events, self.on_hook)
            progress_url = await self._progress_url(held.run)
            limit = self.config.limits.max_result_bytes
            return await replay(self.upstream, held.run, body, limit, self.tracing, self.output, progress_url)
        except asyncio.CancelledError:
            if not held.cancelling or held.task.uncancel() > 0:
                raise  # a shutdown or a lost lease, not (only) a client's cancel
            error = RunError(ErrorCode.CANCELLED, "cancelled by a client while running")
            return Outcome(RunState.CANCELLED, error=error)

    async def _record(self, run: Run, outcome: Outcome) -> None:
        # The run's delivery is taken as it finishes and handed to this gateway's dispatcher:
        # under a wave of completions, taking each from the store again (a script, a read of the
        # run and its result, its URL opened) cost about as much as the finish itself (bench S6).
        take = self.webhooks.take_lease(run) if run.request.webhook_url is not None else None
        finished = await self._with_store_retries(
            self.store.finish, run.run_id, run.attempt, outcome, self.config.runs.retention, take
        )
        if finished is None:
            logger.warning(
                "run %s: attempt %d no longer holds the run; its outcome is discarded",
                run.run_id,
                run.attempt,
                extra={"run_id": run.run_id},
            )
            return
        self._finished(run, outcome, finished)

    def _finished(self, run: Run, outcome: Outcome, finished: Finished | None = None) -> None:
        code = outcome.error.code if outcome.error else ""
        self.metrics.runs_finished.labels(outcome.state.value, code).inc()
        extra: dict[str, object] = {
            "run_id": run.run_id,
            "status": outcome.state.value,
            "upstream_status": outcome.upstream_status,
        }
        if run.started_at is not None:
            extra["duration_ms"] = round((time.time() - run.started_at) * 1000, 1)
        upstream = "" if outcome.upstream_status is None else f" (upstream {outcome.upstream_status})"
        why = f": {code}" if code else ""
        logger.info("run %s %s%s%s", run.run_id, outcome.state, upstream, why, extra=extra)
        if finished is not None and finished.token is not None:
            self.webhooks.hand(run, outcome, finished)
        elif run.request.webhook_url is not None:
            self.webhooks.wake()

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
        """The heartbeat: one store call per renewal interval keeps every held run leased."""
        delay = 0.0
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self._heartbeat()
            except StoreError as exc:
                self.metrics.store_errors.inc()
                self._store_failed = True
                logger.warning("cannot renew leases: %s", exc)
                # Soon again: once the store is back, renewals must come before any recovery.
                delay = min(self.config.runs.lease_renewal, RENEW_RETRY_DELAY)
            except Exception:
                # As for claims: a heartbeat that stopped would let the others take every run
                # this gateway still calls. Loud, counted as a store failure, and tried again.
                self.metrics.store_errors.inc()
                self._store_failed = True
                logger.exception("renewing leases failed; trying again")
                delay = min(self.config.runs.lease_renewal, RENEW_RETRY_DELAY)
            else:
                delay = self.config.runs.lease_renewal

    async def _heartbeat(self) -> float:
        """Tell the store this gateway and every run it holds are alive; the time before which no
        lease may be judged expired."""
        runs = self.config.runs
        liveness = await self.store.keep_alive(self.owner, runs.lease, self._quiet, self._grace)
        self._heard(liveness)
        if self._store_failed:
            # This gateway saw the store fail: its holders (and maybe others') could not renew.
            self._store_failed = False
            self._resume_at = now() + self._grace
        return max(liveness.resume, self._resume_at)

    def _heard(self, liveness: Liveness) -> None:
        if liveness.lost:
            self._let_go()
            return
        self._alive.set()
        self.metrics.lease_renewals.labels("held").inc(len(self._held))
        for run_id in liveness.cancels:
            # The cancel message may have been missed (it is fire-and-forget); the flag is not.
            self.metrics.lease_renewals.labels("cancel").inc()
            self.cancel_local(run_id)

    def _let_go(self) -> None:
        """The heartbeat ran out while other gateways reached the store (a pause past the lease, a
        partition): every held run may have been recovered, so every call is dropped, and the
        gateway beats again under a new name. An outcome being recorded is left to the fence."""
        logger.warning("the heartbeat of %s ran out; letting go of %d runs", self.owner, len(self._held))
        self._alive.clear()
        self.owner = owner_id()
        for held in list(self._held.values()):
            if held.phase is Phase.RECORDING:
                continue
            self.metrics.lease_renewals.labels("lost").inc()
            extra = {"run_id": held.run.run_id}
            logger.warning("run %s: lease lost, abandoning attempt %d", held.run.run_id, held.run.attempt, extra=extra)
            held.task.cancel()

    async def _cancel_loop(self) -> None:
        while not self._stopping:
            try:
                async for run_id in self.store.cancellations():
                    if self.cancel_local(run_id):
                        logger.info("run %s: cancelling its upstream call", run_id, extra={"run_id": run_id})
            except StoreError as exc:
                logger.warning("cancel messages interrupted: %s", exc)
            except Exception:
                # As for claims: a loop that ended would hear no cancel until the gateway restarted
                # (redis-py 8.1's Cluster pub/sub raised KeyError for a slot a failover left uncovered).
                logger.exception("cancel messages interrupted; listening again")
            await asyncio.sleep(STORE_RETRY_DELAY)

    async def _recovery_loop(self) -> None:
        while not self._stopping:
            try:
                await self._recover_expired()
                await self._expire_queued()
                await self.store.purge()
                self.metrics.runs_queued.set(await self.store.queued_count())
            except StoreError as exc:
                self.metrics.store_errors.inc()
                self._store_failed = True
                logger.warning("cannot look for lost runs: %s", exc)
            except Exception:
                # Lost runs, overdue queued runs and old runs would wait for a restart otherwise.
                self.metrics.store_errors.inc()
                logger.exception("looking for lost runs failed; trying again")
            await asyncio.sleep(self.config.runs.recovery_interval)

    async def _recover_expired(self) -> None:
        # After a store outage every lease looks expired; live holders get a grace to renew
        # first, or their runs would be declared lost while still being served (#22).
        resume = await self._heartbeat()
        if now() < resume:
            # Once per grace: its end, converted from the store's clock, moves by the round
            # trip's jitter from one heartbeat to the next.
            if abs(resume - self._grace_logged) > GRACE_JITTER:
                self._grace_logged = resume
                # After an outage, or the first start of a fleet: the store cannot tell them apart.
                logger.info(
                    "lost runs are looked for in %.1fs: no gateway had reached the store for a while "
                    "(a first start, or after an outage; live holders renew their leases meanwhile)",
                    resume - now(),
                )
            return
        for _ in range(RECOVERY_ROUNDS):
            expired = [run for run in await self.store.expired(RECOVERY_BATCH) if not self._holds(run)]
            for run in expired:
                if run.state is RunState.RUNNING:
                    await self._recover(run, "holder lost")
            if len(expired) < RECOVERY_BATCH:
                return

    async def _expire_queued(self) -> None:
        """End the runs still queued past their queue deadline, in batches, whether or not any claim happens."""
        while True:
            runs = await self.store.expire_queued(EXPIRE_BATCH, self.config.runs.retention)
            for run in runs:
                self._finished(run, EXPIRED_OUTCOME)
            if len(runs) < EXPIRE_BATCH:
                return

    def _holds(self, run: Run) -> bool:
        held = self._held.get(run.run_id)
        return held is not None and held.run.attempt == run.attempt

    async def _recover(self, run: Run, why: str) -> None:
        """Queue ``run`` again when its request is safe to send again, else end it ``lost``."""
        outcome = recovery_outcome(run, self.config.runs.max_attempts)
        if outcome is None:
            if await self.store.requeue(run.run_id, run.attempt):
                self.metrics.runs_reclaimed.labels("requeued").inc()
                extra = {"run_id": run.run_id}
                logger.warning("run %s: %s, queued again after attempt %d", run.run_id, why, run.attempt, extra=extra)
            return
        if await self.store.finish(run.run_id, run.attempt, outcome, self.config.runs.retention):
            self.metrics.runs_reclaimed.labels("failed").inc()
            self._finished(run, outcome)

    async def _hand_back(self, held: Held) -> None:
        if held.phase is Phase.STARTING:
            await self._give_back(held.run)
            return
        try:
            await self._recover(held.run, "handed back on shutdown")
        except StoreError:
            # The lease will expire and another gateway will recover the run.
            extra = {"run_id": held.run.run_id}
            logger.warning(
                "run %s: could not hand back on shutdown; its lease will expire", held.run.run_id, extra=extra
            )

    async def _give_back(self, run: Run) -> None:
        """Queue a run claimed but never sent again, whatever its method: it cannot have taken effect."""
        try:
            if await self.store.requeue(run.run_id, run.attempt):
                logger.info(
                    "run %s: handed back unsent (attempt %d)", run.run_id, run.attempt, extra={"run_id": run.run_id}
                )
        except StoreError:
            extra = {"run_id": run.run_id}
            logger.warning("run %s: could not hand back on shutdown; its lease will expire", run.run_id, extra=extra)
