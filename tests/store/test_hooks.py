"""The RunStore contract for lifecycle webhook deliveries (add_hook, due_hooks, record_hook), over both stores."""

from __future__ import annotations

import dataclasses

import orjson

from asyncgate.runs import Run, now
from asyncgate.store.base import RunStore
from tests.store.conftest import Runner, new_run
from tests.store.test_contract import LEASE, RETENTION, claim_one, ok

URL = "https://receiver.example/hook"


def queued_with(store: RunStore, run: Runner, events: tuple[str, ...]) -> Run:
    base = new_run()
    queued = dataclasses.replace(
        base, request=dataclasses.replace(base.request, webhook_url=URL, webhook_events=events)
    )
    run(store.create(queued, b""))
    return queued


def body(n: int) -> bytes:
    return orjson.dumps({"n": n})


def send_all(store: RunStore, run: Runner) -> list[tuple[str, int, int]]:
    """Take and deliver every due lifecycle delivery, one at a time, as (event, seq, n) in order."""
    sent = []
    while due := run(store.due_hooks(10, LEASE)):
        for item in due:
            assert item.run.request.webhook_url == URL
            sent.append((item.hook.event, item.hook.seq, orjson.loads(item.hook.body)["n"]))
            assert run(store.record_hook(item.run.run_id, item.token, item.hook.seq, 1, None))
    return sent


def test_hooks_are_queued_in_order_sent_one_at_a_time_and_fenced(store: RunStore, run: Runner) -> None:
    queued = queued_with(store, run, ("start", "output", "completed"))
    claimed = claim_one(store, run)
    assert run(store.add_hook(queued.run_id, claimed.attempt, "start", body(1), 100))
    assert run(store.add_hook(queued.run_id, claimed.attempt, "output", body(2), 100))
    assert not run(store.add_hook(queued.run_id, claimed.attempt + 1, "output", body(3), 100))

    first = run(store.due_hooks(10, LEASE))
    assert [(d.hook.event, d.hook.seq, d.hook.attempts) for d in first] == [("start", 1, 0)]
    assert run(store.due_hooks(10, LEASE)) == []  # taken: leased, and the next waits for it
    item = first[0]
    # A failed attempt keeps the delivery first, tried again when due, with its attempts counted.
    assert run(store.record_hook(queued.run_id, item.token, 1, 1, now() - 1))
    again = run(store.due_hooks(10, LEASE))
    assert [(d.hook.seq, d.hook.attempts) for d in again] == [(1, 1)]
    assert not run(store.record_hook(queued.run_id, item.token, 1, 2, None))  # a stale token is refused
    assert run(store.record_hook(queued.run_id, again[0].token, 1, 2, None))
    assert send_all(store, run) == [("output", 2, 2)]
    current = run(store.get(queued.run_id))
    assert current is not None and current.hook_seq == 2


def test_completed_waits_for_the_lifecycle_deliveries(store: RunStore, run: Runner) -> None:
    queued = queued_with(store, run, ("output", "completed"))
    claimed = claim_one(store, run)
    assert run(store.add_hook(queued.run_id, claimed.attempt, "output", body(1), 100))
    assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
    assert run(store.due_deliveries(10, LEASE)) == []
    assert send_all(store, run) == [("output", 1, 1)]
    due = run(store.due_deliveries(10, LEASE))
    assert [d.run.run_id for d in due] == [queued.run_id]


def test_a_run_without_completed_gets_no_completed_delivery(store: RunStore, run: Runner) -> None:
    queued = queued_with(store, run, ("start",))
    claimed = claim_one(store, run)
    assert run(store.add_hook(queued.run_id, claimed.attempt, "start", body(1), 100))
    assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
    assert send_all(store, run) == [("start", 1, 1)]
    assert run(store.due_deliveries(10, LEASE)) == []


def test_progress_replaces_a_waiting_progress_and_a_full_queue_counts_what_it_drops(
    store: RunStore, run: Runner
) -> None:
    queued = queued_with(store, run, ("output", "progress"))
    claimed = claim_one(store, run)
    attempt = claimed.attempt
    assert run(store.add_hook(queued.run_id, attempt, "output", body(1), 3))
    assert run(store.add_hook(queued.run_id, attempt, "progress", body(2), 3))
    assert run(store.add_hook(queued.run_id, attempt, "progress", body(3), 3))  # replaces 2: latest wins
    assert run(store.add_hook(queued.run_id, attempt, "output", body(4), 3))
    assert run(store.add_hook(queued.run_id, attempt, "output", body(5), 3))  # full: dropped, counted
    taken = run(store.due_hooks(10, LEASE))
    assert run(store.record_hook(queued.run_id, taken[0].token, taken[0].hook.seq, 1, None))
    assert run(store.add_hook(queued.run_id, attempt, "output", body(6), 3))  # room again: says 1 dropped
    waiting = []
    while due := run(store.due_hooks(10, LEASE)):
        hook = due[0].hook
        waiting.append((hook.event, hook.seq, orjson.loads(hook.body)["n"], hook.dropped))
        assert run(store.record_hook(queued.run_id, due[0].token, hook.seq, 1, None))
    assert waiting == [("progress", 2, 3, 0), ("output", 3, 4, 0), ("output", 4, 6, 1)]


def test_a_progress_report_queues_its_delivery_only_when_asked(store: RunStore, run: Runner) -> None:
    event = {"event": "progress", "attempt": 1, "at": 1.0, "progress": 0.5, "message": None}
    for events, expected in ((("progress",), [("progress", 1, 7)]), (("start",), [])):
        queued = queued_with(store, run, events)
        claimed = claim_one(store, run)
        assert run(store.report_progress(queued.run_id, claimed.attempt, event, 10, body(7), 100)) is not None
        assert send_all(store, run) == expected
