"""Behaviour of the embedded store beyond the contract: durability, recovery and its lock."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncgate.config import Config, StoreConfig
from asyncgate.errors import QueueFull, StoreError, StoreUnavailable
from asyncgate.runs import Outcome, RunResult, RunState, now
from asyncgate.store import embedded as embedded_module
from asyncgate.store.base import CancelResult, Created, Finished, Idempotency
from asyncgate.store.embedded import DATABASE_FILE, EmbeddedRunStore
from asyncgate.store.factory import build_store
from tests.store.conftest import Runner, new_run, stored
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


def test_a_run_held_under_a_heartbeat_is_expired_at_once_after_reopen(embedded: EmbeddedRunStore, run: Runner) -> None:
    queued = new_run()
    run(embedded.create(queued, b""))
    assert not run(embedded.keep_alive("owner-a", 3600, 10.0, 0.0)).lost
    run(embedded.claim("owner-a", 1, 0, 0.01))
    claimed_at = now()
    wait_until(lambda: now() > claimed_at + 0.05, timeout=5)
    assert run(embedded.expired(10)) == []  # its own lease ran out; its holder's heartbeat did not

    again = reopen(embedded, run)
    try:
        # The process that beat is gone: its heartbeat in the file keeps nothing alive.
        assert [r.run_id for r in run(again.expired(10))] == [queued.run_id]
    finally:
        run(again.close())


def test_a_heartbeat_writes_one_row_whatever_the_runs_held(
    embedded: EmbeddedRunStore, data_dir: Path, run: Runner
) -> None:
    for _ in range(300):
        run(embedded.create(new_run(), b""))
    assert not run(embedded.keep_alive("owner-a", LEASE, 10.0, 0.0)).lost
    assert len(run(embedded.claim("owner-a", 300, 0, LEASE))) == 300

    def read(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(data_dir / DATABASE_FILE) as db:
            rows = db.execute(sql).fetchall()
        db.close()
        return rows

    leases = "SELECT run_id, lease_until FROM runs WHERE state = 'running' ORDER BY run_id"
    heartbeat = "SELECT owner, alive_until FROM owners"
    before, ((owner, alive_until),) = read(leases), read(heartbeat)
    wait_until(lambda: now() > alive_until - LEASE, timeout=5)

    assert not run(embedded.keep_alive("owner-a", LEASE, 10.0, 0.0)).lost

    # The runs' rows are not written; the gateway's own row is.
    assert read(leases) == before
    ((owner, later),) = read(heartbeat)
    assert owner == "owner-a" and later > alive_until


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


def _batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of writes in every group commit from now on."""
    sizes: list[int] = []
    original = embedded_module._write_together

    def counting(db: sqlite3.Connection, writes: list[Any]) -> list[Any]:
        sizes.append(len(writes))
        return original(db, writes)

    monkeypatch.setattr(embedded_module, "_write_together", counting)
    return sizes


def test_concurrent_submissions_share_commits_and_each_is_stored(
    embedded: EmbeddedRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _batches(monkeypatch)
    runs = [new_run() for _ in range(200)]

    async def submit_all() -> list[Created]:
        return await asyncio.gather(*(embedded.create(queued, f"body {queued.run_id}".encode()) for queued in runs))

    answers = run(submit_all())
    assert [answer.run_id for answer in answers] == [queued.run_id for queued in runs]
    assert not any(answer.replayed for answer in answers)
    assert sum(sizes) == 200 and len(sizes) < 200  # one fsync served several 202s
    for queued in runs:
        assert run(embedded.request_body(queued.run_id)) == f"body {queued.run_id}".encode()


def test_one_idempotency_key_in_one_batch_creates_one_run(embedded: EmbeddedRunStore, run: Runner) -> None:
    key = Idempotency("k-1", "fingerprint")

    async def submit_all() -> list[Created]:
        return await asyncio.gather(*(embedded.create(new_run(), b"", idempotency=key) for _ in range(10)))

    answers = run(submit_all())
    assert len({answer.run_id for answer in answers}) == 1
    assert [answer.replayed for answer in answers] == [False] + [True] * 9
    assert all(answer.same_request for answer in answers[1:])


def test_the_queue_limit_holds_within_a_batch(embedded: EmbeddedRunStore, run: Runner) -> None:
    async def submit_all() -> list[Created | BaseException]:
        submissions = (embedded.create(new_run(), b"", max_queued=5) for _ in range(20))
        return await asyncio.gather(*submissions, return_exceptions=True)

    answers = run(submit_all())
    assert sum(isinstance(answer, Created) for answer in answers) == 5
    assert sum(isinstance(answer, QueueFull) for answer in answers) == 15
    assert run(embedded.queued_count()) == 5


def test_a_submitter_cancelled_before_its_commit_leaves_no_run(embedded: EmbeddedRunStore, run: Runner) -> None:
    first, second = new_run(), new_run()

    async def cancel_the_second() -> Created:
        busy = threading.Event()
        release = threading.Event()

        def hold_the_writer(db: sqlite3.Connection) -> None:
            busy.set()
            release.wait(10)

        holder = asyncio.ensure_future(embedded._call(hold_the_writer))
        await asyncio.to_thread(busy.wait, 10)  # the single writer thread is now occupied
        accepted = asyncio.create_task(embedded.create(first, b""))
        await asyncio.sleep(0)  # the first is taken into a batch, which waits for the writer
        abandoned = asyncio.create_task(embedded.create(second, b""))
        await asyncio.sleep(0)  # the second waits for the next batch
        abandoned.cancel()
        release.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        return await accepted

    assert run(cancel_the_second()).run_id == first.run_id
    assert run(embedded.get(first.run_id)) is not None
    assert run(embedded.get(second.run_id)) is None


def test_a_failed_commit_fails_every_submission_in_it(
    embedded: EmbeddedRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(db: sqlite3.Connection, writes: list[Any]) -> list[Any]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(embedded_module, "_write_together", disk_full)

    async def submit_all() -> list[Created | BaseException]:
        return await asyncio.gather(*(embedded.create(new_run(), b"") for _ in range(5)), return_exceptions=True)

    answers = run(submit_all())
    assert all(isinstance(answer, StoreUnavailable) for answer in answers)
    assert len({id(answer) for answer in answers}) == 5
    monkeypatch.undo()
    assert run(embedded.create(new_run(), b"")).replayed is False  # the store goes on afterwards


def test_a_write_that_fails_alone_is_undone_alone(
    embedded: EmbeddedRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing, fresh = new_run(), new_run()
    run(embedded.create(existing, b"first"))
    sizes = _batches(monkeypatch)

    async def together() -> tuple[Created | BaseException, Created | BaseException]:
        # The same run_id again breaks the primary key: its own change fails, in the same commit.
        writes = (embedded.create(existing, b"again"), embedded.create(fresh, b"fresh"))
        return await asyncio.gather(*writes, return_exceptions=True)

    duplicate, created = run(together())
    assert sizes == [2]
    assert isinstance(duplicate, StoreError) and "UNIQUE" in str(duplicate)
    assert isinstance(created, Created) and created.run_id == fresh.run_id
    assert run(embedded.request_body(existing.run_id)) == b"first"
    assert run(embedded.request_body(fresh.run_id)) == b"fresh"
    assert [event.data["status"] for event in run(embedded.events(existing.run_id, None, 0))] == ["queued"]


def test_claims_finishes_and_submissions_share_commits(
    embedded: EmbeddedRunStore, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_run()
    run(embedded.create(first, b""))
    (claimed,) = run(embedded.claim("me", 1, 0, LEASE))
    sizes = _batches(monkeypatch)
    later = new_run()

    async def together() -> tuple[Finished | None, Created]:
        return await asyncio.gather(
            embedded.finish(claimed.run_id, claimed.attempt, DONE, 60), embedded.create(later, b"")
        )

    finished, created = run(together())
    assert sizes == [2] and finished and created.run_id == later.run_id
    assert stored(embedded, run, first.run_id).state is RunState.SUCCEEDED
    assert stored(embedded, run, later.run_id).state is RunState.QUEUED


def _counted(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as db:
        return int(db.execute("SELECT count(*) FROM runs WHERE state = 'queued'").fetchone()[0])


def test_the_queue_length_follows_every_change_of_state(
    embedded: EmbeddedRunStore, data_dir: Path, run: Runner
) -> None:
    runs = [new_run() for _ in range(6)]
    for queued in runs:
        run(embedded.create(queued, b""))
    assert run(embedded.queued_count()) == _counted(data_dir) == 6
    first, second = run(embedded.claim("me", 2, 0, LEASE))  # queued -> running
    assert run(embedded.queued_count()) == _counted(data_dir) == 4
    assert run(embedded.requeue(first.run_id, first.attempt))  # running -> queued
    run(embedded.finish(second.run_id, second.attempt, DONE, 60))
    assert run(embedded.cancel(runs[5].run_id, 0)) is CancelResult.CANCELLED  # queued -> cancelled
    assert run(embedded.queued_count()) == _counted(data_dir) == 4
    run(embedded.purge())  # the cancelled run's retention (0) is over: deleted, not counted
    assert run(embedded.queued_count()) == _counted(data_dir) == 4


def test_the_queue_length_is_counted_afresh_on_open(embedded: EmbeddedRunStore, data_dir: Path, run: Runner) -> None:
    for _ in range(3):
        run(embedded.create(new_run(), b""))
    run(embedded.close())
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as db:
        db.execute("UPDATE queue_length SET runs = 999")  # as a file from another version might hold
        db.commit()
    again = EmbeddedRunStore(data_dir)
    run(again.open())
    try:
        assert run(again.queued_count()) == 3
        assert isinstance(run(again.create(new_run(), b"", max_queued=4)), Created)
        with pytest.raises(QueueFull):
            run(again.create(new_run(), b"", max_queued=4))
    finally:
        run(again.close())


def test_a_file_from_before_priorities_opens_and_its_queued_runs_are_claimed(data_dir: Path, run: Runner) -> None:
    # The file an older version made: no priority, deadline or share columns, the queue indexed by seq.
    old_schema = embedded_module._SCHEMA
    for column in ("priority INTEGER NOT NULL DEFAULT 0,", "queue_deadline REAL,", "share TEXT,", "route_share TEXT"):
        old_schema = old_schema.replace(column, "")
    old_schema = re.sub(r",\s*\)", "\n)", old_schema)  # the comma before the columns taken out
    data_dir.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as db:
        db.executescript(old_schema + "CREATE INDEX runs_queue ON runs (seq) WHERE state = 'queued';")
        assert "priority" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    store = EmbeddedRunStore(data_dir)
    run(store.open())
    try:
        queued = new_run()
        run(store.create(queued, b""))
        (claimed,) = run(store.claim("owner", 5, 0, LEASE))
        assert claimed.run_id == queued.run_id and run(store.share_counts()) == {}
    finally:
        run(store.close())
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "runs_ranked" in indexes and "runs_queue" not in indexes
