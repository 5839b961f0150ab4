"""The RunStore contract: the same tests, run over the Redis store and the embedded store."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest

from asyncgate.runs import Delivery, DeliveryState, ErrorCode, Outcome, Run, RunError, RunResult, RunState, mask_url
from asyncgate.store.base import CancelResult, Created, Event, Idempotency, Lease, QueueFull, RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from tests.store.conftest import Queue, Runner, new_run
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

LEASE = 30.0
RETENTION = 3600.0
BINARY = bytes(range(256)) * 4


def ok(body: bytes = b'{"done":true}') -> Outcome:
    headers = (("content-type", "application/json"), ("set-cookie", "a=1"), ("set-cookie", "b=2"))
    return Outcome(RunState.SUCCEEDED, result=RunResult(status=201, headers=headers, body=body))


def claim_one(store: RunStore, run: Runner, owner: str = "owner-a", lease: float = LEASE) -> Run:
    claimed = run(store.claim(owner, 1, 0, lease))
    assert len(claimed) == 1
    return claimed[0]


def test_create_then_get_returns_the_queued_run_and_its_body(store: RunStore, run: Runner) -> None:
    headers = (("accept", "a/b"), ("x-tag", "one"), ("X-Tag", "two"), ("x-tag", "ünï"))
    queued = new_run("POST", headers)

    run(store.create(queued, BINARY))

    assert run(store.get(queued.run_id)) == queued
    assert run(store.request_body(queued.run_id)) == BINARY
    assert run(store.result(queued.run_id)) is None


def test_an_empty_body_is_kept_as_empty(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue(body=b"")

    assert run(store.request_body(queued.run_id)) == b""


def test_unknown_run_is_none_everywhere(store: RunStore, run: Runner) -> None:
    assert run(store.get("no-such-run")) is None
    assert run(store.request_body("no-such-run")) is None
    assert run(store.result("no-such-run")) is None


def test_ping_answers(store: RunStore, run: Runner) -> None:
    run(store.ping())


def test_claim_returns_the_run_running_with_attempt_1(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    before = time.time()

    claimed = claim_one(store, run)

    assert claimed.run_id == queued.run_id
    assert claimed.state is RunState.RUNNING
    assert claimed.attempt == 1
    assert claimed.started_at is not None and before <= claimed.started_at <= time.time()
    assert claimed.request == queued.request
    assert run(store.get(queued.run_id)) == claimed


def test_claim_with_nothing_queued_returns_empty_within_wait(store: RunStore, run: Runner) -> None:
    assert run(store.claim("owner-a", 5, 0, LEASE)) == []

    started = time.monotonic()
    assert run(store.claim("owner-a", 5, 0.3, LEASE)) == []
    assert time.monotonic() - started < 2.0


def test_a_waiting_claim_takes_a_run_created_meanwhile(store: RunStore, run: Runner) -> None:
    queued = new_run()

    async def scenario() -> tuple[list[Run], float]:
        started = time.monotonic()
        waiting = asyncio.create_task(store.claim("owner-a", 1, 10.0, LEASE))
        await store.create(queued, b"")
        return await waiting, time.monotonic() - started

    claimed, elapsed = run(scenario())

    assert [c.run_id for c in claimed] == [queued.run_id]
    assert elapsed < 5.0


def test_claim_respects_limit_and_fifo_order(store: RunStore, run: Runner, queue: Queue) -> None:
    first, second, third = queue(), queue(), queue()

    assert [c.run_id for c in run(store.claim("owner-a", 2, 0, LEASE))] == [first.run_id, second.run_id]
    assert [c.run_id for c in run(store.claim("owner-a", 2, 0, LEASE))] == [third.run_id]
    assert run(store.claim("owner-a", 2, 0, LEASE)) == []


def test_finish_stores_outcome_and_binary_result(store: RunStore, run: Runner, queue: Queue) -> None:
    queue()
    claimed = claim_one(store, run)
    outcome = ok(body=BINARY)

    assert run(store.finish(claimed.run_id, 1, outcome, RETENTION)) is True

    finished = run(store.get(claimed.run_id))
    assert finished is not None
    assert finished.state is RunState.SUCCEEDED
    assert finished.attempt == 1
    assert finished.upstream_status == 201
    assert finished.error is None
    assert finished.started_at == claimed.started_at
    assert finished.finished_at is not None and finished.finished_at >= (claimed.started_at or 0)
    assert run(store.result(claimed.run_id)) == outcome.result


def test_finish_without_a_result_keeps_the_error(store: RunStore, run: Runner, queue: Queue) -> None:
    queue()
    claimed = claim_one(store, run)
    error = RunError(ErrorCode.RESULT_TOO_LARGE, "the body was over 1 KiB")
    outcome = Outcome(RunState.FAILED, error=error, status=200)

    assert run(store.finish(claimed.run_id, 1, outcome, RETENTION)) is True

    finished = run(store.get(claimed.run_id))
    assert finished is not None
    assert (finished.state, finished.upstream_status, finished.error) == (RunState.FAILED, 200, error)
    assert run(store.result(claimed.run_id)) is None


def test_finish_drops_the_request_body(store: RunStore, run: Runner, queue: Queue) -> None:
    queue(body=b"payload")
    claimed = claim_one(store, run)

    run(store.finish(claimed.run_id, 1, ok(), RETENTION))

    assert run(store.request_body(claimed.run_id)) is None


def test_finish_of_another_attempt_is_refused_and_changes_nothing(store: RunStore, run: Runner, queue: Queue) -> None:
    queue(body=b"payload")
    claimed = claim_one(store, run)

    assert run(store.finish(claimed.run_id, 2, ok(), RETENTION)) is False
    assert run(store.finish(claimed.run_id, 0, ok(), RETENTION)) is False

    assert run(store.get(claimed.run_id)) == claimed
    assert run(store.result(claimed.run_id)) is None
    assert run(store.request_body(claimed.run_id)) == b"payload"


def test_finish_of_a_queued_run_is_refused(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()

    assert run(store.finish(queued.run_id, 0, ok(), RETENTION)) is False
    assert run(store.finish(queued.run_id, 1, ok(), RETENTION)) is False

    assert run(store.get(queued.run_id)) == queued
    assert claim_one(store, run).run_id == queued.run_id


def test_finish_twice_is_refused_and_keeps_the_first_outcome(store: RunStore, run: Runner, queue: Queue) -> None:
    queue()
    claimed = claim_one(store, run)
    run(store.finish(claimed.run_id, 1, ok(b"first"), RETENTION))
    first = run(store.get(claimed.run_id))

    cancelled = Outcome(RunState.CANCELLED, error=RunError("cancelled", "too late"))
    assert run(store.finish(claimed.run_id, 1, cancelled, RETENTION)) is False

    assert run(store.get(claimed.run_id)) == first
    assert run(store.result(claimed.run_id)) == ok(b"first").result


def test_finish_of_an_unknown_run_is_refused(store: RunStore, run: Runner) -> None:
    assert run(store.finish("no-such-run", 1, ok(), RETENTION)) is False


def test_renew_holds_only_for_the_current_attempt(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    assert run(store.renew(queued.run_id, 0, LEASE)) is Lease.LOST
    claimed = claim_one(store, run)

    assert run(store.renew(claimed.run_id, 1, LEASE)) is Lease.HELD
    assert run(store.renew(claimed.run_id, 2, LEASE)) is Lease.LOST
    assert run(store.renew("no-such-run", 1, LEASE)) is Lease.LOST

    run(store.finish(claimed.run_id, 1, ok(), RETENTION))
    assert run(store.renew(claimed.run_id, 1, LEASE)) is Lease.LOST


def test_requeue_then_claim_gives_attempt_2_and_fences_attempt_1(store: RunStore, run: Runner, queue: Queue) -> None:
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
    assert run(store.finish(queued.run_id, 1, ok(b"stale"), RETENTION)) is False
    assert run(store.renew(queued.run_id, 1, LEASE)) is Lease.LOST
    assert run(store.finish(queued.run_id, 2, ok(b"fresh"), RETENTION)) is True
    assert run(store.result(queued.run_id)) == ok(b"fresh").result


def test_a_requeued_run_goes_to_the_back_of_the_queue(store: RunStore, run: Runner, queue: Queue) -> None:
    first = queue()
    claim_one(store, run)
    second = queue()

    run(store.requeue(first.run_id, 1))

    assert [c.run_id for c in run(store.claim("owner-a", 5, 0, LEASE))] == [second.run_id, first.run_id]


def test_expired_finds_a_lapsed_lease_but_not_a_renewed_one(store: RunStore, run: Runner, queue: Queue) -> None:
    lapsed, renewed = queue(), queue()
    run(store.claim("owner-a", 2, 0, 0.2))
    assert run(store.renew(renewed.run_id, 1, LEASE)) is Lease.HELD

    found = wait_until(lambda: run(store.expired(10)), timeout=5, message="the lapsed lease to show up")

    assert [r.run_id for r in found] == [lapsed.run_id]
    assert (found[0].state, found[0].attempt) == (RunState.RUNNING, 1)


def test_expired_skips_runs_finished_or_requeued(store: RunStore, run: Runner, queue: Queue) -> None:
    finished, requeued, lapsed = queue(), queue(), queue()
    run(store.claim("owner-a", 3, 0, 0.2))
    run(store.finish(finished.run_id, 1, ok(), RETENTION))
    run(store.requeue(requeued.run_id, 1))

    found = wait_until(lambda: run(store.expired(10)), timeout=5, message="the lapsed lease to show up")

    assert [r.run_id for r in found] == [lapsed.run_id]


def test_expired_respects_its_limit(store: RunStore, run: Runner, queue: Queue) -> None:
    for _ in range(3):
        queue()
    run(store.claim("owner-a", 3, 0, 0.1))

    wait_until(lambda: len(run(store.expired(10))) == 3, timeout=5)

    assert len(run(store.expired(2))) == 2


def test_a_finished_run_expires_after_its_retention(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    run(store.finish(queued.run_id, 1, ok(), 0.5))
    assert run(store.get(queued.run_id)) is not None

    wait_until(lambda: run(store.get(queued.run_id)) is None, timeout=5, message="the run to expire")

    assert run(store.result(queued.run_id)) is None
    assert run(store.request_body(queued.run_id)) is None


def test_concurrent_claims_never_share_a_run(store: RunStore, run: Runner, queue: Queue) -> None:
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


# Cancelling, events, listing, deliveries, the queue, idempotency and housekeeping.


def with_webhook(queued: Run) -> Run:
    return dataclasses.replace(queued, request=dataclasses.replace(queued.request, webhook_url="http://hooks/x?t=1"))


def finish_one(store: RunStore, run: Runner, queued: Run, retention: float = RETENTION) -> Run:
    """Store ``queued``, claim and finish it; returns it as stored."""
    run(store.create(queued, b"payload"))
    claimed = claim_one(store, run)
    assert claimed.run_id == queued.run_id
    assert run(store.finish(queued.run_id, 1, ok(), retention)) is True
    finished = run(store.get(queued.run_id))
    assert finished is not None
    return finished


def test_cancel_of_a_queued_run_ends_it_at_once(store: RunStore, run: Runner, queue: Queue) -> None:
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


def test_cancel_of_a_running_run_asks_its_holder(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claimed = claim_one(store, run)

    assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.REQUESTED

    flagged = run(store.get(queued.run_id))
    assert flagged == dataclasses.replace(claimed, cancel_requested=True)
    assert run(store.renew(queued.run_id, 1, LEASE)) is Lease.CANCEL
    assert run(store.renew(queued.run_id, 2, LEASE)) is Lease.LOST
    cancelled = Outcome(RunState.CANCELLED, error=RunError(ErrorCode.CANCELLED, "asked"))
    assert run(store.finish(queued.run_id, 1, cancelled, RETENTION)) is True
    finished = run(store.get(queued.run_id))
    assert finished is not None
    assert (finished.state, finished.cancel_requested) == (RunState.CANCELLED, False)
    assert run(store.cancel(queued.run_id, RETENTION)) is CancelResult.FINISHED
    assert run(store.cancel("no-such-run", RETENTION)) is CancelResult.MISSING


def test_cancellations_tell_every_listener_which_run_to_abort(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)

    async def scenario() -> str:
        stream: AsyncGenerator[str, None] = store.cancellations()
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


def test_events_follow_the_run_and_resume_after_an_id(store: RunStore, run: Runner, queue: Queue) -> None:
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


def test_events_wait_for_the_next_change(store: RunStore, run: Runner, queue: Queue) -> None:
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


def test_list_runs_newest_first_by_caller_and_state_in_pages(store: RunStore, run: Runner) -> None:
    made: list[Run] = []
    for index in range(5):
        queued = dataclasses.replace(new_run(), caller="alice" if index % 2 == 0 else "bob", created_at=1000.0 + index)
        run(store.create(queued, b""))
        made.append(queued)
    claimed = run(store.claim("owner-a", 1, 0, LEASE))  # the oldest, alice's
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


def test_a_finished_run_with_a_webhook_has_a_delivery_due_at_once(store: RunStore, run: Runner) -> None:
    finished = finish_one(store, run, with_webhook(new_run()))
    assert finished.delivery is not None and finished.delivery.state is DeliveryState.PENDING

    (due,) = run(store.due_deliveries(10, LEASE))

    assert due.run.run_id == finished.run_id
    assert due.run.state is RunState.SUCCEEDED
    assert due.run.delivery is not None and due.run.delivery.state is DeliveryState.DELIVERING
    # Taken: no one else gets it while its lease runs.
    assert run(store.due_deliveries(10, LEASE)) == []
    # The delivery alone sees the webhook URL; the stored run keeps it masked (store/sealing.py).
    stored = run(store.get(finished.run_id))
    assert stored is not None and stored.request.webhook_url == mask_url(str(due.run.request.webhook_url))
    assert dataclasses.replace(stored, request=due.run.request) == due.run


def test_record_delivery_is_fenced_and_a_final_one_starts_retention(store: RunStore, run: Runner) -> None:
    finished = finish_one(store, run, with_webhook(new_run()))
    (due,) = run(store.due_deliveries(10, LEASE))
    retry = Delivery(DeliveryState.PENDING, 1, 500, "upstream said 500", time.time() + 3600)

    assert run(store.record_delivery(finished.run_id, due.token + 1, retry, RETENTION)) is False
    assert run(store.record_delivery(finished.run_id, due.token, retry, RETENTION)) is True
    assert (run(store.get(finished.run_id)) or finished).delivery == retry
    assert run(store.due_deliveries(10, LEASE)) == []

    delivered = Delivery(DeliveryState.DELIVERED, 2, 200)
    assert run(store.record_delivery(finished.run_id, due.token, delivered, 0.3)) is True
    assert (run(store.get(finished.run_id)) or finished).delivery == delivered
    webhooks = [e.data["webhook"] for e in run(store.events(finished.run_id, None, 0)) if e.data["event"] == "webhook"]
    assert [w["state"] for w in webhooks] == ["pending", "delivered"]
    # Its retention starts now that the delivery is final: 0.3 s, not the finish's hour.
    wait_until(lambda: run(store.get(finished.run_id)) is None, timeout=5, message="the delivered run to expire")


def test_a_lapsed_delivery_lease_makes_the_delivery_due_again(store: RunStore, run: Runner) -> None:
    finished = finish_one(store, run, with_webhook(new_run()))
    (first,) = run(store.due_deliveries(10, 0.2))

    (again,) = wait_until(lambda: run(store.due_deliveries(10, LEASE)), timeout=5, message="the delivery due again")

    assert again.run.run_id == finished.run_id
    assert again.token != first.token
    stale = Delivery(DeliveryState.DELIVERED, 1, 200)
    assert run(store.record_delivery(finished.run_id, first.token, stale, RETENTION)) is False


def test_redeliver_makes_a_final_delivery_pending_again(store: RunStore, run: Runner) -> None:
    finished = finish_one(store, run, with_webhook(new_run()))
    (due,) = run(store.due_deliveries(10, LEASE))
    run(store.record_delivery(finished.run_id, due.token, Delivery(DeliveryState.FAILED, 3, 500), RETENTION))

    # The final delivery deleted the run's URL (tests/store/test_sealing.py): a redelivery names one.
    assert run(store.redeliver(finished.run_id, "https://hooks.example/again")) is True

    pending = run(store.get(finished.run_id))
    assert pending is not None and pending.delivery is not None
    assert pending.delivery.state is DeliveryState.PENDING
    (again,) = run(store.due_deliveries(10, LEASE))
    assert again.run.run_id == finished.run_id
    assert run(store.record_delivery(finished.run_id, due.token, Delivery(DeliveryState.DELIVERED, 1), 1)) is False
    assert run(store.record_delivery(finished.run_id, again.token, Delivery(DeliveryState.DELIVERED, 1), 1)) is True


def test_redeliver_needs_a_finished_run_with_a_webhook(store: RunStore, run: Runner, queue: Queue) -> None:
    plain = finish_one(store, run, new_run())
    hooked = with_webhook(new_run())
    run(store.create(hooked, b""))

    assert run(store.redeliver(plain.run_id)) is False
    assert run(store.redeliver(hooked.run_id)) is False
    assert run(store.redeliver("no-such-run")) is False
    assert (run(store.get(plain.run_id)) or plain).delivery is None
    assert run(store.due_deliveries(10, LEASE)) == []


def test_queued_count_follows_create_claim_cancel_and_requeue(store: RunStore, run: Runner, queue: Queue) -> None:
    assert run(store.queued_count()) == 0
    first, second, third = queue(), queue(), queue()
    assert run(store.queued_count()) == 3

    claim_one(store, run)
    assert run(store.queued_count()) == 2
    run(store.cancel(second.run_id, RETENTION))
    assert run(store.queued_count()) == 1
    run(store.requeue(first.run_id, 1))
    assert run(store.queued_count()) == 2
    assert [c.run_id for c in run(store.claim("owner-a", 5, 0, LEASE))] == [third.run_id, first.run_id]
    assert run(store.queued_count()) == 0


def test_an_idempotency_key_replays_the_run_it_names(store: RunStore, run: Runner) -> None:
    key = Idempotency(key="caller-key-hash", fingerprint="request-a")
    first, second, third = new_run(), new_run(), new_run()

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


def test_max_queued_refuses_a_run_and_stores_nothing(store: RunStore, run: Runner) -> None:
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


def test_durability_says_what_the_store_promises(store: RunStore, run: Runner) -> None:
    report = run(store.durability())

    assert set(report) == {"durability", "warnings", "sealing"}
    assert report["sealing"] == "sealed"
    assert isinstance(report["durability"], str) and report["durability"]
    assert isinstance(report["warnings"], list)
    assert all(isinstance(warning, str) for warning in report["warnings"])


def test_purge_forgets_expired_runs_their_listing_events_and_keys(store: RunStore, run: Runner) -> None:
    key = Idempotency(key="purged-key", fingerprint="f")
    gone, kept = dataclasses.replace(new_run(), caller="alice"), dataclasses.replace(new_run(), caller="alice")
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
    again = new_run()
    assert run(store.create(again, b"", idempotency=key)) == Created(again.run_id)
    run(store.purge())
    assert run(store.get(kept.run_id)) == kept


class Restartable:
    """A store over a durable backend that can be stopped and started: AOF Redis, or a data dir."""

    def __init__(self, kind: str, data_dir: Path, run: Runner) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.run = run
        self.redis = RedisServer(appendonly=True) if kind == "redis" else None
        self.prefix = f"test-{uuid.uuid4().hex}"
        if self.redis is not None:
            self.redis.start()
        self.store = self._open()

    def _open(self) -> RunStore:
        store: RunStore
        if self.redis is not None:
            store = RedisRunStore(self.redis.url, key_prefix=self.prefix)
        else:
            store = EmbeddedRunStore(self.data_dir)
        self.run(store.open())
        return store

    def restart(self) -> RunStore:
        """Close the store, restart Redis (it reloads its AOF) or not, and open a new store."""
        self.run(self.store.close())
        if self.redis is not None:
            self.redis.stop()
            self.redis.start()
        self.store = self._open()
        return self.store

    def cleanup(self) -> None:
        self.run(self.store.close())
        if self.redis is not None:
            self.redis.cleanup()


@pytest.fixture(params=["redis", "embedded"])
def restartable(request: pytest.FixtureRequest, run: Runner, tmp_path: Path) -> Iterator[Restartable]:
    backend = Restartable(request.param, tmp_path / "data", run)
    yield backend
    backend.cleanup()


def test_queued_finished_and_delivering_runs_survive_a_restart(restartable: Restartable, run: Runner) -> None:
    store = restartable.store
    key = Idempotency(key="durable-key", fingerprint="f")
    finished, hooked = new_run(), with_webhook(new_run())
    for made in (finished, hooked):
        run(store.create(made, b""))
    for claimed in run(store.claim("owner-a", 2, 0, LEASE)):
        assert run(store.finish(claimed.run_id, claimed.attempt, ok(BINARY), RETENTION)) is True
    queued = new_run("PUT", headers=(("x-tag", "kept"),))
    run(store.create(queued, BINARY, idempotency=key))
    before = {made.run_id: run(store.get(made.run_id)) for made in (finished, hooked, queued)}
    events = run(store.events(finished.run_id, None, 0))

    store = restartable.restart()

    assert {made.run_id: run(store.get(made.run_id)) for made in (finished, hooked, queued)} == before
    assert run(store.result(finished.run_id)) == ok(BINARY).result
    assert run(store.events(finished.run_id, None, 0)) == events
    assert [due.run.run_id for due in run(store.due_deliveries(10, LEASE))] == [hooked.run_id]
    replay = run(store.create(new_run(), b"", idempotency=key))
    assert (replay.run_id, replay.replayed) == (queued.run_id, True)
    assert run(store.request_body(queued.run_id)) == BINARY
    assert run(store.queued_count()) == 1
    claimed = claim_one(store, run)
    assert (claimed.run_id, claimed.attempt, claimed.request) == (queued.run_id, 1, queued.request)
