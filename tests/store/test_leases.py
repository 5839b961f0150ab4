"""Batched renewals, gateways' heartbeats and the fleet's, on both stores (#22, #18)."""

from __future__ import annotations

from asyncgate.runs import Outcome, Run, RunState, now
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


def test_a_heartbeat_keeps_every_run_its_owner_holds(store: RunStore, run: Runner, queue: Queue) -> None:
    held, other = queue(), queue()
    assert not run(store.keep_alive("gw-a", 0.6, 10.0, 0.0)).lost
    claimed = claim_all(store, run, 1, lease=0.3)  # "me": no heartbeat
    mine = run(store.claim("gw-a", 1, 0.1, 0.3))
    assert {claimed[0].run_id, mine[0].run_id} == {held.run_id, other.run_id}
    # Heartbeats past the claims' own leases: only the run of the owner without one lapses.
    started = now()
    while now() - started < 0.9:
        assert not run(store.keep_alive("gw-a", 0.6, 10.0, 0.0)).lost
        assert [r.run_id for r in run(store.expired(10))] in ([], [claimed[0].run_id])
    assert [r.run_id for r in run(store.expired(10))] == [claimed[0].run_id]
    # Once the heartbeat stops, its run lapses too.
    lapsed = wait_until(lambda: len(run(store.expired(10))) == 2 and run(store.expired(10)), timeout=5)
    assert {r.run_id for r in lapsed} == {held.run_id, other.run_id}


def test_a_heartbeat_brings_the_cancellations_of_its_runs(store: RunStore, run: Runner, queue: Queue) -> None:
    asked, left = queue(), queue()
    run(store.keep_alive("gw-a", LEASE, 10.0, 0.0))
    assert len(run(store.claim("gw-a", 2, 0.1, LEASE))) == 2
    assert run(store.cancel(asked.run_id, LEASE)).value == "requested"

    assert run(store.keep_alive("gw-a", LEASE, 10.0, 0.0)).cancels == (asked.run_id,)
    assert run(store.finish(asked.run_id, 1, Outcome(RunState.CANCELLED), LEASE))
    assert left.run_id not in run(store.keep_alive("gw-a", LEASE, 10.0, 0.0)).cancels
