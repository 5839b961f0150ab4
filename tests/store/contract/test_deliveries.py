"""The Deliveries role over both stores: webhook deliveries taken, recorded and asked again."""

from __future__ import annotations

import dataclasses
import time

import pytest

from asyncgate.runs import Delivery, DeliveryState, RunState, mask_url
from asyncgate.store.base import Deliveries, RunStore
from tests.store.conftest import LEASE, RETENTION, Queue, Runner, finish_one, new_run, with_webhook
from tests.support.wait import wait_until


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
