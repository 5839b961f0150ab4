"""Nothing a store keeps outlives its bound: purge forgets runs in bounded rounds, never-finished ones too."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncgate.runs import now
from asyncgate.store.base import PURGE_BATCH, PURGE_ROUNDS, UNFINISHED_TTL, Idempotency
from asyncgate.store.embedded import DATABASE_FILE, EmbeddedRunStore
from tests.store.conftest import Runner, new_run


@pytest.fixture
def embedded(tmp_path: Path, run: Runner) -> Iterator[EmbeddedRunStore]:
    store = EmbeddedRunStore(tmp_path / "data", synchronous="off")
    run(store.open())
    yield store
    run(store.close())


def rows(store: EmbeddedRunStore) -> dict[str, int]:
    with sqlite3.connect(store.data_dir / DATABASE_FILE) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("runs", "events")}


def test_a_run_never_finished_is_forgotten_after_the_unfinished_ttl(embedded: EmbeddedRunStore, run: Runner) -> None:
    old = dataclasses.replace(new_run(), created_at=now() - UNFINISHED_TTL - 1)
    young = new_run()
    run(embedded.create(old, b"", idempotency=Idempotency("k", "f")))
    run(embedded.create(young, b""))

    run(embedded.purge())

    assert run(embedded.get(old.run_id)) is None
    assert run(embedded.get(young.run_id)) == young
    assert run(embedded.queued_count()) == 1
    assert rows(embedded) == {"runs": 1, "events": 1}
    again = new_run()
    assert run(embedded.create(again, b"", idempotency=Idempotency("k", "f"))).run_id == again.run_id


def test_one_purge_call_forgets_at_most_its_rounds_of_batches(embedded: EmbeddedRunStore, run: Runner) -> None:
    most = PURGE_BATCH * PURGE_ROUNDS
    created_at = now() - UNFINISHED_TTL - 1

    async def create_all() -> None:
        # Together, so that they share commits.
        await asyncio.gather(
            *(embedded.create(dataclasses.replace(new_run(), created_at=created_at), b"") for _ in range(most + 7))
        )

    run(create_all())

    run(embedded.purge())
    assert rows(embedded) == {"runs": 7, "events": 7}
    run(embedded.purge())
    assert rows(embedded) == {"runs": 0, "events": 0}
