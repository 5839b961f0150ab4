"""The Records role over both stores: runs as callers see them (create, read, follow, list, cancel)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from asyncgate.errors import QueueFull, ShareExceeded
from asyncgate.runs import ErrorCode, Outcome, Run, RunError, RunState
from asyncgate.store.base import CancelResult, Created, Event, Idempotency, Lease, Records, RunStore, Share
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


class TestRecords:
    role = Records

    @pytest.mark.exercises("create", "get", "result")
    def test_create_then_get_returns_the_queued_run_and_its_body(self, store: RunStore, run: Runner) -> None:
        headers = (("accept", "a/b"), ("x-tag", "one"), ("X-Tag", "two"), ("x-tag", "ünï"))
        queued = new_run("POST", headers)

        run(store.create(queued, BINARY))

        assert run(store.get(queued.run_id)) == queued
        assert run(store.request_body(queued.run_id)) == BINARY
        assert run(store.result(queued.run_id)) is None

    @pytest.mark.exercises("create")
    def test_an_empty_body_is_kept_as_empty(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue(body=b"")

        assert run(store.request_body(queued.run_id)) == b""

    @pytest.mark.exercises("get", "result")
    def test_unknown_run_is_none_everywhere(self, store: RunStore, run: Runner) -> None:
        assert run(store.get("no-such-run")) is None
        assert run(store.request_body("no-such-run")) is None
        assert run(store.result("no-such-run")) is None

    @pytest.mark.exercises("create", "get")
    def test_an_idempotency_key_replays_the_run_it_names(self, store: RunStore, run: Runner) -> None:
        key = Idempotency(key="caller-key-hash", fingerprint="request-a")
        first, second, third = fitting(store, new_run(), key.key), fitting(store, new_run(), "another-key"), new_run()

        assert run(store.create(first, b"a", idempotency=key)) == Created(first.run_id)
        same = run(store.create(second, b"b", idempotency=key))
        other = run(store.create(third, b"c", idempotency=Idempotency(key.key, "request-b")))

        assert same == Created(first.run_id, replayed=True, same_request=True)
        assert other == Created(first.run_id, replayed=True, same_request=False)
        assert run(store.get(second.run_id)) is None
        assert run(store.get(third.run_id)) is None
        assert run(store.queued_count()) == 1
        assert run(store.create(second, b"b", idempotency=Idempotency("another-key", "request-a"))) == Created(
            second.run_id
        )

    @pytest.mark.exercises("create")
    def test_max_queued_refuses_a_run_and_stores_nothing(self, store: RunStore, run: Runner) -> None:
        if spread(store):
            pytest.skip("spread over slots, each slot takes its part of max_queued (tests/store/test_slots.py)")
        first, second, refused = new_run(), new_run(), new_run()
        run(store.create(first, b"", max_queued=2))
        run(store.create(second, b"", max_queued=2))

        with pytest.raises(QueueFull):
            run(store.create(refused, b"", max_queued=2))

        assert run(store.get(refused.run_id)) is None
        assert run(store.list_runs(None, None, 10, None))[0] == [second, first]
        claim_one(store, run)
        assert run(store.create(refused, b"", max_queued=2)) == Created(refused.run_id)
        assert run(store.queued_count()) == 2

    @pytest.mark.exercises("cancel", "get", "events")
    def test_cancel_of_a_queued_run_ends_it_at_once(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue(body=b"payload")
        before = time.time()

        assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.CANCELLED

        cancelled = run(store.get(queued.run_id))
        assert cancelled is not None
        assert (cancelled.state, cancelled.attempt, cancelled.error.code if cancelled.error else None) == (
            RunState.CANCELLED,
            0,
            ErrorCode.CANCELLED,
        )
        assert cancelled.finished_at is not None and before <= cancelled.finished_at <= time.time()
        assert run(store.request_body(queued.run_id)) is None
        assert run(store.result(queued.run_id)) is None
        assert run(store.claim("owner-a", 5, 0, LEASE)) == []
        assert run(store.queued_count()) == 0
        assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.FINISHED
        assert [e.data["event"] for e in run(store.events(queued.run_id, None, 0))] == ["queued", "cancelled"]

    @pytest.mark.exercises("cancel", "get")
    def test_cancel_of_a_running_run_asks_its_holder(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        claimed = claim_one(store, run)

        assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.REQUESTED

        flagged = run(store.get(queued.run_id))
        assert flagged == dataclasses.replace(claimed, cancel_requested=True)
        assert run(store.renew(queued.run_id, 1, LEASE)) is Lease.CANCEL
        assert run(store.renew(queued.run_id, 2, LEASE)) is Lease.LOST
        cancelled = Outcome(RunState.CANCELLED, error=RunError(ErrorCode.CANCELLED, "asked"))
        assert run(store.finish(queued.run_id, 1, cancelled, RETENTION)) is not None
        finished = run(store.get(queued.run_id))
        assert finished is not None
        assert (finished.state, finished.cancel_requested) == (RunState.CANCELLED, False)
        assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.FINISHED
        assert run(store.cancel("no-such-run", RETENTION)) is CancelResult.MISSING

    @pytest.mark.exercises("events")
    def test_events_follow_the_run_and_resume_after_an_id(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        first = run(store.events(queued.run_id, None, 0))
        assert [(e.data["event"], e.data["attempt"], e.is_final) for e in first] == [("queued", 0, False)]
        assert run(store.events(queued.run_id, first[-1].id, 0)) == []

        claim_one(store, run)
        run(store.finish(queued.run_id, 1, ok(), RETENTION))

        later = run(store.events(queued.run_id, first[-1].id, 0))
        assert [(e.data["event"], e.data["attempt"], e.is_final) for e in later] == [
            ("running", 1, False),
            ("succeeded", 1, True),
        ]
        assert later[-1].data["upstream_status"] == 201
        assert run(store.events(queued.run_id, None, 0)) == first + later
        assert run(store.events("no-such-run", None, 0)) == []

    @pytest.mark.exercises("events")
    def test_events_wait_for_the_next_change(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        (seen,) = run(store.events(queued.run_id, None, 0))

        async def scenario() -> tuple[list[Event], float]:
            started = time.monotonic()
            waiting = asyncio.create_task(store.events(queued.run_id, seen.id, 10.0))
            await store.claim("owner-a", 1, 0, LEASE)
            return await waiting, time.monotonic() - started

        events, elapsed = run(scenario())

        assert [e.data["event"] for e in events] == ["running"]
        assert elapsed < 5.0
        started = time.monotonic()
        assert run(store.events(queued.run_id, events[-1].id, 0.3)) == []
        assert 0.2 < time.monotonic() - started < 3.0

    @pytest.mark.exercises("watch")
    def test_watch_reads_several_logs_at_once(self, store: RunStore, run: Runner, queue: Queue) -> None:
        first, second, quiet = queue(), queue(), queue()
        seen = {q.run_id: run(store.events(q.run_id, None, 0))[-1].id for q in (first, second, quiet)}
        assert run(store.watch({first.run_id: None, "no-such-run": None}, 0)) == {
            first.run_id: run(store.events(first.run_id, None, 0))
        }

        async def scenario() -> tuple[dict[str, list[Event]], float]:
            started = time.monotonic()
            waiting = asyncio.create_task(store.watch(seen, 10.0))
            # News in one log of the three: not a claim, which over several slots may take any.
            await store.cancel(first.run_id, RETENTION)
            return await waiting, time.monotonic() - started

        found, elapsed = run(scenario())
        assert elapsed < 5.0
        assert list(found) == [first.run_id]
        assert [e.data["event"] for e in found[first.run_id]] == ["cancelled"]
        started = time.monotonic()
        assert run(store.watch(seen | {first.run_id: found[first.run_id][-1].id}, 0.3)) == {}
        assert 0.2 < time.monotonic() - started < 3.0

    @pytest.mark.exercises("interrupt_watch")
    def test_interrupt_watch_ends_a_watch_now_or_the_next_one(self, store: RunStore, run: Runner, queue: Queue) -> None:
        queued = queue()
        (seen,) = run(store.events(queued.run_id, None, 0))

        async def scenario() -> float:
            started = time.monotonic()
            waiting = asyncio.create_task(store.watch({queued.run_id: seen.id}, 10.0))
            await asyncio.sleep(0)
            await store.interrupt_watch()
            assert await waiting == {}
            return time.monotonic() - started

        assert run(scenario()) < 5.0
        run(store.interrupt_watch())  # before the watch starts: it ends at once too
        started = time.monotonic()
        assert run(store.watch({queued.run_id: seen.id}, 10.0)) == {}
        assert time.monotonic() - started < 5.0

    @pytest.mark.exercises("list_runs", "create")
    def test_list_runs_newest_first_by_caller_and_state_in_pages(self, store: RunStore, run: Runner) -> None:
        made: list[Run] = []
        claimed: list[Run] = []
        for index in range(5):
            queued = dataclasses.replace(
                new_run(), caller="alice" if index % 2 == 0 else "bob", created_at=1000.0 + index
            )
            run(store.create(queued, b""))
            made.append(queued)
            if index == 0:
                # Claimed while it is the only one queued: over several slots, runs queued in the
                # same millisecond are claimed in either order.
                claimed = run(store.claim("owner-a", 1, 0, LEASE))
        assert [r.run_id for r in claimed] == [made[0].run_id]
        newest_first = made[::-1]

        everyone, cursor = run(store.list_runs(None, None, 10, None))
        assert ([r.run_id for r in everyone], cursor) == ([r.run_id for r in newest_first], None)
        assert everyone[-1] == claimed[0]
        alices, cursor = run(store.list_runs("alice", None, 10, None))
        assert ([r.run_id for r in alices], cursor) == ([made[4].run_id, made[2].run_id, made[0].run_id], None)
        running, _ = run(store.list_runs(None, RunState.RUNNING, 10, None))
        assert [r.run_id for r in running] == [made[0].run_id]
        assert run(store.list_runs("alice", RunState.SUCCEEDED, 10, None)) == ([], None)
        assert run(store.list_runs("carol", None, 10, None)) == ([], None)

        pages: list[list[str]] = []
        cursor = None
        while True:
            page, cursor = run(store.list_runs(None, None, 2, cursor))
            pages.append([r.run_id for r in page])
            if cursor is None:
                break
        assert [run_id for page in pages for run_id in page] == [r.run_id for r in newest_first]
        assert [len(page) for page in pages[:2]] == [2, 2]
        queued_page, next_cursor = run(store.list_runs("bob", RunState.QUEUED, 1, None))
        assert [r.run_id for r in queued_page] == [made[3].run_id]
        assert run(store.list_runs("bob", RunState.QUEUED, 1, next_cursor))[0][0].run_id == made[1].run_id

    @pytest.mark.exercises("create", "queue_position")
    def test_queue_position_counts_the_runs_claimed_before(self, store: RunStore, run: Runner) -> None:
        if spread(store):
            pytest.skip("spread over slots, a position counts the runs ahead in its slot (tests/store/test_slots.py)")
        low = [queue_at(store, run, 0) for _ in range(3)]
        high = [queue_at(store, run, 5) for _ in range(2)]

        positions = [run(store.queue_position(queued)) for queued in (*low, *high)]

        assert [position.ahead for position in positions if position is not None] == [2, 3, 4, 0, 1]
        claim_ids(store, run, limit=2)
        assert run(store.queue_position(high[0])) is None
        after = run(store.queue_position(low[2]))
        assert after is not None and after.ahead == 2

    @pytest.mark.exercises("create", "share_counts", "cancel")
    def test_a_share_refuses_a_run_past_its_limit_and_stores_nothing(self, store: RunStore, run: Runner) -> None:
        share = Share("caller-a", 2)
        first = queue_at(store, run, shares=(share,))
        queue_at(store, run, shares=(share,))

        with pytest.raises(ShareExceeded) as refused:
            queue_at(store, run, shares=(share,))

        assert refused.value.limit == 2
        assert run(store.queued_count()) == 2
        assert run(store.share_counts()) == {"caller-a": 2}
        queue_at(store, run, shares=(Share("caller-b", 2),))  # another caller is served
        assert run(store.cancel(first.run_id, RETENTION)) is CancelResult.CANCELLED
        queue_at(store, run, shares=(share,))  # room again
        assert run(store.share_counts()) == {"caller-a": 2, "caller-b": 1}

    @pytest.mark.exercises("create", "share_counts")
    def test_a_replayed_idempotency_key_is_not_counted_again(self, store: RunStore, run: Runner) -> None:
        share = Share("caller-a", 1)
        queued = new_run("POST")
        key = Idempotency("k", "f")
        created = run(store.create(queued, b"", idempotency=key, shares=(share,)))

        again = run(store.create(new_run("POST"), b"", idempotency=key, shares=(share,)))

        assert again.replayed and again.run_id == created.run_id
        assert run(store.share_counts()) == {"caller-a": 1}
