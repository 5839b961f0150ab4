"""A run's delivery handed from its finish to the dispatcher, over both stores and a real receiver.

The executor's finish takes the delivery (``finish(..., take=...)``) and hands it to this
gateway's dispatcher, which sends it without taking it from the store again (bench S6).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from asyncgate import webhooks as webhooks_module
from asyncgate.config import Config, load
from asyncgate.metrics import Metrics
from asyncgate.runs import DeliveryState, Run
from asyncgate.store.base import DueDelivery, Finished, RunStore
from asyncgate.webhooks import LEASE_MARGIN, WebhookDispatcher
from tests.store.conftest import RETENTION, Runner, claim_one, new_run, ok
from tests.support.receiver import Deliveries
from tests.support.servers import ServerThread

#: The upstream's answer each run here ends with.
ANSWER = ok(b'{"answer": 42}')


def settings(**overrides: object) -> Config:
    values = {"upstream": "http://127.0.0.1:9", "webhooks.allow": ["127.0.0.0/8"], "webhooks.timeout": 2, **overrides}
    return load(None, environ={}, overrides=values)


class Watched:
    """The store under test, recording the runs whose deliveries it gave out from due_deliveries."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.taken: list[str] = []

    async def due_deliveries(self, limit: int, lease: float) -> list[DueDelivery]:
        due = await self.store.due_deliveries(limit, lease)
        self.taken += [item.run.run_id for item in due]
        return due

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def watching(store: RunStore) -> tuple[Watched, WebhookDispatcher]:
    """A dispatcher over ``store``, and the record of what it took from the store."""
    watched = Watched(store)
    return watched, WebhookDispatcher(settings(), watched, Metrics())  # type: ignore[arg-type]


def running(store: RunStore, run: Runner, hook_server: ServerThread, events: tuple[str, ...] | None = None) -> Run:
    queued = new_run("POST")
    request = dataclasses.replace(queued.request, webhook_url=f"{hook_server.url}/done?token=s3cret")
    if events is not None:
        request = dataclasses.replace(request, webhook_events=events)
    run(store.create(dataclasses.replace(queued, request=request), b""))
    claimed = claim_one(store, run)
    # As the executor holds it: the stored request, its URL masked.
    return claimed


async def delivered(store: RunStore, run_id: str) -> Run:
    async with asyncio.timeout(10):
        while True:
            stored = await store.get(run_id)
            if stored is not None and stored.delivery is not None and stored.delivery.state.is_final:
                return stored
            await asyncio.sleep(0.02)


def finish_and_hand(dispatcher: WebhookDispatcher, store: RunStore, run: Runner, claimed: Run, take: float) -> Run:
    """Finish ``claimed`` taking its delivery for ``take`` s, hand it over, and answer the run
    once its delivery is final."""

    async def scenario() -> Run:
        dispatcher.start()
        try:
            finished = await store.finish(claimed.run_id, claimed.attempt, ANSWER, RETENTION, take=take)
            assert finished is not None and finished.token is not None
            assert finished.lease_until == pytest.approx(finished.at + take)
            dispatcher.hand(claimed, ANSWER, finished)
            return await delivered(store, claimed.run_id)
        finally:
            await dispatcher.stop()

    return run(scenario())


def test_a_delivery_taken_by_finish_is_sent_without_a_take_of_its_own(
    store: RunStore, run: Runner, hook_server: ServerThread, deliveries: Deliveries
) -> None:
    claimed = running(store, run, hook_server)
    watched, dispatcher = watching(store)
    lease = 2 + LEASE_MARGIN  # what take_lease answers for webhooks.timeout 2 (below)

    stored = finish_and_hand(dispatcher, store, run, claimed, lease)

    assert stored.delivery is not None and stored.delivery.state is DeliveryState.DELIVERED
    assert stored.delivery.attempts == 1
    (sent,) = deliveries.for_run(claimed.run_id)
    # To the URL as given (its query too), with the run's result and the run's final state.
    assert sent["path"] == "/done" and sent["body"] == b'{"answer": 42}'
    assert sent["headers"]["asyncgate-status"] == "succeeded"
    assert sent["headers"]["webhook-id"] == f"msg_{claimed.run_id}"
    assert watched.taken == []


def test_runs_with_lifecycle_deliveries_and_runs_past_the_bounds_are_left_to_the_store(
    store: RunStore, run: Runner, hook_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    dispatcher = WebhookDispatcher(settings(), store, metrics)
    claimed = running(store, run, hook_server)
    with_events = running(store, run, hook_server, events=("start", "completed"))
    assert dispatcher.take_lease(claimed) is None  # not started: nothing could send it

    async def scenario() -> list[float | None]:
        dispatcher.start()
        try:
            leases = [dispatcher.take_lease(claimed), dispatcher.take_lease(with_events)]
            monkeypatch.setattr(webhooks_module, "HANDED_RUNS", 1)
            finished = await store.finish(claimed.run_id, claimed.attempt, ok(), RETENTION, take=leases[0])
            assert finished is not None
            dispatcher.hand(claimed, ok(), finished)
            # One waits here (the loop has not run since): the next run's delivery stays in the store.
            leases.append(dispatcher.take_lease(claimed))
            assert metrics.registry.get_sample_value("asyncgate_webhook_deliveries_waiting") == 1
            await delivered(store, claimed.run_id)
            assert metrics.registry.get_sample_value("asyncgate_webhook_deliveries_waiting") == 0
            return leases
        finally:
            await dispatcher.stop()

    assert run(scenario()) == [2 + LEASE_MARGIN, None, None]


def test_a_handed_delivery_that_waited_past_its_margin_is_left_to_its_lease(
    store: RunStore, run: Runner, hook_server: ServerThread, deliveries: Deliveries
) -> None:
    claimed = running(store, run, hook_server)
    watched, dispatcher = watching(store)

    # Taken for less than an attempt's timeout (2 s), as if it had waited here most of its lease.
    stored = finish_and_hand(dispatcher, store, run, claimed, 0.5)

    # Sent once, by the store's path, after the lease lapsed: never twice.
    assert watched.taken == [claimed.run_id]
    assert len(deliveries.for_run(claimed.run_id)) == 1
    assert stored.delivery is not None and stored.delivery.attempts == 1


def test_finished_is_what_both_stores_answer(store: RunStore, run: Runner, hook_server: ServerThread) -> None:
    claimed = running(store, run, hook_server)
    finished = run(store.finish(claimed.run_id, claimed.attempt, ok(), RETENTION))
    assert isinstance(finished, Finished) and finished.token is None
    # A second finish of the same attempt is refused.
    assert run(store.finish(claimed.run_id, claimed.attempt, ok(), RETENTION, take=30)) is None
