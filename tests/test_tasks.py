"""settle(): a stop waits a bounded time for cancelled tasks, whatever they do with the cancel."""

from __future__ import annotations

import asyncio

import pytest

from asyncgate import tasks


async def _deaf(release: asyncio.Event) -> None:
    # Stands for a task whose cancel was lost inside a library: it goes on waiting.
    try:
        await release.wait()
    except asyncio.CancelledError:
        await release.wait()


def test_settle_returns_after_the_stop_timeout_and_names_a_task_that_ignored_its_cancel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "STOP_TIMEOUT", 0.2)

    async def scenario() -> tuple[bool, bool]:
        release = asyncio.Event()
        deaf = asyncio.create_task(_deaf(release), name="deaf-task")
        obedient = asyncio.create_task(asyncio.Event().wait(), name="obedient-task")
        await asyncio.sleep(0)  # both are waiting before they are cancelled
        deaf.cancel()
        obedient.cancel()
        await tasks.settle([deaf, obedient])
        states = (deaf.done(), obedient.cancelled())
        release.set()
        await deaf
        return states

    with caplog.at_level("WARNING", logger="asyncgate.tasks"):
        deaf_done, obedient_cancelled = asyncio.run(scenario())
    assert (deaf_done, obedient_cancelled) == (False, True)
    assert [record.getMessage() for record in caplog.records] == ["deaf-task did not end within 0.2s of being stopped"]


def test_settle_of_nothing_returns_at_once() -> None:
    asyncio.run(tasks.settle([]))
