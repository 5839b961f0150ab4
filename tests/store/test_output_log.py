"""The RunStore contract for output (append_output), over both stores."""

from __future__ import annotations

from asyncgate.runs import RunState
from asyncgate.store.base import RunStore
from tests.store.conftest import Queue, Runner
from tests.store.test_contract import LEASE, RETENTION, claim_one, ok


def output(seq: int, **extra: object) -> dict[str, object]:
    return {"event": "output", "attempt": 1, "seq": seq, "at": 1.0, "data": f"token-{seq}", **extra}


def test_output_is_logged_between_the_state_events_and_resumes_after_an_id(
    store: RunStore, run: Runner, queue: Queue
) -> None:
    queued = queue()
    claimed = claim_one(store, run)
    ids = run(store.append_output(queued.run_id, claimed.attempt, [output(0), output(1)], []))
    assert ids is not None and len(ids) == 2
    more = run(store.append_output(queued.run_id, claimed.attempt, [output(2)], []))
    assert run(store.finish(queued.run_id, claimed.attempt, ok(), RETENTION))

    events = run(store.events(queued.run_id, None, 0))
    assert [e.data["event"] for e in events] == ["queued", "running", "output", "output", "output", "succeeded"]
    assert [e.data for e in events[2:5]] == [output(0), output(1), output(2)]
    assert [e.id for e in events[2:5]] == [*ids, *(more or [])]
    assert [e.data.get("seq") for e in run(store.events(queued.run_id, ids[0], 0))] == [1, 2, None]


def test_append_output_drops_the_events_it_names(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claimed = claim_one(store, run)
    ids = run(store.append_output(queued.run_id, 1, [output(0), output(1, kept=False)], []))
    assert ids is not None
    assert run(store.append_output(queued.run_id, 1, [output(2, kept=False)], [ids[1]])) is not None
    outputs = [e.data["seq"] for e in run(store.events(queued.run_id, None, 0)) if e.data["event"] == "output"]
    assert outputs == [0, 2]
    assert claimed.state is RunState.RUNNING


def test_append_output_is_fenced_by_the_attempt(store: RunStore, run: Runner, queue: Queue) -> None:
    queued = queue()
    claim_one(store, run, lease=LEASE)
    assert run(store.append_output(queued.run_id, 2, [output(0)], [])) is None
    assert run(store.append_output("no-such-run", 1, [output(0)], [])) is None
    assert run(store.finish(queued.run_id, 1, ok(), RETENTION))
    assert run(store.append_output(queued.run_id, 1, [output(0)], [])) is None
    assert [e.data["event"] for e in run(store.events(queued.run_id, None, 0))] == ["queued", "running", "succeeded"]
