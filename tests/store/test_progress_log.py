"""The RunStore contract for progress reports (report_progress, progress_key), over both stores."""

from __future__ import annotations

from asyncgate.progress import progress_event
from asyncgate.runs import Progress
from asyncgate.store.base import RunStore
from tests.store.conftest import Queue, Runner
from tests.store.test_contract import LEASE, RETENTION, claim_one, ok


def report(value: float, message: str | None = None, attempt: int = 1) -> dict[str, object]:
    return progress_event({"progress": value, "message": message}, attempt, 1000.0 + value)


def test_a_report_is_logged_and_becomes_the_runs_latest_progress(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claimed = claim_one(store, run)
    assert run(store.get(queued.run_id)).progress is None  # type: ignore[union-attr]
    first = run(store.report_progress(queued.run_id, claimed.attempt, report(0.25, "a"), 10, b"{}", 10))
    second = run(store.report_progress(queued.run_id, claimed.attempt, report(0.5, "b"), 10, b"{}", 10))
    assert first is not None and second is not None

    current = run(store.get(queued.run_id))
    assert current is not None and current.progress == Progress(0.5, "b", 1, 1000.5)
    events = run(store.events(queued.run_id, None, 0))
    assert [e.data["event"] for e in events] == ["queued", "running", "progress", "progress"]
    assert [e.id for e in events[2:]] == [first, second]
    assert events[3].data == report(0.5, "b")
    # The latest report stays in the status once the run is over.
    assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))
    finished = run(store.get(queued.run_id))
    assert finished is not None and finished.progress == Progress(0.5, "b", 1, 1000.5)


def test_reports_past_the_kept_bound_replace_each_other_in_the_log(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run)
    for step in range(6):
        assert run(store.report_progress(queued.run_id, 1, report(step / 10), 2, b"{}", 10)) is not None
    kept = [e.data["progress"] for e in run(store.events(queued.run_id, None, 0)) if e.data["event"] == "progress"]
    assert kept == [0.0, 0.1, 0.5]
    latest = run(store.get(queued.run_id))
    assert latest is not None and latest.progress is not None and latest.progress.value == 0.5


def test_report_progress_is_fenced_by_the_attempt(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run, lease=LEASE)
    assert run(store.report_progress(queued.run_id, 2, report(0.1), 10, b"{}", 10)) is None
    assert run(store.report_progress("no-such-run", 1, report(0.1), 10, b"{}", 10)) is None
    assert run(store.finish(queued.run_id, 1, ok(), RETENTION))
    assert run(store.report_progress(queued.run_id, 1, report(0.9), 10, b"{}", 10)) is None
    assert [e.data["event"] for e in run(store.events(queued.run_id, None, 0))] == ["queued", "running", "succeeded"]
    finished = run(store.get(queued.run_id))
    assert finished is not None and finished.progress is None


def test_the_progress_key_is_made_once_and_kept(store: RunStore, run: Runner) -> None:
    key = run(store.progress_key())
    assert len(key) == 32
    assert run(store.progress_key()) == key
