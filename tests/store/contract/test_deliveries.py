"""The Deliveries role over both stores: webhook deliveries taken, recorded and asked again."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from asyncgate.runs import Delivery, DeliveryState, Run, RunState, mask_url, now
from asyncgate.store.base import Deliveries, RunStore
from tests.store.conftest import LEASE, RETENTION, Queue, Runner, claim_one, finish_one, new_run, ok, with_webhook
from tests.support.wait import wait_until

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


class TestDeliveries:
    role = Deliveries

    @pytest.mark.exercises("due_deliveries")
    def test_a_finished_run_with_a_webhook_has_a_delivery_due_at_once(self, store: RunStore, run: Runner) -> None:
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
        # Read with it, so that the attempt needs no read of its own.
        assert due.prefetched and due.result == run(store.result(finished.run_id)) and due.result is not None

    @pytest.mark.exercises("record_delivery", "due_deliveries")
    def test_record_delivery_is_fenced_and_a_final_one_starts_retention(self, store: RunStore, run: Runner) -> None:
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
        webhooks = [
            e.data["webhook"] for e in run(store.events(finished.run_id, None, 0)) if e.data["event"] == "webhook"
        ]
        assert [w["state"] for w in webhooks] == ["pending", "delivered"]
        # Its retention starts now that the delivery is final: 0.3 s, not the finish's hour.
        wait_until(lambda: run(store.get(finished.run_id)) is None, timeout=5, message="the delivered run to expire")

    @pytest.mark.exercises("due_deliveries", "record_delivery")
    def test_a_lapsed_delivery_lease_makes_the_delivery_due_again(self, store: RunStore, run: Runner) -> None:
        finished = finish_one(store, run, with_webhook(new_run()))
        (first,) = run(store.due_deliveries(10, 0.2))

        (again,) = wait_until(lambda: run(store.due_deliveries(10, LEASE)), timeout=5, message="the delivery due again")

        assert again.run.run_id == finished.run_id
        assert again.token != first.token
        stale = Delivery(DeliveryState.DELIVERED, 1, 200)
        assert run(store.record_delivery(finished.run_id, first.token, stale, RETENTION)) is False

    @pytest.mark.exercises("due_deliveries", "record_delivery")
    def test_finish_can_take_the_delivery_for_its_first_attempt(self, store: RunStore, run: Runner) -> None:
        queued = with_webhook(new_run())
        run(store.create(queued, b""))
        claimed = claim_one(store, run)

        finished = run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION, take=LEASE))

        assert finished is not None and finished.token is not None
        # The URL as given, opened for the attempt; the stored run keeps it masked.
        assert finished.webhook_url == queued.request.webhook_url
        stored = run(store.get(queued.run_id))
        assert stored is not None and stored.finished_at == finished.at
        assert stored.request.webhook_url == mask_url(str(queued.request.webhook_url))
        assert stored.delivery is not None and stored.delivery.state is DeliveryState.DELIVERING
        assert stored.delivery.attempts == 0 and stored.delivery.next_attempt_at == pytest.approx(finished.at + LEASE)
        assert finished.lease_until == pytest.approx(stored.delivery.next_attempt_at)
        # Taken: nobody else gets it while the lease runs, and the token fences its report.
        assert run(store.due_deliveries(10, LEASE)) == []
        delivered = Delivery(DeliveryState.DELIVERED, 1, 200)
        assert run(store.record_delivery(queued.run_id, finished.token + 1, delivered, RETENTION)) is False
        assert run(store.record_delivery(queued.run_id, finished.token, delivered, RETENTION)) is True
        assert (run(store.get(queued.run_id)) or stored).delivery == delivered

    @pytest.mark.exercises("due_deliveries", "record_delivery")
    def test_a_delivery_taken_by_finish_is_due_again_once_its_lease_lapses(self, store: RunStore, run: Runner) -> None:
        # The gateway that finished the run died before its attempt: any gateway sends it then.
        queued = with_webhook(new_run())
        run(store.create(queued, b""))
        claimed = claim_one(store, run)
        finished = run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION, take=0.2))
        assert finished is not None and finished.token is not None

        (again,) = wait_until(lambda: run(store.due_deliveries(10, LEASE)), timeout=5, message="the delivery due again")

        assert again.run.run_id == queued.run_id and again.token != finished.token
        assert again.run.delivery is not None and again.run.delivery.attempts == 0
        assert again.run.request.webhook_url == queued.request.webhook_url
        stale = Delivery(DeliveryState.DELIVERED, 1, 200)
        assert run(store.record_delivery(queued.run_id, finished.token, stale, RETENTION)) is False
        assert run(store.record_delivery(queued.run_id, again.token, stale, RETENTION)) is True

    @pytest.mark.exercises("due_deliveries")
    def test_finish_takes_no_delivery_without_a_webhook_or_while_lifecycle_deliveries_wait(
        self, store: RunStore, run: Runner
    ) -> None:
        plain = new_run()
        run(store.create(plain, b""))
        claimed = claim_one(store, run)
        finished = run(store.finish(plain.run_id, claimed.attempt, ok(), RETENTION, take=LEASE))
        assert finished is not None and finished.token is None and finished.webhook_url is None

        waiting = queued_with(store, run, ("output", "completed"))
        claimed = claim_one(store, run)
        assert run(store.add_hook(waiting.run_id, claimed.attempt, "output", body(1), 100))
        finished = run(store.finish(waiting.run_id, claimed.attempt, ok(), RETENTION, take=LEASE))
        assert finished is not None and finished.token is None
        # Pending, after the lifecycle delivery, as without ``take``.
        assert send_all(store, run) == [("output", 1, 1)]
        assert [due.run.run_id for due in run(store.due_deliveries(10, LEASE))] == [waiting.run_id]

    @pytest.mark.exercises("redeliver", "due_deliveries", "record_delivery")
    def test_redeliver_makes_a_final_delivery_pending_again(self, store: RunStore, run: Runner) -> None:
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

    @pytest.mark.exercises("redeliver")
    def test_redeliver_needs_a_finished_run_with_a_webhook(self, store: RunStore, run: Runner, queue: Queue) -> None:
        plain = finish_one(store, run, new_run())
        hooked = with_webhook(new_run())
        run(store.create(hooked, b""))

        assert run(store.redeliver(plain.run_id)) is False
        assert run(store.redeliver(hooked.run_id)) is False
        assert run(store.redeliver("no-such-run")) is False
        assert (run(store.get(plain.run_id)) or plain).delivery is None
        assert run(store.due_deliveries(10, LEASE)) == []

    @pytest.mark.exercises("due_hooks", "record_hook")
    def test_hooks_are_queued_in_order_sent_one_at_a_time_and_fenced(self, store: RunStore, run: Runner) -> None:
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

    @pytest.mark.exercises("due_hooks", "record_hook", "due_deliveries")
    def test_completed_waits_for_the_lifecycle_deliveries(self, store: RunStore, run: Runner) -> None:
        queued = queued_with(store, run, ("output", "completed"))
        claimed = claim_one(store, run)
        assert run(store.add_hook(queued.run_id, claimed.attempt, "output", body(1), 100))
        assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
        assert run(store.due_deliveries(10, LEASE)) == []
        assert send_all(store, run) == [("output", 1, 1)]
        due = run(store.due_deliveries(10, LEASE))
        assert [d.run.run_id for d in due] == [queued.run_id]

    @pytest.mark.exercises("due_hooks", "record_hook", "due_deliveries")
    def test_a_run_without_completed_gets_no_completed_delivery(self, store: RunStore, run: Runner) -> None:
        queued = queued_with(store, run, ("start",))
        claimed = claim_one(store, run)
        assert run(store.add_hook(queued.run_id, claimed.attempt, "start", body(1), 100))
        assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
        assert send_all(store, run) == [("start", 1, 1)]
        assert run(store.due_deliveries(10, LEASE)) == []

    @pytest.mark.exercises("due_hooks", "record_hook")
    def test_progress_replaces_a_waiting_progress_and_a_full_queue_counts_what_it_drops(
        self, store: RunStore, run: Runner
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

    @pytest.mark.exercises("due_hooks", "record_hook")
    def test_a_progress_report_queues_its_delivery_only_when_asked(self, store: RunStore, run: Runner) -> None:
        event = {"event": "progress", "attempt": 1, "at": 1.0, "progress": 0.5, "message": None}
        for events, expected in ((("progress",), [("progress", 1, 7)]), (("start",), [])):
            queued = queued_with(store, run, events)
            claimed = claim_one(store, run)
            assert run(store.report_progress(queued.run_id, claimed.attempt, event, 10, body(7), 100)) is not None
            assert send_all(store, run) == expected
