"""The RunStore protocol: everything the gateway keeps, behind one small interface.

Two implementations: ``RedisRunStore`` (shared by any number of replicas) and
``EmbeddedRunStore`` (SQLite on local disk, for one node with nothing else installed).
``tests/store/test_contract.py`` runs the same tests over both.

Fencing: every write made on behalf of an attempt names that attempt, and the store refuses
it unless the run is still ``running`` under that very attempt. A holder that lost its run
(paused past its lease, then reclaimed) can therefore never overwrite the newer attempt.
"""

from __future__ import annotations

from typing import Protocol

from asyncgate.runs import Outcome, Run, RunResult


class RunStore(Protocol):
    """Durable storage of runs, their request bodies and results, and the queue of work."""

    async def open(self) -> None:
        """Connect, create what is missing (tables, stream, consumer group)."""

    async def close(self) -> None:
        """Release every connection; the store must not be used afterwards."""

    async def ping(self) -> None:
        """Return when the store answers; raise ``StoreUnavailable`` otherwise."""

    async def create(self, run: Run, body: bytes) -> None:
        """Store a new ``queued`` run and its request body, and queue it, all or nothing.

        Returns only once the run is durable; raises ``StoreUnavailable`` if it is not.
        """

    async def get(self, run_id: str) -> Run | None:
        """The run, or None if it never existed or has expired."""

    async def request_body(self, run_id: str) -> bytes | None:
        """The stored request body of the run, or None when the run is unknown."""

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        """Take up to ``limit`` queued runs for ``owner``, waiting at most ``wait`` s for one.

        Each returned run is ``running``, its attempt incremented, ``started_at`` set, and
        leased to ``owner`` for ``lease`` seconds. Runs cancelled while queued are skipped.
        """

    async def renew(self, run_id: str, attempt: int, lease: float) -> bool:
        """Extend the lease of the attempt; False when that attempt no longer holds the run."""

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, retention: float) -> bool:
        """Record the final outcome (and result) of the attempt, fenced; expire after ``retention``.

        Returns False, changing nothing, unless the run is ``running`` under ``attempt``.
        """

    async def result(self, run_id: str) -> RunResult | None:
        """The upstream's stored response, or None if the run has none (yet)."""

    async def expired(self, limit: int) -> list[Run]:
        """Up to ``limit`` running runs whose lease has run out (their holder is lost)."""

    async def requeue(self, run_id: str, attempt: int) -> bool:
        """Hand a running attempt back to the queue, fenced like ``finish``."""
