"""The Execution role over both stores: claims, leases, outcomes, recovery, output and housekeeping."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from asyncgate.progress import progress_event
from asyncgate.runs import ErrorCode, Outcome, Progress, Run, RunError, RunState, now
from asyncgate.store.base import STARVATION_ROUND, CancelResult, Created, Execution, Idempotency, Lease, RunStore, Share
from tests.store.conftest import (
    BINARY,
    LEASE,
    RETENTION,
    Queue,
    Runner,
    claim_ids,
    claim_one,
    fitting,
    new_run,
    ok,
    queue_at,
    spread,
)
from tests.support.wait import wait_until

#: Clock readings travel as text through Redis: equal to a microsecond.
EPSILON = 1e-5
#: A store that judges leases by its own clock (Redis's) answers times of that clock converted
#: to the caller's, which move by the round trip's jitter from one call to the next.
CLOCKS = 0.05


def claim_all(store: RunStore, run: Runner, count: int, lease: float) -> list[Run]:
    claimed: list[Run] = []

    def more() -> bool:
        claimed.extend(run(store.claim("me", count - len(claimed), 0.1, lease)))
        return len(claimed) >= count

    wait_until(more, timeout=10, message=f"{count} runs claimed")
    return claimed


def report(value: float, message: str | None = None, attempt: int = 1) -> dict[str, object]:
    return progress_event({"progress": value, "message": message}, attempt, 1000.0 + value)


def output(seq: int, **extra: object) -> dict[str, object]:
    return {"event": "output", "attempt": 1, "seq": seq, "at": 1.0, "data": f"token-{seq}", **extra}


class TestExecution:
    role = Execution

    @pytest.mark.exercises("claim")
    def test_claim_returns_the_run_running_with_attempt_1(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        before = time.time()

        claimed = claim_one(store, run)

        assert claimed.run_id == queued.run_id
        assert claimed.state is RunState.RUNNING
        assert claimed.attempt == 1
        assert claimed.started_at is not None and before <= claimed.started_at <= time.time()
        assert claimed.request == queued.request
        assert run(store.get(queued.run_id)) == claimed

    @pytest.mark.exercises("claim")
    def test_claim_with_nothing_queued_returns_empty_within_wait(self, store: RunStore, run: Runner) -> None:
        assert run(store.claim("owner-a", 5, 0, LEASE)) == []

        started = time.monotonic()
        assert run(store.claim("owner-a", 5, 0.3, LEASE)) == []
        assert time.monotonic() - started < 2.0

    @pytest.mark.exercises("claim")
    def test_a_waiting_claim_takes_a_run_created_meanwhile(self, store: RunStore, run: Runner) -> None:
        queued = new_run()

        async def scenario() -> tuple[list[Run], float]:
            started = time.monotonic()
            waiting = asyncio.create_task(store.claim("owner-a", 1, 10.0, LEASE))
            await store.create(queued, b"")
            return await waiting, time.monotonic() - started

        claimed, elapsed = run(scenario())

        assert [c.run_id for c in claimed] == [queued.run_id]
        assert elapsed < 5.0

    @pytest.mark.exercises("claim")
    def test_claim_respects_limit_and_fifo_order(self, store: RunStore, run: Runner, queue: Queue) -> None:
        first, second, third = queue(), queue(), queue()

        taken = run(store.claim("owner-a", 2, 0, LEASE))
        rest = run(store.claim("owner-a", 2, 0, LEASE))
        assert (len(taken), len(rest), run(store.claim("owner-a", 2, 0, LEASE))) == (2, 1, [])
        claimed = [c.run_id for c in [*taken, *rest]]
        if spread(store):  # runs queued in the same millisecond in two slots come in either order
            assert sorted(claimed) == sorted([first.run_id, second.run_id, third.run_id])
        else:
            assert claimed == [first.run_id, second.run_id, third.run_id]

    @pytest.mark.exercises("claim")
    def test_concurrent_claims_never_share_a_run(self, store: RunStore, run: Runner, queue: Queue) -> None:
        created = {queue().run_id for _ in range(50)}

        async def drain(owner: str) -> list[str]:
            taken: list[str] = []
            while batch := await store.claim(owner, 7, 0, LEASE):
                taken += [claimed.run_id for claimed in batch]
            return taken

        async def both() -> list[list[str]]:
            return list(await asyncio.gather(drain("owner-a"), drain("owner-b"), drain("owner-c")))

        taken = run(both())

        everything = [run_id for batch in taken for run_id in batch]
        assert len(everything) == len(set(everything)) == 50
        assert set(everything) == created

    @pytest.mark.exercises("finish")
    def test_finish_stores_outcome_and_binary_result(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queue()
        claimed = claim_one(store, run)
        outcome = ok(body=BINARY)

        assert run(store.finish(claimed.run_id, 1, outcome, RETENTION)) is not None

        finished = run(store.get(claimed.run_id))
        assert finished is not None
        assert finished.state is RunState.SUCCEEDED
        assert finished.attempt == 1
        assert finished.upstream_status == 201
        assert finished.error is None
        assert finished.started_at == claimed.started_at
        assert finished.finished_at is not None and finished.finished_at >= (claimed.started_at or 0)
        assert run(store.result(claimed.run_id)) == outcome.result

    @pytest.mark.exercises("finish")
    def test_finish_without_a_result_keeps_the_error(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queue()
        claimed = claim_one(store, run)
        error = RunError(ErrorCode.RESULT_TOO_LARGE, "the body was over 1 KiB")
        outcome = Outcome(RunState.FAILED, error=error, status=200)

        assert run(store.finish(claimed.run_id, 1, outcome, RETENTION)) is not None

        finished = run(store.get(claimed.run_id))
        assert finished is not None
        assert (finished.state, finished.upstream_status, finished.error) == (RunState.FAILED, 200, error)
        assert run(store.result(claimed.run_id)) is None

    @pytest.mark.exercises("finish", "request_body")
    def test_finish_drops_the_request_body(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queue(body=b"payload")
        claimed = claim_one(store, run)

        run(store.finish(claimed.run_id, 1, ok(), RETENTION))

        assert run(store.request_body(claimed.run_id)) is None

    @pytest.mark.exercises("finish", "request_body")
    def test_finish_of_another_attempt_is_refused_and_changes_nothing(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queue(body=b"payload")
        claimed = claim_one(store, run)

        assert run(store.finish(claimed.run_id, 2, ok(), RETENTION)) is None
        assert run(store.finish(claimed.run_id, 0, ok(), RETENTION)) is None

        assert run(store.get(claimed.run_id)) == claimed
        assert run(store.result(claimed.run_id)) is None
        assert run(store.request_body(claimed.run_id)) == b"payload"

    @pytest.mark.exercises("finish")
    def test_finish_of_a_queued_run_is_refused(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()

        assert run(store.finish(queued.run_id, 0, ok(), RETENTION)) is None
        assert run(store.finish(queued.run_id, 1, ok(), RETENTION)) is None

        assert run(store.get(queued.run_id)) == queued
        assert claim_one(store, run).run_id == queued.run_id

    @pytest.mark.exercises("finish")
    def test_finish_twice_is_refused_and_keeps_the_first_outcome(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queue()
        claimed = claim_one(store, run)
        run(store.finish(claimed.run_id, 1, ok(b"first"), RETENTION))
        first = run(store.get(claimed.run_id))

        cancelled = Outcome(RunState.CANCELLED, error=RunError("cancelled", "too late"))
        assert run(store.finish(claimed.run_id, 1, cancelled, RETENTION)) is None

        assert run(store.get(claimed.run_id)) == first
        assert run(store.result(claimed.run_id)) == ok(b"first").result

    @pytest.mark.exercises("finish")
    def test_finish_of_an_unknown_run_is_refused(self, store: RunStore, run: Runner) -> None:
        assert run(store.finish("no-such-run", 1, ok(), RETENTION)) is None

    @pytest.mark.exercises("finish", "request_body")
    def test_a_finished_run_expires_after_its_retention(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        claim_one(store, run)
        run(store.finish(queued.run_id, 1, ok(), 0.5))
        assert run(store.get(queued.run_id)) is not None

        wait_until(lambda: run(store.get(queued.run_id)) is None, timeout=5, message="the run to expire")

        assert run(store.result(queued.run_id)) is None
        assert run(store.request_body(queued.run_id)) is None

    @pytest.mark.exercises("renew")
    def test_renew_holds_only_for_the_current_attempt(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        assert run(store.renew(queued.run_id, 0, LEASE)) is Lease.LOST
        claimed = claim_one(store, run)

        assert run(store.renew(claimed.run_id, 1, LEASE)) is Lease.HELD
        assert run(store.renew(claimed.run_id, 2, LEASE)) is Lease.LOST
        assert run(store.renew("no-such-run", 1, LEASE)) is Lease.LOST

        run(store.finish(claimed.run_id, 1, ok(), RETENTION))
        assert run(store.renew(claimed.run_id, 1, LEASE)) is Lease.LOST

    @pytest.mark.exercises("renew_all", "expired")
    def test_renew_all_answers_per_attempt_like_renew(self, store: RunStore, run: Runner, queue: Queue) -> None:
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

    @pytest.mark.exercises("renew_all")
    def test_renew_all_renews_more_runs_than_one_script_takes(self, store: RunStore, run: Runner, queue: Queue) -> None:
        for _ in range(600):
            queue()
        claimed = claim_all(store, run, 600, LEASE)
        leases = run(store.renew_all([(r.run_id, r.attempt) for r in claimed], LEASE))
        assert leases == [Lease.HELD] * 600

    @pytest.mark.exercises("heartbeat")
    def test_heartbeat_grants_a_grace_after_a_silence_only(self, store: RunStore, run: Runner) -> None:
        # The first heartbeat ever follows an unknown silence: a grace.
        before = now()
        resume = run(store.heartbeat(0.5, 2.0))
        assert before + 2.0 - CLOCKS <= resume <= now() + 2.0 + CLOCKS
        # Heartbeats closer together than the quiet period keep that grace, and add none.
        assert run(store.heartbeat(0.5, 2.0)) == pytest.approx(resume, abs=CLOCKS)
        assert run(store.heartbeat(10.0, 2.0)) == pytest.approx(resume, abs=CLOCKS)
        # A silence longer than the quiet period: a new grace, from now, for every caller.
        silence = wait_until(lambda: now() - before > 0.6 and now(), timeout=5)
        later = run(store.heartbeat(0.5, 2.0))
        assert silence + 2.0 - CLOCKS <= later <= now() + 2.0 + CLOCKS
        assert run(store.heartbeat(0.5, 2.0)) == pytest.approx(later, abs=CLOCKS)

    @pytest.mark.exercises("keep_alive", "claim", "expired")
    def test_a_heartbeat_keeps_every_run_its_owner_holds(self, store: RunStore, run: Runner, queue: Queue) -> None:
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

    @pytest.mark.exercises("keep_alive", "finish")
    def test_a_heartbeat_brings_the_cancellations_of_its_runs(self, store: RunStore, run: Runner, queue: Queue) -> None:
        asked, left = queue(), queue()
        run(store.keep_alive("gw-a", LEASE, 10.0, 0.0))
        assert len(run(store.claim("gw-a", 2, 0.1, LEASE))) == 2
        assert run(store.cancel(asked.run_id, LEASE)).value == "requested"

        assert run(store.keep_alive("gw-a", LEASE, 10.0, 0.0)).cancels == (asked.run_id,)
        assert run(store.finish(asked.run_id, 1, Outcome(RunState.CANCELLED), LEASE))
        assert left.run_id not in run(store.keep_alive("gw-a", LEASE, 10.0, 0.0)).cancels

    @pytest.mark.exercises("requeue", "claim", "request_body", "renew", "finish")
    def test_requeue_then_claim_gives_attempt_2_and_fences_attempt_1(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue(body=b"payload")
        claim_one(store, run, owner="owner-a")

        assert run(store.requeue(queued.run_id, 2)) is False
        assert run(store.requeue(queued.run_id, 1)) is True
        assert run(store.get(queued.run_id)) == Run(
            run_id=queued.run_id, state=RunState.QUEUED, request=queued.request, created_at=queued.created_at, attempt=1
        )
        assert run(store.requeue(queued.run_id, 1)) is False

        again = claim_one(store, run, owner="owner-b")
        assert (again.run_id, again.attempt, again.state) == (queued.run_id, 2, RunState.RUNNING)
        assert run(store.request_body(queued.run_id)) == b"payload"
        assert run(store.finish(queued.run_id, 1, ok(b"stale"), RETENTION)) is None
        assert run(store.renew(queued.run_id, 1, LEASE)) is Lease.LOST
        assert run(store.finish(queued.run_id, 2, ok(b"fresh"), RETENTION)) is not None
        assert run(store.result(queued.run_id)) == ok(b"fresh").result

    @pytest.mark.exercises("requeue")
    def test_a_requeued_run_goes_to_the_back_of_the_queue(self, store: RunStore, run: Runner, queue: Queue) -> None:
        if spread(store):
            pytest.skip("spread over slots, runs queued in the same millisecond in two slots come in either order")
        first = queue()
        claim_one(store, run)
        second = queue()

        run(store.requeue(first.run_id, 1))

        assert [c.run_id for c in run(store.claim("owner-a", 5, 0, LEASE))] == [second.run_id, first.run_id]

    @pytest.mark.exercises("expired")
    def test_expired_finds_a_lapsed_lease_but_not_a_renewed_one(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        lapsed, renewed = queue(), queue()
        run(store.claim("owner-a", 2, 0, 0.2))
        assert run(store.renew(renewed.run_id, 1, LEASE)) is Lease.HELD

        found = wait_until(lambda: run(store.expired(10)), timeout=5, message="the lapsed lease to show up")

        assert [r.run_id for r in found] == [lapsed.run_id]
        assert (found[0].state, found[0].attempt) == (RunState.RUNNING, 1)

    @pytest.mark.exercises("expired")
    def test_expired_skips_runs_finished_or_requeued(self, store: RunStore, run: Runner, queue: Queue) -> None:
        finished, requeued, lapsed = queue(), queue(), queue()
        run(store.claim("owner-a", 3, 0, 0.2))
        run(store.finish(finished.run_id, 1, ok(), RETENTION))
        run(store.requeue(requeued.run_id, 1))

        found = wait_until(lambda: run(store.expired(10)), timeout=5, message="the lapsed lease to show up")

        assert [r.run_id for r in found] == [lapsed.run_id]

    @pytest.mark.exercises("expired")
    def test_expired_respects_its_limit(self, store: RunStore, run: Runner, queue: Queue) -> None:
        for _ in range(3):
            queue()
        run(store.claim("owner-a", 3, 0, 0.1))

        wait_until(lambda: len(run(store.expired(10))) == 3, timeout=5)

        assert len(run(store.expired(2))) == 2

    @pytest.mark.exercises("cancellations")
    def test_cancellations_tell_every_listener_which_run_to_abort(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue()
        claim_one(store, run)

        async def scenario() -> str:
            stream = store.cancellations()
            heard = asyncio.ensure_future(anext(stream))
            try:
                # A listener may still be subscribing: the request is repeated until it is heard,
                # as a holder's lease renewal would find the flag.
                deadline = time.monotonic() + 5
                while not heard.done() and time.monotonic() < deadline:
                    assert await store.cancel(queued.run_id, RETENTION) is CancelResult.REQUESTED
                    await asyncio.wait({heard}, timeout=0.05)
                return await heard
            finally:
                heard.cancel()
                await stream.aclose()

        assert run(scenario()) == queued.run_id

    @pytest.mark.exercises("append_output")
    def test_output_is_logged_between_the_state_events_and_resumes_after_an_id(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue()
        claimed = claim_one(store, run)
        ids = run(store.append_output(queued.run_id, claimed.attempt, [output(0), output(1)], []))
        assert ids is not None and len(ids) == 2
        more = run(store.append_output(queued.run_id, claimed.attempt, [output(2)], []))
        assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))

        events = run(store.events(queued.run_id, None, 0))
        assert [e.data["event"] for e in events] == ["queued", "running", "output", "output", "output", "succeeded"]
        assert [e.data for e in events[2:5]] == [output(0), output(1), output(2)]
        assert [e.id for e in events[2:5]] == [*ids, *(more or [])]
        assert [e.data.get("seq") for e in run(store.events(queued.run_id, ids[0], 0))] == [1, 2, None]

    @pytest.mark.exercises("append_output")
    def test_append_output_drops_the_events_it_names(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        claimed = claim_one(store, run)
        ids = run(store.append_output(queued.run_id, 1, [output(0), output(1, kept=False)], []))
        assert ids is not None
        assert run(store.append_output(queued.run_id, 1, [output(2, kept=False)], [ids[1]])) is not None
        outputs = [e.data["seq"] for e in run(store.events(queued.run_id, None, 0)) if e.data["event"] == "output"]
        assert outputs == [0, 2]
        assert claimed.state is RunState.RUNNING

    @pytest.mark.exercises("append_output")
    def test_append_output_is_fenced_by_the_attempt(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        claim_one(store, run, lease=LEASE)
        assert run(store.append_output(queued.run_id, 2, [output(0)], [])) is None
        assert run(store.append_output("no-such-run", 1, [output(0)], [])) is None
        assert run(store.finish(queued.run_id, 1, ok(), RETENTION))
        assert run(store.append_output(queued.run_id, 1, [output(0)], [])) is None
        assert [e.data["event"] for e in run(store.events(queued.run_id, None, 0))] == [
            "queued",
            "running",
            "succeeded",
        ]

    @pytest.mark.exercises("queued_count")
    def test_queued_count_follows_create_claim_cancel_and_requeue(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        assert run(store.queued_count()) == 0
        first, second, third = queue(), queue(), queue()
        assert run(store.queued_count()) == 3

        claimed = claim_one(store, run)
        if not spread(store):  # over several slots, runs queued in the same millisecond come in either order
            assert claimed.run_id == first.run_id
        cancelled, left = (q for q in (first, second, third) if q.run_id != claimed.run_id)
        assert run(store.queued_count()) == 2
        run(store.cancel(cancelled.run_id, RETENTION))
        assert run(store.queued_count()) == 1
        run(store.requeue(claimed.run_id, 1))
        assert run(store.queued_count()) == 2
        taken = [c.run_id for c in run(store.claim("owner-a", 5, 0, LEASE))]
        if spread(store):
            assert sorted(taken) == sorted([left.run_id, claimed.run_id])
        else:
            assert taken == [left.run_id, claimed.run_id]
        assert run(store.queued_count()) == 0

    @pytest.mark.exercises("purge", "expired")
    def test_purge_forgets_expired_runs_their_listing_events_and_keys(self, store: RunStore, run: Runner) -> None:
        key = Idempotency(key="purged-key", fingerprint="f")
        gone = fitting(store, dataclasses.replace(new_run(), caller="alice"), key.key)
        kept = dataclasses.replace(new_run(), caller="alice")
        run(store.create(gone, b"", idempotency=key))
        claim_one(store, run)
        run(store.finish(gone.run_id, 1, ok(), 0.2))
        run(store.create(kept, b""))
        wait_until(lambda: run(store.get(gone.run_id)) is None, timeout=5, message="the run to expire")

        run(store.purge())

        assert run(store.list_runs("alice", None, 10, None)) == ([kept], None)
        assert run(store.list_runs(None, None, 10, None)) == ([kept], None)
        assert run(store.events(gone.run_id, None, 0)) == []
        assert run(store.expired(10)) == []
        again = fitting(store, new_run(), key.key)
        assert run(store.create(again, b"", idempotency=key)) == Created(again.run_id)
        run(store.purge())
        assert run(store.get(kept.run_id)) == kept

    @pytest.mark.exercises("add_hook")
    def test_add_hook_queues_numbered_deliveries_fenced_by_the_attempt(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue()
        claimed = claim_one(store, run)
        assert run(store.add_hook(queued.run_id, claimed.attempt, "start", b'{"n": 1}', 10))
        assert run(store.add_hook(queued.run_id, claimed.attempt, "output", b'{"n": 2}', 10))
        assert not run(store.add_hook(queued.run_id, claimed.attempt + 1, "output", b'{"n": 3}', 10))
        assert not run(store.add_hook("no-such-run", 1, "output", b'{"n": 4}', 10))
        current = run(store.get(queued.run_id))
        assert current is not None and current.hook_seq == 2
        assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
        assert not run(store.add_hook(queued.run_id, claimed.attempt, "output", b'{"n": 5}', 10))

    @pytest.mark.exercises("report_progress")
    def test_a_report_is_logged_and_becomes_the_runs_latest_progress(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue()
        claimed = claim_one(store, run)
        assert run(store.get(queued.run_id)).progress is None  # type: ignore[union-attr]
        first = run(store.report_progress(queued.run_id, claimed.attempt, report(0.25, "a"), 10, b"{}", 10))
        second = run(store.report_progress(queued.run_id, claimed.attempt, report(0.5, "b"), 10, b"{}", 10))
        assert first is not None and second is not None

        current = run(store.get(queued.run_id))
        assert current is not None and current.progress == Progress(0.5, "b", 1, 1000.5)
        events = run(store.events(queued.run_id, None, 0))
        assert [e.data["event"] for e in events] == ["queued", "running", "progress", "progress"]
        assert [e.id for e in events[2:]] == [first, second]
        assert events[3].data == report(0.5, "b")
        # The latest report stays in the status once the run is over.
        assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
        finished = run(store.get(queued.run_id))
        assert finished is not None and finished.progress == Progress(0.5, "b", 1, 1000.5)

    @pytest.mark.exercises("report_progress")
    def test_reports_past_the_kept_bound_replace_each_other_in_the_log(
        self, store: RunStore, run: Runner, queue: Queue
    ) -> None:
        queued = queue()
        claim_one(store, run)
        for step in range(6):
            assert run(store.report_progress(queued.run_id, 1, report(step / 10), 2, b"{}", 10)) is not None
        kept = [e.data["progress"] for e in run(store.events(queued.run_id, None, 0)) if e.data["event"] == "progress"]
        assert kept == [0.0, 0.1, 0.5]
        latest = run(store.get(queued.run_id))
        assert latest is not None and latest.progress is not None and latest.progress.value == 0.5

    @pytest.mark.exercises("report_progress")
    def test_report_progress_is_fenced_by_the_attempt(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        claim_one(store, run, lease=LEASE)
        assert run(store.report_progress(queued.run_id, 2, report(0.1), 10, b"{}", 10)) is None
        assert run(store.report_progress("no-such-run", 1, report(0.1), 10, b"{}", 10)) is None
        assert run(store.finish(queued.run_id, 1, ok(), RETENTION))
        assert run(store.report_progress(queued.run_id, 1, report(0.9), 10, b"{}", 10)) is None
        assert [e.data["event"] for e in run(store.events(queued.run_id, None, 0))] == [
            "queued",
            "running",
            "succeeded",
        ]
        finished = run(store.get(queued.run_id))
        assert finished is not None and finished.progress is None

    @pytest.mark.exercises("progress_key")
    def test_the_progress_key_is_made_once_and_kept(self, store: RunStore, run: Runner) -> None:
        key = run(store.progress_key())
        assert len(key) == 32
        assert run(store.progress_key()) == key

    @pytest.mark.exercises("claim")
    def test_higher_priorities_are_claimed_first_oldest_first_within_one(self, store: RunStore, run: Runner) -> None:
        if spread(store):
            pytest.skip("spread over slots, the order within a priority is kept per slot (tests/store/test_slots.py)")
        low = [queue_at(store, run, 0) for _ in range(2)]
        high = [queue_at(store, run, 7) for _ in range(2)]
        mid = queue_at(store, run, 3)

        assert claim_ids(store, run, limit=5) == [
            high[0].run_id,
            high[1].run_id,
            mid.run_id,
            low[0].run_id,
            low[1].run_id,
        ]

    @pytest.mark.exercises("claim")
    def test_every_fourth_claim_takes_the_oldest_of_the_lowest_priority_first(
        self, store: RunStore, run: Runner
    ) -> None:
        if spread(store):
            pytest.skip("spread over slots, the order within a priority is kept per slot (tests/store/test_slots.py)")
        low = queue_at(store, run, 0)
        high = [queue_at(store, run, 5) for _ in range(2 * STARVATION_ROUND)]

        taken = [claim_ids(store, run)[0] for _ in range(STARVATION_ROUND)]

        assert taken == [run_.run_id for run_ in high[: STARVATION_ROUND - 1]] + [low.run_id]
        assert claim_ids(store, run) == [high[STARVATION_ROUND - 1].run_id]

    @pytest.mark.exercises("claim")
    def test_the_starvation_round_also_reaches_a_low_level_above_zero(self, store: RunStore, run: Runner) -> None:
        if spread(store):
            pytest.skip("spread over slots, the order within a priority is kept per slot (tests/store/test_slots.py)")
        low = [queue_at(store, run, 2) for _ in range(2)]
        high = [queue_at(store, run, 9) for _ in range(STARVATION_ROUND)]

        taken = [claim_ids(store, run)[0] for _ in range(STARVATION_ROUND)]

        assert taken == [run_.run_id for run_ in high[: STARVATION_ROUND - 1]] + [low[0].run_id]

    @pytest.mark.exercises("claim", "requeue")
    def test_a_requeued_run_keeps_its_priority(self, store: RunStore, run: Runner) -> None:
        queue_at(store, run, 0)
        high = queue_at(store, run, 6)
        assert claim_ids(store, run) == [high.run_id]

        assert run(store.requeue(high.run_id, 1))

        assert claim_ids(store, run) == [high.run_id]

    @pytest.mark.exercises("claim", "queued_count")
    def test_a_cancelled_run_of_any_priority_is_never_claimed(self, store: RunStore, run: Runner) -> None:
        high = queue_at(store, run, 4)
        assert run(store.cancel(high.run_id, RETENTION)) is CancelResult.CANCELLED

        assert claim_ids(store, run, limit=5) == []
        assert run(store.queued_count()) == 0

    @pytest.mark.exercises("queued_count")
    def test_queued_count_counts_every_priority(self, store: RunStore, run: Runner) -> None:
        for priority in (0, 1, 9):
            queue_at(store, run, priority)

        assert run(store.queued_count()) == 3

    @pytest.mark.exercises("expire_queued", "claim")
    def test_a_run_past_its_queue_deadline_ends_expired_with_its_webhook(self, store: RunStore, run: Runner) -> None:
        late = queue_at(store, run, 0, deadline=now() - 1, webhook="https://hooks.example.com/x")
        late_high = queue_at(store, run, 5, deadline=now() - 1)
        on_time = queue_at(store, run, 0, deadline=now() + 3600)

        expired = run(store.expire_queued(10, RETENTION))

        assert {run_.run_id for run_ in expired} == {late.run_id, late_high.run_id}
        for run_id in (late.run_id, late_high.run_id):
            ended = run(store.get(run_id))
            assert ended is not None and ended.state is RunState.EXPIRED and ended.finished_at is not None
            assert ended.error is not None and ended.error.code == ErrorCode.QUEUE_DEADLINE_EXCEEDED
            assert ended.attempt == 0 and ended.upstream_status is None
            assert run(store.request_body(run_id)) is None
        events = run(store.events(late.run_id, None, 0))
        assert [event.data["event"] for event in events] == ["queued", "expired"]
        assert events[-1].is_final and events[-1].data["error"]["code"] == "queue_deadline_exceeded"
        due = run(store.due_deliveries(10, 30))
        assert [delivery.run.run_id for delivery in due] == [late.run_id]
        assert claim_ids(store, run, limit=5) == [on_time.run_id]
        assert run(store.expire_queued(10, RETENTION)) == []

    @pytest.mark.exercises("expire_queued", "requeue", "claim")
    def test_the_sweep_leaves_a_run_that_started_before_its_deadline(self, store: RunStore, run: Runner) -> None:
        queued = queue_at(store, run, 0, deadline=now() + 0.2)
        assert claim_ids(store, run) == [queued.run_id]
        # Handed back after its deadline: it started in time, so it is never expired now.
        assert run(store.requeue(queued.run_id, 1))

        passed = (queued.request.queue_deadline or 0) + 0.05
        wait_until(lambda: now() > passed, timeout=5, message="the deadline passed")

        assert run(store.expire_queued(10, RETENTION)) == []
        assert claim_ids(store, run) == [queued.run_id]

    @pytest.mark.exercises("claim", "expire_queued", "requeue", "finish")
    def test_share_counts_return_to_zero_whichever_way_runs_end(self, store: RunStore, run: Runner) -> None:
        shares = (Share("caller-a", 10), Share("caller-a batch", 10))
        finished, failed, cancelled, requeued = (queue_at(store, run, shares=shares) for _ in range(4))
        queue_at(store, run, 0, deadline=now() - 1, shares=shares)
        assert run(store.share_counts()) == {"caller-a": 5, "caller-a batch": 5}

        claimed = {claimed.run_id: claimed for claimed in run(store.claim("owner-a", 3, 0, LEASE))}
        assert set(claimed) == {finished.run_id, failed.run_id, cancelled.run_id}
        assert run(store.expire_queued(10, RETENTION))
        assert run(store.requeue(cancelled.run_id, 1))  # a lost holder's run stays counted while queued
        assert run(store.share_counts()) == {"caller-a": 4, "caller-a batch": 4}
        success = Outcome(RunState.SUCCEEDED, error=None)
        assert run(store.finish(finished.run_id, 1, success, RETENTION))
        lost = Outcome(RunState.FAILED, error=RunError(ErrorCode.LOST, "lost"))
        assert run(store.finish(failed.run_id, 1, lost, RETENTION))
        assert run(store.cancel(cancelled.run_id, RETENTION)) is CancelResult.CANCELLED
        assert run(store.share_counts()) == {"caller-a": 1, "caller-a batch": 1}
        (last,) = run(store.claim("owner-a", 5, 0, LEASE))
        assert last.run_id == requeued.run_id
        assert run(store.finish(last.run_id, 1, success, RETENTION))

        assert run(store.share_counts()) == {}
