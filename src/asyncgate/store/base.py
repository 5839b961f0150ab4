"""The run store's interface: everything the gateway keeps, in four roles.

Each part of the gateway depends on the roles it uses, never on the whole store::

    Lifecycle    open, close, ping, durability      the app's lifespan, readiness
    Records      create, get, result, events, ...   intake, the API, event feeds
    Execution    claim, renew, finish, requeue, ... the executor (and its output log)
    Deliveries   due_deliveries, record_delivery,   the webhook dispatcher, redelivery
                 redeliver

``RunStore`` is all four: what the factory builds. Two implementations: ``RedisRunStore``
(shared by any number of replicas) and ``EmbeddedRunStore`` (SQLite on local disk, for one
node with nothing else installed). ``tests/store/contract/`` runs each role's tests over both,
and fails when a role has a method no contract test exercises: a new method goes in the role
of the part that calls it, with a test in that role's class marked ``@pytest.mark.exercises``.

Fencing: every write made on behalf of an attempt names that attempt, and the store refuses
it unless the run is still ``running`` under that very attempt. A holder that lost its run
(paused past its lease, then reclaimed) can therefore never overwrite the newer attempt.

Liveness: a gateway keeps the runs it holds alive with one heartbeat of its own (``keep_alive``),
whatever their number; a run's lease is its own (from ``claim`` or ``renew``) or its holder's
heartbeat, whichever runs out later. A holder whose heartbeat ran out while others went on is
told so by its next one, and must let go of everything it holds (see docs/leases.md).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import AsyncGenerator, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import orjson

from asyncgate.errors import ConfigError, StoreError
from asyncgate.runs import Delivery, DeliveryState, Outcome, Run, RunResult, RunState
from asyncgate.store.sealing import Sealer

#: A run never finished (its gateways all gone, a bug) still disappears after this long, in
#: either store; so does a finished run this long after its delivery was asked again.
UNFINISHED_TTL = 7 * 24 * 3600
#: Runs one purge() round forgets, at most; rounds are separate writes.
PURGE_BATCH = 500
#: Rounds of one purge() call, at most: 10,000 runs per recovery interval of each gateway.
PURGE_ROUNDS = 20


@dataclasses.dataclass(frozen=True)
class Share:
    """A cap on the runs one caller holds queued or running: ``key`` names the counter, shared by
    every gateway; each run counted is uncounted when it ends, whichever way it ends."""

    key: str
    limit: int
    #: Where the cap applies, for the refusal's message (" on route batch"); empty for the gateway's own.
    where: str = ""


@dataclasses.dataclass(frozen=True)
class QueuePosition:
    """Where a queued run stands: runs claimed before it, and a rough wait in seconds (None: unknown)."""

    ahead: int
    wait: float | None


#: Every this many claim batches, a gateway takes the oldest run of the lowest non-empty priority
#: level first, so a flood of higher priorities delays lower ones but never stops them.
STARVATION_ROUND = 4
#: Queued runs past their deadline ended per sweep round, at most.
EXPIRE_BATCH = 500


class ClaimRate:
    """Runs claimed per second, over the last ``window`` s, from samples of a running total of claims.

    The rough wait a queued run's status shows is the runs ahead of it divided by this rate.
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, total: int, at: float) -> None:
        samples = self._samples
        if samples and at - samples[-1][0] < 1.0:
            samples[-1] = (samples[-1][0], total)  # one sample a second is plenty, whatever the traffic
        else:
            samples.append((at, total))
        while len(samples) > 2 and at - samples[1][0] >= self.window:
            samples.popleft()

    def per_second(self, at: float) -> float | None:
        """The rate, or None before two samples a second apart exist (or when nothing was claimed)."""
        if len(self._samples) < 2:
            return None
        (first, start), (_, end) = self._samples[0], self._samples[-1]
        elapsed = at - first
        return (end - start) / elapsed if elapsed >= 1.0 and end > start else None

    def wait(self, ahead: int, at: float) -> float | None:
        rate = self.per_second(at)
        return None if rate is None else round((ahead + 1) / rate, 1)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Whose runs a store holds: a deployment, and the upstream its runs were accepted for."""

    deployment: str
    upstream: str
    #: The stored runs may be taken over although they were accepted for another upstream.
    allow_upstream_change: bool = False

    def conflict(self, where: str, deployment: str, upstream: str) -> ConfigError:
        """The refusal to start: ``where`` holds ``deployment``'s runs, accepted for ``upstream``."""
        return ConfigError(
            "upstream",
            f"{where} holds the runs of deployment {deployment!r}, accepted for {upstream}, not {self.upstream}; "
            "if the upstream changed on purpose, start once with --allow-upstream-change "
            "(store.allow_upstream_change: true), else give this gateway a deployment of its own (--deployment)",
        )


@dataclasses.dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, scoped to its caller, with the fingerprint of the request it names."""

    #: The caller's fingerprint and the key, hashed: the store never sees the raw key.
    key: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Created:
    """What ``create`` did: stored the run, or found the run an idempotency key already names."""

    run_id: str
    replayed: bool = False
    #: False when the key names a run made from a different request.
    same_request: bool = True


class CancelResult(StrEnum):
    #: The run was queued and is now cancelled.
    CANCELLED = "cancelled"
    #: The run is running; its holder has been asked to abort the call.
    REQUESTED = "requested"
    #: The run had already finished; nothing changed.
    FINISHED = "finished"
    #: No such run.
    MISSING = "missing"


class Lease(StrEnum):
    #: The attempt still holds the run.
    HELD = "held"
    #: Another attempt holds the run, or it ended: this attempt's answer would be refused.
    LOST = "lost"
    #: The attempt holds the run and a client asked to cancel it.
    CANCEL = "cancel"


@dataclasses.dataclass(frozen=True)
class Liveness:
    """What a gateway's heartbeat learned from the store."""

    #: The time before which no lease may be judged expired (see ``RunStore.heartbeat``).
    resume: float
    #: The gateway's heartbeat had run out while others reached the store: its runs may have been
    #: recovered, so every attempt it holds must be let go, and it must beat under a new name.
    lost: bool = False
    #: Runs held by the gateway whose cancellation was asked since its last heartbeat.
    cancels: tuple[str, ...] = ()


#: The events that end a run's life: its final states (a listener checks every event it sends).
_FINAL_EVENTS = frozenset(state.value for state in RunState if state.is_final)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A change in a run's life, as kept in its event log. ``id`` orders events of one run."""

    id: str
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.data.get("event") in _FINAL_EVENTS


def state_event(state: RunState, attempt: int, at: float, outcome: Outcome | None = None) -> dict[str, Any]:
    """The event logged when a run enters ``state``."""
    event: dict[str, Any] = {"event": state.value, "status": state.value, "attempt": attempt, "at": at}
    if outcome is not None:
        event["upstream_status"] = outcome.upstream_status
        event["error"] = dataclasses.asdict(outcome.error) if outcome.error else None
    return event


def delivery_event(delivery: Delivery, at: float) -> dict[str, Any]:
    """The event logged when a webhook delivery changes."""
    return {"event": "webhook", "webhook": dataclasses.asdict(delivery), "at": at}


def pending_delivery(at: float) -> Delivery:
    return Delivery(DeliveryState.PENDING, next_attempt_at=at)


@dataclasses.dataclass(frozen=True)
class Finished:
    """A run's end as ``finish`` recorded it: when, and its webhook delivery if it took it."""

    at: float
    #: The token of the run's delivery, taken for the ``take`` lease in the same step; None when
    #: none was taken (none asked, no webhook, or lifecycle deliveries of the run wait first).
    token: int | None = None
    #: The run's webhook URL, opened, when its delivery was taken.
    webhook_url: str | None = None
    #: When the taken delivery's lease runs out.
    lease_until: float | None = None


def finished_taking(sealer: Sealer, at: float, token: int, sealed: bytes, lease_until: float) -> Finished:
    """A finish that took the run's delivery. A URL that cannot be opened (its key is gone)
    leaves the delivery to its lease: the dispatcher then meets the error as it takes it."""
    try:
        return Finished(at, token, sealer.open_url(sealed), lease_until)
    except StoreError:
        return Finished(at)


@dataclasses.dataclass(frozen=True)
class DueDelivery:
    """A webhook delivery taken for one attempt; ``token`` fences the attempt's report."""

    run: Run
    token: int
    #: The run's result, when the store read it along with the run (``prefetched``).
    result: RunResult | None = None
    prefetched: bool = False


@dataclasses.dataclass(frozen=True)
class Hook:
    """A lifecycle webhook delivery (``start``, ``output``, ``progress``) queued for a run.

    ``body`` is the delivery's JSON as it was queued; ``dropped`` counts deliveries not queued
    just before it because the run's queue was full.
    """

    seq: int
    event: str
    body: bytes
    attempts: int = 0
    dropped: int = 0


@dataclasses.dataclass(frozen=True)
class DueHook:
    """The first queued lifecycle delivery of a run, taken for one attempt; ``token`` fences its report."""

    run: Run
    hook: Hook
    token: int


def load_hook(raw: bytes | str) -> Hook:
    """A queued lifecycle delivery from its stored JSON (its body a JSON string inside)."""
    data = orjson.loads(raw)
    body = data["body"]
    return Hook(
        seq=int(data["seq"]),
        event=str(data["event"]),
        body=body.encode() if isinstance(body, str) else bytes(body),
        attempts=int(data.get("attempts", 0)),
        dropped=int(data.get("dropped", 0)),
    )


class Lifecycle(Protocol):
    """The store as a resource: opened and closed by the app, checked by readiness."""

    #: Seals credentials and webhook URLs at rest; ``sealer.sealing`` says whether it does.
    sealer: Sealer

    async def open(self) -> None:
        """Connect, create what is missing (tables, stream, consumer group)."""

    async def close(self) -> None:
        """Release every connection; the store must not be used afterwards."""

    async def ping(self) -> None:
        """Return when the store answers and takes writes; raise ``StoreError`` saying why otherwise."""

    async def durability(self) -> dict[str, Any]:
        """What the store promises about accepted runs, and any setting that breaks the promise."""


class Records(Protocol):
    """Runs as callers see them: accepted by intake, read, listed, followed and cancelled by the API."""

    async def create(
        self,
        run: Run,
        body: bytes,
        *,
        idempotency: Idempotency | None = None,
        max_queued: int = 0,
        shares: Sequence[Share] = (),
    ) -> Created:
        """Store a new ``queued`` run and its request body, and queue it at its priority, all or nothing.

        Returns only once the run is durable; raises ``StoreUnavailable`` if it is not,
        ``QueueFull`` when ``max_queued`` (> 0) runs are waiting already, and ``ShareExceeded``
        when a share's counter is at its limit (else every share's counter counts the run, until
        it ends). With an idempotency key that already names a live run, stores nothing and says
        which run it names.
        """

    async def get(self, run_id: str) -> Run | None:
        """The run, or None if it never existed or has expired."""

    async def result(self, run_id: str) -> RunResult | None:
        """The upstream's stored response, or None if the run has none (yet)."""

    async def events(self, run_id: str, after: str | None, wait: float) -> list[Event]:
        """The run's events after ``after`` (all if None), waiting up to ``wait`` s for one."""

    async def watch(self, positions: Mapping[str, str | None], wait: float) -> dict[str, list[Event]]:
        """The events of several runs after their positions, in one read, waiting up to ``wait``
        s for any; returns sooner (maybe with nothing) once ``interrupt_watch()`` is called, so
        the caller can read again with other runs. Runs without new events are left out."""

    async def interrupt_watch(self) -> None:
        """End the ``watch()`` waiting now, or the next one to start (the runs to watch changed)."""

    async def list_runs(
        self, caller: str | None, state: RunState | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        """Runs newest first (only ``caller``'s unless None), and the cursor of the next page."""

    async def cancel(self, run_id: str, retention: float) -> CancelResult:
        """Cancel a queued run at once, or flag a running one for its holder to abort."""

    async def queue_position(self, run: Run) -> QueuePosition | None:
        """Where the queued ``run`` stands in the queue, or None if it is not queued."""

    async def share_counts(self) -> dict[str, int]:
        """Every share counter that is not zero, by its key (a run's end must bring its own back)."""


class Execution(Protocol):
    """The queue of work and the attempts on it, as the executor uses them: claims, leases,
    outcomes, recovery of lost runs, and the housekeeping of its recovery loop."""

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        """Take up to ``limit`` queued runs for ``owner``, waiting at most ``wait`` s for one.

        Higher priorities first, oldest first within one; every STARVATION_ROUND-th call starts
        with the oldest run of the lowest priority that has any.

        Each returned run is ``running``, its attempt incremented, ``started_at`` set, and
        leased to ``owner`` for ``lease`` seconds. Runs cancelled while queued are skipped.
        """

    async def request_body(self, run_id: str) -> bytes | None:
        """The stored request body of the run, or None when the run is unknown."""

    async def renew(self, run_id: str, attempt: int, lease: float) -> Lease:
        """Extend the lease of the attempt, and say whether it still holds the run."""

    async def renew_all(self, held: Sequence[tuple[str, int]], lease: float) -> list[Lease]:
        """``renew`` for every (run id, attempt) in ``held`` at once, in as few round trips as it can."""

    async def heartbeat(self, quiet: float, grace: float) -> float:
        """Note that a gateway reaches the store now; return the time before which no lease may be
        judged expired.

        When no gateway reached the store for more than ``quiet`` s (it was down, restarted or
        unreachable), nobody could renew meanwhile: holders get ``grace`` s from now, for every
        gateway that asks, before their runs may be recovered. Else the time returned is past.
        """

    async def keep_alive(self, owner: str, lease: float, quiet: float, grace: float) -> Liveness:
        """The heartbeat of the gateway ``owner``: every run it claims from now on stays leased to it
        for ``lease`` s past its last heartbeat, at no cost per run. ``heartbeat(quiet, grace)``
        is taken in the same step.

        Once ``owner``'s heartbeat has run out while other gateways reached the store, its runs
        may be recovered: the answer says ``lost``, the heartbeat is refused, and the name must
        not be used again.
        """

    async def append_output(
        self, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
    ) -> list[str] | None:
        """Log ``events`` (output of the attempt) and remove the events ``drop`` names, fenced.

        Returns the new events' ids, or None, writing nothing, unless the run is ``running``
        under ``attempt``.
        """

    async def finish(
        self, run_id: str, attempt: int, outcome: Outcome, retention: float, take: float | None = None
    ) -> Finished | None:
        """Record the final outcome (and result) of the attempt, fenced; expire after ``retention``.

        Returns None, changing nothing, unless the run is ``running`` under ``attempt``. A run
        with a webhook gets a pending delivery in the same step, so no finished run can lose it;
        with ``take``, that delivery is taken for its first attempt for ``take`` s instead, as
        ``due_deliveries`` would take it, unless lifecycle deliveries of the run wait first.
        """

    def cancellations(self) -> AsyncGenerator[str, None]:
        """The ids of runs whose cancellation is asked from now on, from any replica.

        Never ends by itself (it raises ``StoreError`` if the store is lost); ``aclose()`` it to
        stop listening. A cancel asked while nobody listens is not heard: ``renew`` finds it.
        """

    async def expired(self, limit: int) -> list[Run]:
        """Up to ``limit`` running runs whose lease has run out (their holder is lost)."""

    async def expire_queued(self, limit: int, retention: float) -> list[Run]:
        """End ``expired`` (kept ``retention`` s) up to ``limit`` runs still waiting for their first
        start past their queue deadline, each with its webhook delivery like any end; return them."""

    async def requeue(self, run_id: str, attempt: int) -> bool:
        """Hand a running attempt back to the queue, fenced like ``finish``."""

    async def queued_count(self) -> int:
        """Runs accepted and not started, across every gateway."""

    async def purge(self) -> None:
        """Housekeeping: forget index entries and rows of runs past their retention."""

    async def report_progress(
        self, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
    ) -> str | None:
        """Log a ``progress`` event of the attempt and make it the run's latest report, fenced.

        Past ``kept`` reports of the run, each new one replaces the previous in the log (the
        status keeps the latest in any case). A run whose webhook asked for ``progress`` gets
        ``hook`` queued in the same step, as ``add_hook`` would. Returns the event's id, or None,
        writing nothing, unless the run is ``running`` under ``attempt``.
        """

    async def progress_key(self) -> bytes:
        """The key that signs progress URLs, the same for every gateway sharing the store; made
        on first use."""

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool:
        """Queue a lifecycle delivery of the run, numbered after the last, fenced like ``finish``.

        A ``progress`` delivery replaces a progress delivery waiting last in the queue (the
        latest report wins). With ``max_hooks`` waiting, the delivery is counted as dropped
        instead, and the next one queued carries the count. False, queuing nothing, unless the
        run is ``running`` under ``attempt``.
        """


class Deliveries(Protocol):
    """Webhook deliveries of finished runs: taken and recorded by the dispatcher, asked again by the API."""

    async def due_deliveries(self, limit: int, lease: float) -> list[DueDelivery]:
        """Take up to ``limit`` webhook deliveries whose next attempt is due, for ``lease`` s."""

    async def record_delivery(self, run_id: str, token: int, delivery: Delivery, retention: float) -> bool:
        """Record an attempt's outcome, fenced by ``token``; a final delivery starts retention."""

    async def redeliver(self, run_id: str, webhook_url: str | None = None) -> bool:
        """Make a finished run's delivery pending again (same webhook-id), to ``webhook_url`` if
        given, else to the run's own URL; False if it has no webhook. Raises WebhookUrlDeleted
        when the run's URL is gone (deleted once its last delivery ended) and none is given."""

    async def due_hooks(self, limit: int, lease: float) -> list[DueHook]:
        """Take the first queued lifecycle delivery of up to ``limit`` runs whose next attempt is
        due, each for ``lease`` s; a run's ``completed`` delivery waits until its queue is empty."""

    async def record_hook(self, run_id: str, token: int, seq: int, attempts: int, next_at: float | None) -> bool:
        """Report the attempt at delivery ``seq``, fenced by ``token``: with ``next_at`` None it is
        over (delivered, or given up) and leaves the queue; else it is tried again then."""


class RunStore(Lifecycle, Records, Execution, Deliveries, Protocol):
    """Every role at once: what the store factory builds and the app hands, by role, to each part."""
