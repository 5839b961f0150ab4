"""Durable webhook delivery: every finished run's delivery is in the store until it is final.

A run that finishes gets a pending delivery in the same store write (``Execution.finish``), so
no crash can lose it. Any gateway takes due deliveries from the store, sends them, and records
each attempt; a gateway that dies mid-attempt leaves a lease that runs out, and the delivery
is due again. Deliveries are at-least-once: receivers de-duplicate on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson

from asyncgate import __version__
from asyncgate.config import Config
from asyncgate.errors import BlockedDestination, StoreError, StoreUnavailable, UpstreamError, UpstreamTimeout
from asyncgate.headers import (
    CONTENT_TYPE,
    RUN_ID,
    RUN_STATUS,
    UPSTREAM_STATUS,
    USER_AGENT,
    WEBHOOK_EVENT,
    WEBHOOK_ID,
    WEBHOOK_SEQUENCE,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
)
from asyncgate.hookclient import WebhookClient
from asyncgate.metrics import Metrics
from asyncgate.netguard import Resolver
from asyncgate.runs import Delivery, DeliveryState, Headers, Outcome, Run, RunResult, now, rfc3339
from asyncgate.signing import signature_header
from asyncgate.store.base import Deliveries, DueDelivery, DueHook, Finished, Hook, Records
from asyncgate.tasks import settle
from asyncgate.tracing import NO_TRACING, Tracing, trace_headers, with_span

logger = logging.getLogger("asyncgate.webhooks")

#: Extra time a taken delivery is leased beyond the attempt's own timeout.
LEASE_MARGIN = 10.0
#: Longest wait an idle dispatcher allows itself before looking for due deliveries again.
IDLE_POLL = 1.0
#: Once busy, the dispatcher takes more deliveries when this fraction of its room is free.
BATCH_FRACTION = 4
#: Jitter applied to every backoff delay, as a fraction of it, so retries do not stampede.
JITTER = 0.1
#: A Retry-After longer than this is not believed.
MAX_RETRY_AFTER = 86400.0
#: Deliveries handed over as their runs ended here wait for room at most this many at once, with
#: results of at most this many bytes in all; past either, a run's delivery stays pending in the
#: store for any gateway to take, so a wave of large results is not held in memory twice.
HANDED_RUNS = 4096
HANDED_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What one delivery attempt got: a status, or a transport error."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    #: No later attempt could fare better (a refused destination): the delivery fails now.
    final: bool = False


def retry_after_seconds(value: str | None, at: float) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, moment - at), MAX_RETRY_AFTER)


def next_delivery(
    attempts: int, attempt: Attempt, schedule: Sequence[float], at: float, rng: random.Random
) -> Delivery:
    """The delivery after its ``attempts``-th attempt ended as ``attempt``: done, or when next."""
    if attempt.status is not None and 200 <= attempt.status < 300:
        return Delivery(DeliveryState.DELIVERED, attempts, attempt.status, None, None)
    if attempt.status == 410:
        return Delivery(DeliveryState.GONE, attempts, 410, "the receiver answered 410 Gone", None)
    error = attempt.error or f"the receiver answered {attempt.status}"
    if attempt.status is not None and 300 <= attempt.status < 400:
        error = f"the receiver answered {attempt.status}; redirects are not followed"
    if attempts >= len(schedule) or attempt.final:
        return Delivery(DeliveryState.FAILED, attempts, attempt.status, error, None)
    delay = schedule[attempts] * (1 + rng.uniform(-JITTER, JITTER))
    if attempt.retry_after is not None and attempt.status in (429, 503):
        delay = max(delay, attempt.retry_after)
    return Delivery(DeliveryState.PENDING, attempts, attempt.status, error, at + delay)


def envelope(run: Run, result: RunResult | None) -> bytes:
    """The JSON envelope (``webhooks.format: envelope``): the outcome with the result inside."""
    content_type = result.header(CONTENT_TYPE) if result else None
    payload: Any = None
    if result is not None:
        if content_type and "json" in content_type.lower():
            try:
                payload = orjson.loads(result.body)
            except orjson.JSONDecodeError:
                payload = None
        if payload is None and result.body:
            payload = {"base64": base64.b64encode(result.body).decode(), "content_type": content_type}
    duration = run.finished_at - run.created_at if run.finished_at is not None else None
    return orjson.dumps(
        {
            "run_id": run.run_id,
            "status": run.state.value,
            "upstream_status": run.upstream_status,
            "result": payload,
            "error": run.error,  # orjson writes it as asdict would
            "created_at": rfc3339(run.created_at),
            "finished_at": rfc3339(run.finished_at),
            "duration_seconds": round(duration, 3) if duration is not None else None,
        }
    )


def log_attempt(run_id: str, attempts: int, delivery: Delivery) -> None:
    """One line per recorded attempt; one that did not deliver says why, and a final failure warns."""
    extra = {"run_id": run_id, "status": delivery.last_status}
    if delivery.state is DeliveryState.DELIVERED:
        logger.info("run %s: webhook attempt %d delivered (%s)", run_id, attempts, delivery.last_status, extra=extra)
        return
    level = logging.INFO if delivery.state is DeliveryState.PENDING else logging.WARNING
    outcome = "failed, will retry" if delivery.state is DeliveryState.PENDING else delivery.state.value
    logger.log(level, "run %s: webhook attempt %d %s: %s", run_id, attempts, outcome, delivery.last_error, extra=extra)


class DeliveryStore(Deliveries, Records, Protocol):
    """The roles of the store the dispatcher uses: its deliveries, and the results they send
    (``Records.result``, when the store did not read it along with the delivery)."""


class WebhookDispatcher:
    """Takes due deliveries from the store and sends them, ``webhooks.max_concurrency`` at once."""

    def __init__(
        self,
        config: Config,
        store: DeliveryStore,
        metrics: Metrics,
        resolver: Resolver | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.config = config
        self.tracing = tracing
        self.metrics = metrics
        self.allow = config.webhooks.allow
        #: Name resolution, injectable so tests can make a name answer any address.
        self.resolver = resolver
        self.store = store
        #: How long a taken delivery is leased: its attempt's timeout and a margin.
        self._lease = config.webhooks.timeout + LEASE_MARGIN
        self._keys = [secret.key for secret in config.webhooks.signing_secrets]
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._client: WebhookClient | None = None
        #: Lifecycle deliveries are looked for when one was queued here or delivered, when the last
        #: look found some, and else once per IDLE_POLL: most rounds (a wave of completions) need none.
        self._hooks_wanted = True
        self._next_hook_look = 0.0
        #: Deliveries taken by the finish of runs that ended here (``hand``), oldest first, and
        #: the bytes of their results.
        self._handed: collections.deque[DueDelivery] = collections.deque()
        self._handed_bytes = 0
        #: While handed deliveries fill every free place, the store is still asked for due ones
        #: (retries, runs other gateways left) once per IDLE_POLL.
        self._next_store_look = 0.0

    def start(self) -> None:
        limit, timeout = self.config.webhooks.max_concurrency, self.config.webhooks.timeout
        self._client = WebhookClient(self.allow, self.resolver, limit=limit, timeout=timeout)
        self._loop = asyncio.create_task(self._dispatch(), name="asyncgate-webhooks")

    async def stop(self) -> None:
        # Attempts cut short here are leased in the store and will be due again.
        tasks = [task for task in (self._loop, *self._sending) if task is not None]
        for task in tasks:
            task.cancel()
        await settle(tasks)
        if self._client is not None:
            await self._client.close()

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll (a run with a webhook ended here)."""
        self._wake.set()

    def take_lease(self, run: Run) -> float | None:
        """The lease for which the finish of ``run``, ending here, takes its delivery to ``hand``
        it over; None leaves it pending in the store.

        Runs with lifecycle deliveries are left to the store, which orders them; so are runs
        past the bounds of what waits here (HANDED_RUNS, HANDED_BYTES), and all runs while the
        dispatcher is stopped.
        """
        if self._loop is None or self._loop.done() or run.request.lifecycle_events:
            return None
        if len(self._handed) >= HANDED_RUNS or self._handed_bytes >= HANDED_BYTES:
            return None
        return self._lease

    def hand(self, run: Run, outcome: Outcome, finished: Finished) -> None:
        """Send the delivery that ``finish`` took (``finished.token``) as ``run`` ended here."""
        assert finished.token is not None and finished.lease_until is not None
        ended = dataclasses.replace(
            run,
            state=outcome.state,
            finished_at=finished.at,
            upstream_status=outcome.upstream_status,
            error=outcome.error,
            cancel_requested=False,
            request=dataclasses.replace(run.request, webhook_url=finished.webhook_url),
            delivery=Delivery(DeliveryState.DELIVERING, next_attempt_at=finished.lease_until),
        )
        self._handed.append(DueDelivery(ended, finished.token, outcome.result, prefetched=True))
        self._handed_bytes += _result_bytes(outcome.result)
        self.metrics.webhooks_waiting.inc()
        self._wake.set()

    def _take_handed(self, limit: int) -> list[DueDelivery]:
        """Up to ``limit`` handed deliveries, oldest first. One that waited here so long that its
        lease would run out during the attempt is left to its lease: any gateway takes it then."""
        taken: list[DueDelivery] = []
        timeout = self.config.webhooks.timeout
        while self._handed and len(taken) < limit:
            due = self._handed.popleft()
            self._handed_bytes -= _result_bytes(due.result)
            assert due.run.delivery is not None and due.run.delivery.next_attempt_at is not None
            if due.run.delivery.next_attempt_at - now() < timeout:
                extra = {"run_id": due.run.run_id}
                logger.warning(
                    "run %s: webhook waited here past its lease's margin; it is sent once the lease ends",
                    due.run.run_id,
                    extra=extra,
                )
                continue
            taken.append(due)
        self.metrics.webhooks_waiting.set(len(self._handed))
        return taken

    def wake_hooks(self) -> None:
        """A lifecycle delivery was queued here: look for due ones now."""
        self._hooks_wanted = True
        self._wake.set()

    async def _due_hooks(self, room: int, lease: float) -> list[DueHook]:
        moment = time.monotonic()
        if room <= 0 or not (self._hooks_wanted or moment >= self._next_hook_look):
            return []
        self._next_hook_look = moment + IDLE_POLL
        try:
            hooks = await self.store.due_hooks(room, lease)
        except StoreError as exc:
            logger.warning("cannot take lifecycle webhook deliveries: %s", exc)
            return []
        self._hooks_wanted = bool(hooks)
        return hooks

    async def _dispatch(self) -> None:
        limit = self.config.webhooks.max_concurrency
        # Taking deliveries costs round trips whatever their number: under a wave, taking each
        # one as another ends spent them one delivery at a time (bench S6), so wait for a batch.
        batch = max(1, limit // BATCH_FRACTION)
        while True:
            room = limit - len(self._sending)
            if room < batch and self._sending:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()
            moment = time.monotonic()
            store_due = moment >= self._next_store_look
            due = self._take_handed(room - batch if store_due and room > batch else room)
            if len(due) < room:
                self._next_store_look = moment + IDLE_POLL
                try:
                    due += await self.store.due_deliveries(room - len(due), self._lease)
                except StoreError as exc:
                    logger.warning("cannot take webhook deliveries: %s", exc)
            for item in due:
                self._spawn(self._deliver(item), item.run.run_id)
            hooks = await self._due_hooks(room - len(due), self._lease)
            for hook in hooks:
                self._spawn(self._deliver_hook(hook), hook.run.run_id)
            self.metrics.webhooks_sending.set(len(self._sending))
            if len(due) + len(hooks) < room and not self._handed:
                try:
                    async with asyncio.timeout(IDLE_POLL):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    def _spawn(self, delivery: Coroutine[Any, Any, None], run_id: str) -> None:
        task = asyncio.create_task(delivery, name=f"asyncgate-webhook-{run_id}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self.metrics.webhooks_sending.set(len(self._sending))
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook task failed", exc_info=task.exception())

    async def _deliver(self, due: DueDelivery) -> None:
        run = due.run
        attempts = (run.delivery.attempts if run.delivery else 0) + 1
        try:
            result = due.result if due.prefetched else await self.store.result(run.run_id)
            with self.tracing.delivery_attempt(run, attempts) as span:
                attempt = await self._send(run, result, span.headers)
                delivered = attempt.status is not None and 200 <= attempt.status < 300
                span.finish(attempt.status, None if delivered else str(attempt.status or "transport_error"))
        except StoreUnavailable as exc:
            # Not the receiver's fault: the lease runs out and the attempt is made again.
            extra = {"run_id": run.run_id}
            logger.warning("run %s: webhook postponed, the store is unavailable: %s", run.run_id, exc, extra=extra)
            return
        delivery = next_delivery(attempts, attempt, self.config.webhooks.schedule, now(), self._rng)
        try:
            recorded = await self.store.record_delivery(run.run_id, due.token, delivery, self.config.runs.retention)
        except StoreError as exc:
            logger.warning("run %s: webhook attempt not recorded: %s", run.run_id, exc, extra={"run_id": run.run_id})
            return
        if recorded:
            outcome = "retry" if delivery.state is DeliveryState.PENDING else delivery.state.value
            self.metrics.webhook_attempts.labels(outcome).inc()
            log_attempt(run.run_id, attempts, delivery)
        if recorded and delivery.state is DeliveryState.PENDING and delivery.next_attempt_at is not None:
            # An immediate retry should not wait for the next poll.
            if delivery.next_attempt_at <= now():
                self._wake.set()

    async def _deliver_hook(self, due: DueHook) -> None:
        """One attempt at a run's first queued lifecycle delivery, retried on the same schedule as completed."""
        run, hook = due.run, due.hook
        attempts = hook.attempts + 1
        url = run.request.webhook_url
        if url is None:
            attempt = Attempt(None, "the run's webhook URL is gone", final=True)
        else:
            body = hook.body
            if hook.dropped:
                body = orjson.dumps({**orjson.loads(body), "dropped": hook.dropped})
            with self.tracing.delivery_attempt(run, attempts) as span:
                headers = self.hook_headers(run, hook, body, span.headers)
                attempt = await self._post(url, body, headers)
                delivered = attempt.status is not None and 200 <= attempt.status < 300
                span.finish(attempt.status, None if delivered else str(attempt.status or "transport_error"))
        delivery = next_delivery(attempts, attempt, self.config.webhooks.schedule, now(), self._rng)
        pending = delivery.state is DeliveryState.PENDING
        next_at = delivery.next_attempt_at if pending else None
        try:
            recorded = await self.store.record_hook(run.run_id, due.token, hook.seq, attempts, next_at)
        except StoreError as exc:
            logger.warning("run %s: webhook attempt not recorded: %s", run.run_id, exc, extra={"run_id": run.run_id})
            return
        if not recorded:
            return
        self.metrics.webhook_attempts.labels("retry" if pending else delivery.state.value).inc()
        extra = {"run_id": run.run_id, "status": delivery.last_status}
        if delivery.state is DeliveryState.DELIVERED:
            logger.info("run %s: %s webhook #%d delivered", run.run_id, hook.event, hook.seq, extra=extra)
        else:
            level = logging.INFO if pending else logging.WARNING
            outcome = "failed, will retry" if pending else f"{delivery.state.value}, given up"
            why = delivery.last_error
            logger.log(
                level, "run %s: %s webhook #%d %s: %s", run.run_id, hook.event, hook.seq, outcome, why, extra=extra
            )
        if next_at is None or next_at <= now():
            self.wake_hooks()  # the run's next delivery (or its completed one) is due now

    def hook_headers(self, run: Run, hook: Hook, body: bytes, trace: Headers = ()) -> dict[str, str]:
        """A lifecycle delivery's headers: its own webhook-id, its event and its place in the run's order."""
        timestamp = int(now())
        message_id = f"{run.webhook_id}_{hook.seq}"
        headers = {
            WEBHOOK_ID: message_id,
            WEBHOOK_TIMESTAMP: str(timestamp),
            RUN_ID: run.run_id,
            WEBHOOK_EVENT: hook.event,
            WEBHOOK_SEQUENCE: str(hook.seq),
            CONTENT_TYPE: "application/json",
            USER_AGENT: f"asyncgate/{__version__}",
        }
        headers.update(with_span(tuple(trace_headers(run.request.headers)), trace))
        if self._keys:
            headers[WEBHOOK_SIGNATURE] = signature_header(self._keys, message_id, timestamp, body)
        return headers

    def request_headers(self, run: Run, body: bytes, content_type: str | None, trace: Headers = ()) -> dict[str, str]:
        """The delivery's headers; ``trace`` names its span, else the submission's trace context goes on."""
        timestamp = int(now())
        headers: dict[str, str] = {
            WEBHOOK_ID: run.webhook_id,
            WEBHOOK_TIMESTAMP: str(timestamp),
            RUN_ID: run.run_id,
            RUN_STATUS: run.state.value,
            UPSTREAM_STATUS: "" if run.upstream_status is None else str(run.upstream_status),
            USER_AGENT: f"asyncgate/{__version__}",
        }
        if content_type:
            headers[CONTENT_TYPE] = content_type
        if run.request.lifecycle_events:
            # Only a receiver that asked for more than completed sees these: it orders by them.
            headers[WEBHOOK_EVENT] = "completed"
            headers[WEBHOOK_SEQUENCE] = str(run.hook_seq + 1)
        # The receiver's spans belong to the submitter's trace (W3C Trace Context and Baggage).
        headers.update(with_span(tuple(trace_headers(run.request.headers)), trace))
        if self._keys:
            headers[WEBHOOK_SIGNATURE] = signature_header(self._keys, run.webhook_id, timestamp, body)
        return headers

    async def _send(self, run: Run, result: RunResult | None, trace: Headers = ()) -> Attempt:
        assert self._client is not None and run.request.webhook_url is not None
        content_type: str | None
        if self.config.webhooks.format == "envelope":
            body, content_type = envelope(run, result), "application/json"
        else:
            body = result.body if result is not None else b""
            content_type = result.header(CONTENT_TYPE) if result is not None else None
        return await self._post(run.request.webhook_url, body, self.request_headers(run, body, content_type, trace))

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        assert self._client is not None
        try:
            answer = await self._client.post(url, body, headers)
        except BlockedDestination as exc:
            return Attempt(None, f"blocked_destination: {exc}", final=True)
        except (TimeoutError, UpstreamTimeout):
            return Attempt(None, "the receiver did not answer in time")
        except OSError as exc:  # the name did not resolve (socket.gaierror)
            return Attempt(None, f"the receiver's name did not resolve ({exc.__class__.__name__})")
        except UpstreamError as exc:
            return Attempt(None, f"the receiver could not be reached ({_cause(exc)})")
        return Attempt(answer.status, retry_after=retry_after_seconds(answer.retry_after, now()))


def _result_bytes(result: RunResult | None) -> int:
    return len(result.body) if result is not None else 0


def _cause(exc: BaseException) -> str:
    """The name of what went wrong under an UpstreamError: ConnectionRefusedError, or the error itself."""
    return (exc.__cause__ or exc).__class__.__name__
