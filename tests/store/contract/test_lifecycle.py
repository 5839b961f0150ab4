"""The Lifecycle role over both stores: opened, checked, closed, and opened again with nothing lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncgate.store.base import Idempotency, Lifecycle, RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from tests.store.conftest import BINARY, LEASE, RETENTION, Runner, claim_one, new_run, ok, with_webhook
from tests.store.contract.conftest import noting
from tests.support.redis_server import RedisServer


class Restartable:
    """A store over a durable backend that can be stopped and started: AOF Redis, or a data dir."""

    def __init__(self, kind: str, data_dir: Path, run: Runner, called: set[str]) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.run = run
        self.called = called
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
        noting(store, self.called)
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
def restartable(request: pytest.FixtureRequest, run: Runner, tmp_path: Path, called: set[str]) -> Iterator[Restartable]:
    backend = Restartable(request.param, tmp_path / "data", run, called)
    yield backend
    backend.cleanup()


class TestLifecycle:
    role = Lifecycle

    @pytest.mark.exercises("ping")
    def test_ping_answers(self, store: RunStore, run: Runner) -> None:
        run(store.ping())

    @pytest.mark.exercises("durability")
    def test_durability_says_what_the_store_promises(self, store: RunStore, run: Runner) -> None:
        report = run(store.durability())

        assert set(report) == {"durability", "warnings", "sealing"}
        assert report["sealing"] == "sealed"
        assert isinstance(report["durability"], str) and report["durability"]
        assert isinstance(report["warnings"], list)
        assert all(isinstance(warning, str) for warning in report["warnings"])

    @pytest.mark.exercises("open", "close")
    def test_queued_finished_and_delivering_runs_survive_a_restart(self, restartable: Restartable, run: Runner) -> None:
        store = restartable.store
        key = Idempotency(key="durable-key", fingerprint="f")
        finished, hooked = new_run(), with_webhook(new_run())
        for made in (finished, hooked):
            run(store.create(made, b""))
        for claimed in run(store.claim("owner-a", 2, 0, LEASE)):
            assert run(store.finish(claimed.run_id, claimed.attempt, ok(BINARY), RETENTION)) is not None
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
