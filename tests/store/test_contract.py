"""The RunStore contract: the same tests, run over the Redis store and the embedded store."""

from __future__ import annotations

import asyncio
import time

from asyncgate.runs import ErrorCode, Outcome, Run, RunError, RunResult, RunState
from asyncgate.store.base import Lease, RunStore
from tests.store.conftest import Queue, Runner, new_run
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
