"""Fixtures and helpers for the run store tests: an event loop runner, each store on a clean slate, runs."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from starlette.datastructures import Secret

from asyncgate.runs import Outcome, Run, RunRequest, RunResult, RunState, new_run_id, now
from asyncgate.store.base import RunStore, Share
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import Sealer
from asyncgate.store.slots import slot_of
from tests.support.sealing import ENCRYPTION_KEY

T = TypeVar("T")

LEASE = 30.0
RETENTION = 3600.0
BINARY = bytes(range(256)) * 4
#: The slots of the "redis-slots" store: runs spread over three hash tags, as over a three-master Cluster.
SLOTS = 3


class Runner(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T: ...


class Queue(Protocol):
    def __call__(self, method: str = "GET", *, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> Run: ...


@pytest.fixture
def run() -> Iterator[Runner]:
    """Runs a coroutine to completion; every call of one test shares one event loop."""
    with asyncio.Runner() as runner:
        yield runner.run


def open_store(kind: str, request: pytest.FixtureRequest, data_dir: Path) -> RunStore:
    if kind.startswith("redis"):
        server = request.getfixturevalue("redis_server")
        # Sealed, as every default setup is (the embedded store makes its own key).
        sealer = Sealer([Secret(ENCRYPTION_KEY)])
        # "redis-slots": the deployment's runs spread over several hash tags (store.slots).
        slots = SLOTS if kind == "redis-slots" else 1
        return RedisRunStore(server.url, key_prefix=f"test-{uuid.uuid4().hex}", sealer=sealer, slots=slots)
    return EmbeddedRunStore(data_dir)


@pytest.fixture(params=["redis", "embedded"])
def store(request: pytest.FixtureRequest, run: Runner, tmp_path: Path) -> Iterator[RunStore]:
    store = open_store(request.param, request, tmp_path / "data")
    run(store.open())
    yield store
    run(store.close())


def stored(store: RunStore, run: Runner, run_id: str) -> Run:
    """The run as the store holds it; it must be there."""
    found = run(store.get(run_id))
    assert found is not None, run_id
    return found


def new_run(method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> Run:
    request = RunRequest(method=method, path="/jobs/a%2Fb", query="x=1", headers=headers, webhook_url=None, timeout=60)
    return Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=now())


def with_webhook(queued: Run) -> Run:
    return dataclasses.replace(queued, request=dataclasses.replace(queued.request, webhook_url="http://hooks/x?t=1"))


def ok(body: bytes = b'{"done":true}') -> Outcome:
    headers = (("content-type", "application/json"), ("set-cookie", "a=1"), ("set-cookie", "b=2"))
    return Outcome(RunState.SUCCEEDED, result=RunResult(status=201, headers=headers, body=body))


def claim_one(store: RunStore, run: Runner, owner: str = "owner-a", lease: float = LEASE) -> Run:
    claimed = run(store.claim(owner, 1, 0, lease))
    assert len(claimed) == 1
    return claimed[0]


def finish_one(store: RunStore, run: Runner, queued: Run, retention: float = RETENTION) -> Run:
    """Store ``queued``, claim and finish it; returns it as stored."""
    run(store.create(queued, b"payload"))
    claimed = claim_one(store, run)
    assert claimed.run_id == queued.run_id
    assert run(store.finish(queued.run_id, 1, ok(), retention)) is not None
    finished = run(store.get(queued.run_id))
    assert finished is not None
    return finished


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
    # A store spreading runs over slots may give a run counted against shares another id (its caller's slot).
    created = run(store.create(queued, b"body", shares=shares))
    return dataclasses.replace(queued, run_id=created.run_id)


def spread(store: RunStore) -> bool:
    """Whether the store spreads runs over several slots (store.slots), where claims keep the
    order of runs within a slot, and take the slots in turn."""
    return len(getattr(store, "slot_keys", ())) > 1


def fitting(store: RunStore, queued: Run, placement: str) -> Run:
    """The run with an id the store keeps: on a store spreading runs over slots, one in the slot
    of ``placement`` (an idempotency key), as the store would otherwise give it."""
    count = len(getattr(store, "slot_keys", ())) or 1
    run_id = queued.run_id
    while slot_of(run_id, count) != slot_of(placement, count):
        run_id = new_run_id()
    return dataclasses.replace(queued, run_id=run_id)


def claim_ids(store: RunStore, run: Runner, limit: int = 1) -> list[str]:
    return [claimed.run_id for claimed in run(store.claim("owner-a", limit, 0, LEASE))]


@pytest.fixture
def queue(store: RunStore, run: Runner) -> Queue:
    """Stores a new queued run and returns it."""

    def create(method: str = "GET", *, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> Run:
        queued = new_run(method, headers)
        run(store.create(queued, body))
        return queued

    return create
