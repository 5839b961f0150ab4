"""Behaviour of the embedded store beyond the contract: durability, recovery and its lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncgate.config import Config, StoreConfig
from asyncgate.errors import StoreError
from asyncgate.runs import Outcome, RunResult, RunState
from asyncgate.store.embedded import DATABASE_FILE, EmbeddedRunStore
from asyncgate.store.factory import build_store
from tests.store.conftest import Runner, new_run
from tests.support.wait import wait_until

LEASE = 30.0
DONE = Outcome(RunState.SUCCEEDED, result=RunResult(status=200, headers=(), body=b"done"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "data"


@pytest.fixture
def embedded(data_dir: Path, run: Runner) -> Iterator[EmbeddedRunStore]:
    store = EmbeddedRunStore(data_dir)
    run(store.open())
    yield store
    run(store.close())


def reopen(store: EmbeddedRunStore, run: Runner) -> EmbeddedRunStore:
    run(store.close())
    again = EmbeddedRunStore(store.data_dir)
    run(again.open())
    return again


def row_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        (count,) = db.execute("SELECT count(*) FROM runs").fetchone()
    db.close()
    return int(count)


def test_open_creates_the_directory_and_a_wal_database(embedded: EmbeddedRunStore, data_dir: Path) -> None:
    assert (data_dir / DATABASE_FILE).is_file()
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_runs_survive_close_and_reopen(embedded: EmbeddedRunStore, run: Runner) -> None:
    queued = new_run("POST")
    run(embedded.create(queued, b"\x00\xffbody"))

    again = reopen(embedded, run)
    try:
        assert run(again.get(queued.run_id)) == queued
        assert run(again.request_body(queued.run_id)) == b"\x00\xffbody"
        assert [c.run_id for c in run(again.claim("owner-a", 5, 0, LEASE))] == [queued.run_id]
    finally:
        run(again.close())


def test_a_running_run_is_expired_at_once_after_reopen(embedded: EmbeddedRunStore, run: Runner) -> None:
    queued = new_run()
    run(embedded.create(queued, b""))
    run(embedded.claim("owner-a", 1, 0, LEASE))
    assert run(embedded.expired(10)) == []

    again = reopen(embedded, run)
    try:
        found = run(again.expired(10))
        assert [(r.run_id, r.state, r.attempt) for r in found] == [(queued.run_id, RunState.RUNNING, 1)]
        assert run(again.requeue(queued.run_id, 1)) is True
        assert [c.attempt for c in run(again.claim("owner-b", 1, 0, LEASE))] == [2]
    finally:
        run(again.close())


def test_a_second_store_on_the_same_directory_is_refused(
    embedded: EmbeddedRunStore, data_dir: Path, run: Runner
) -> None:
    second = EmbeddedRunStore(data_dir)

    with pytest.raises(StoreError, match="another asyncgate process is using"):
        run(second.open())


def test_the_directory_is_free_again_after_close(embedded: EmbeddedRunStore, data_dir: Path, run: Runner) -> None:
    run(embedded.close())

    second = EmbeddedRunStore(data_dir)
    run(second.open())
    run(second.close())


def test_expired_runs_are_purged_from_the_file(embedded: EmbeddedRunStore, data_dir: Path, run: Runner) -> None:
    queued = new_run()
    run(embedded.create(queued, b""))
    run(embedded.claim("owner-a", 1, 0, LEASE))
    run(embedded.finish(queued.run_id, 1, DONE, 0.2))
    wait_until(lambda: run(embedded.get(queued.run_id)) is None, timeout=5)

    run(embedded.expired(10))

    assert row_count(data_dir) == 0


def test_a_closed_store_refuses_work(embedded: EmbeddedRunStore, run: Runner) -> None:
    run(embedded.close())

    with pytest.raises(StoreError):
        run(embedded.get("any"))


def test_an_unknown_synchronous_mode_is_rejected(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        EmbeddedRunStore(data_dir, synchronous="fast; DROP TABLE runs")


def test_no_redis_url_selects_the_embedded_store(data_dir: Path) -> None:
    store = build_store(Config(store=StoreConfig(data_dir=str(data_dir), sqlite_synchronous="normal")))

    assert isinstance(store, EmbeddedRunStore)
    assert (store.data_dir, store.synchronous) == (data_dir, "normal")
