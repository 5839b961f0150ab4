"""Batched renewals and the fleet's heartbeat, on both stores (#22)."""

from __future__ import annotations

from asyncgate.runs import Run, now
from asyncgate.store.base import Lease, RunStore
from tests.store.conftest import Queue, Runner
from tests.support.wait import wait_until

LEASE = 30.0
#: Clock readings travel as text through Redis: equal to a microsecond.
EPSILON = 1e-5


def claim_all(store: RunStore, run: Runner, count: int, lease: float) -> list[Run]:
    claimed: list[Run] = []

    def more() -> bool:
        claimed.extend(run(store.claim("me", count - len(claimed), 0.1, lease)))
        return len(claimed) >= count

    wait_until(more, timeout=10, message=f"{count} runs claimed")
    return claimed


def test_renew_all_answers_per_attempt_like_renew(store: RunStore, run: Runner, queue: Queue) -> None:
    held, stale, cancelled = queue(), queue(), queue()
    claimed = claim_all(store, run, 3, lease=0.5)
    assert sorted(r.run_id for r in claimed) == sorted([held.run_id, stale.run_id, cancelled.run_id])
    queued = queue()
    run(store.cancel(cancelled.run_id, LEASE))
    asked = [(held.run_id, 1), (stale.run_id, 2), (cancelled.run_id, 1), (queued.run_id, 0), ("no-such-run", 1)]
    assert run(store.renew_all(asked, LEASE)) == [Lease.HELD, Lease.LOST, Lease.CANCEL, Lease.LOST, Lease.LOST]
    assert run(store.renew_all([], LEASE)) == []
    # Renewed past the short lease of the claim: only the attempt renewed under another number lapses.
    lapsed = wait_until(lambda: run(store.expired(10)), timeout=5, message="the unrenewed lease to lapse")
    assert [r.run_id for r in lapsed] == [stale.run_id]


def test_renew_all_renews_more_runs_than_one_script_takes(store: RunStore, run: Runner, queue: Queue) -> None:
    for _ in range(600):
        queue()
    claimed = claim_all(store, run, 600, LEASE)
    leases = run(store.renew_all([(r.run_id, r.attempt) for r in claimed], LEASE))
    assert leases == [Lease.HELD] * 600


def test_heartbeat_grants_a_grace_after_a_silence_only(store: RunStore, run: Runner) -> None:
    # The first heartbeat ever follows an unknown silence: a grace.
    before = now()
    resume = run(store.heartbeat(0.5, 2.0))
    assert before + 2.0 - EPSILON <= resume <= now() + 2.0
    # Heartbeats closer together than the quiet period keep that grace, and add none.
    assert run(store.heartbeat(0.5, 2.0)) == resume
    assert run(store.heartbeat(10.0, 2.0)) == resume
    # A silence longer than the quiet period: a new grace, from now, for every caller.
    silence = wait_until(lambda: now() - before > 0.6 and now(), timeout=5)
    later = run(store.heartbeat(0.5, 2.0))
    assert silence + 2.0 - EPSILON <= later <= now() + 2.0
    assert run(store.heartbeat(0.5, 2.0)) == later
