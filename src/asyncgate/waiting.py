"""Waiting for a run to finish without polling: follow its event log until a final event."""

from __future__ import annotations

import time

from asyncgate.runs import Run
from asyncgate.store.base import Records


async def wait_until_final(store: Records, run_id: str, seconds: float) -> Run | None:
    """The run once it is final, or as it is after ``seconds`` s; None if there is no such run."""
    deadline = time.monotonic() + seconds
    after: str | None = None
    while True:
        remaining = deadline - time.monotonic()
        events = await store.events(run_id, after, max(0.0, remaining))
        if any(event.is_final for event in events) or remaining <= 0:
            return await store.get(run_id)
        if events:
            after = events[-1].id
        elif (run := await store.get(run_id)) is None or run.state.is_final:
            # No events at all: an unknown run, or one whose log expired before it.
            return run
