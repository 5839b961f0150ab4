"""Priorities, queue deadlines and shares: the same tests over the Redis store and the embedded store."""

from __future__ import annotations

import dataclasses

import pytest

from asyncgate.runs import ErrorCode, Outcome, Run, RunError, RunState, now
from asyncgate.store.base import STARVATION_ROUND, CancelResult, Idempotency, RunStore, Share, ShareExceeded
from tests.store.conftest import Runner, new_run
from tests.support.wait import wait_until

LEASE = 30.0
RETENTION = 3600.0


def queue_at(
    store: RunStore,
    run: Runner,
    priority: int = 0,
    *,
    deadline: float | None = None,
    shares: tuple[Share, ...] = (),
    webhook: str | None = None,
) -> Run:
    plain = new_run("POST")
    request = dataclasses.replace(plain.request, priority=priority, queue_deadline=deadline, webhook_url=webhook)
    queued = dataclasses.replace(plain, request=request, caller="caller-a")
    run(store.create(queued, b"body", shares=shares))
    return queued


def claim_ids(store: RunStore, run: Runner, limit: int = 1) -> list[str]:
    return [claimed.run_id for claimed in run(store.claim("owner-a", limit, 0, LEASE))]


def test_higher_priorities_are_claimed_first_oldest_first_within_one(store: RunStore, run: Runner) -> None:
    low = [queue_at(store, run, 0) for _ in range(2)]
    high = [queue_at(store, run, 7) for _ in range(2)]
    mid = queue_at(store, run, 3)

    assert claim_ids(store, run, limit=5) == [high[0].run_id, high[1].run_id, mid.run_id, low[0].run_id, low[1].run_id]


def test_every_fourth_claim_takes_the_oldest_of_the_lowest_priority_first(store: RunStore, run: Runner) -> None:
    low = queue_at(store, run, 0)
    high = [queue_at(store, run, 5) for _ in range(2 * STARVATION_ROUND)]

    taken = [claim_ids(store, run)[0] for _ in range(STARVATION_ROUND)]

    assert taken == [run_.run_id for run_ in high[: STARVATION_ROUND - 1]] + [low.run_id]
    assert claim_ids(store, run) == [high[STARVATION_ROUND - 1].run_id]


def test_the_starvation_round_also_reaches_a_low_level_above_zero(store: RunStore, run: Runner) -> None:
    low = [queue_at(store, run, 2) for _ in range(2)]
    high = [queue_at(store, run, 9) for _ in range(STARVATION_ROUND)]

    taken = [claim_ids(store, run)[0] for _ in range(STARVATION_ROUND)]

    assert taken == [run_.run_id for run_ in high[: STARVATION_ROUND - 1]] + [low[0].run_id]


def test_a_requeued_run_keeps_its_priority(store: RunStore, run: Runner) -> None:
    queue_at(store, run, 0)
    high = queue_at(store, run, 6)
    assert claim_ids(store, run) == [high.run_id]

    assert run(store.requeue(high.run_id, 1))

    assert claim_ids(store, run) == [high.run_id]


def test_a_cancelled_run_of_any_priority_is_never_claimed(store: RunStore, run: Runner) -> None:
    high = queue_at(store, run, 4)
    assert run(store.cancel(high.run_id, RETENTION)) is CancelResult.CANCELLED

    assert claim_ids(store, run, limit=5) == []
    assert run(store.queued_count()) == 0


def test_queued_count_counts_every_priority(store: RunStore, run: Runner) -> None:
    for priority in (0, 1, 9):
        queue_at(store, run, priority)

    assert run(store.queued_count()) == 3


def test_queue_position_counts_the_runs_claimed_before(store: RunStore, run: Runner) -> None:
    low = [queue_at(store, run, 0) for _ in range(3)]
    high = [queue_at(store, run, 5) for _ in range(2)]

    positions = [run(store.queue_position(queued)) for queued in (*low, *high)]

    assert [position.ahead for position in positions if position is not None] == [2, 3, 4, 0, 1]
    claim_ids(store, run, limit=2)
    assert run(store.queue_position(high[0])) is None
    after = run(store.queue_position(low[2]))
    assert after is not None and after.ahead == 2


def test_a_run_past_its_queue_deadline_ends_expired_with_its_webhook(store: RunStore, run: Runner) -> None:
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


def test_the_sweep_leaves_a_run_that_started_before_its_deadline(store: RunStore, run: Runner) -> None:
    queued = queue_at(store, run, 0, deadline=now() + 0.2)
    assert claim_ids(store, run) == [queued.run_id]
    # Handed back after its deadline: it started in time, so it is never expired now.
    assert run(store.requeue(queued.run_id, 1))

    passed = (queued.request.queue_deadline or 0) + 0.05
    wait_until(lambda: now() > passed, timeout=5, message="the deadline passed")

    assert run(store.expire_queued(10, RETENTION)) == []
    assert claim_ids(store, run) == [queued.run_id]


def test_a_share_refuses_a_run_past_its_limit_and_stores_nothing(store: RunStore, run: Runner) -> None:
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


def test_share_counts_return_to_zero_whichever_way_runs_end(store: RunStore, run: Runner) -> None:
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


def test_a_replayed_idempotency_key_is_not_counted_again(store: RunStore, run: Runner) -> None:
    share = Share("caller-a", 1)
    queued = new_run("POST")
    key = Idempotency("k", "f")
    run(store.create(queued, b"", idempotency=key, shares=(share,)))

    again = run(store.create(new_run("POST"), b"", idempotency=key, shares=(share,)))

    assert again.replayed and again.run_id == queued.run_id
    assert run(store.share_counts()) == {"caller-a": 1}
