from __future__ import annotations

import dataclasses
import re

from asyncgate.links import RunLinks
from asyncgate.runs import (
    ErrorCode,
    Run,
    RunRequest,
    RunState,
    can_transition,
    dump_request,
    load_request,
    new_run_id,
    past_deadline,
    recovery_outcome,
    rfc3339,
)
from asyncgate.status import status_document


def request(method: str = "POST", headers: tuple[tuple[str, str], ...] = ()) -> RunRequest:
    return RunRequest(method, "/a%20b", "x=1", headers, None, 60.0)


def test_run_ids_are_over_128_bit_url_safe_unique_and_never_look_like_options() -> None:
    ids = {new_run_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    # 23 base64 characters carry 138 bits, 136 of them random; a leading "-" is refused.
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{22}", run_id) for run_id in ids)
    assert len({run_id[0] for run_id in ids}) == 63


def test_transitions() -> None:
    assert can_transition(RunState.QUEUED, RunState.RUNNING)
    assert can_transition(RunState.RUNNING, RunState.QUEUED)
    assert not can_transition(RunState.SUCCEEDED, RunState.RUNNING)
    assert not can_transition(RunState.QUEUED, RunState.SUCCEEDED)


def test_request_round_trip_keeps_repeated_headers() -> None:
    original = request(headers=(("X-A", "1"), ("X-A", "2")))
    assert load_request(dump_request(original)) == original


def test_a_request_stored_by_an_earlier_gateway_still_loads() -> None:
    stored = b'{"v":1,"method":"POST","path":"/p","query":"","headers":[["A","b"]],"webhook_url":null,"timeout":30.0}'
    assert load_request(stored) == RunRequest("POST", "/p", "", (("A", "b"),), None, 30.0)
    assert b'"v"' not in dump_request(load_request(stored))


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(None) is None


def test_recovery_resends_only_what_is_safe() -> None:
    def run(method: str, attempt: int = 1, headers: tuple[tuple[str, str], ...] = ()) -> Run:
        return Run("id", RunState.RUNNING, request(method, headers), 0.0, attempt=attempt)

    assert recovery_outcome(run("GET"), 3) is None
    assert recovery_outcome(run("PUT"), 3) is None
    assert recovery_outcome(run("POST", headers=(("Idempotency-Key", "k"),)), 3) is None
    lost = recovery_outcome(run("POST"), 3)
    assert lost is not None and lost.error is not None and lost.error.code == ErrorCode.LOST
    exhausted = recovery_outcome(run("GET", attempt=3), 3)
    assert exhausted is not None and exhausted.error is not None and exhausted.error.code == ErrorCode.MAX_ATTEMPTS


def test_expired_is_final_and_reached_only_before_anything_was_sent() -> None:
    assert RunState.EXPIRED.is_final
    assert can_transition(RunState.QUEUED, RunState.EXPIRED)
    assert can_transition(RunState.RUNNING, RunState.EXPIRED)
    assert not can_transition(RunState.EXPIRED, RunState.QUEUED)


def test_a_claim_past_the_deadline_expires_only_a_first_attempt() -> None:
    timed = dataclasses.replace(request(), queue_deadline=100.0)
    first = Run("r", RunState.RUNNING, timed, created_at=90.0, attempt=1)
    assert past_deadline(first, 100.5)
    assert not past_deadline(first, 99.0)
    assert not past_deadline(dataclasses.replace(first, attempt=2), 100.5)  # it started in time once
    assert not past_deadline(Run("r", RunState.RUNNING, request(), created_at=90.0, attempt=1), 1e12)


def test_priority_and_deadline_are_stored_only_when_set() -> None:
    plain = request()
    assert b"priority" not in dump_request(plain) and b"queue_deadline" not in dump_request(plain)
    ranked = dataclasses.replace(plain, priority=7, queue_deadline=123.5)
    assert load_request(dump_request(ranked)) == ranked
    links = RunLinks("/_asyncgate")
    public = status_document(Run("r", RunState.QUEUED, ranked, created_at=1.0), links)
    assert (public["priority"], public["queue_deadline"]) == (7, "1970-01-01T00:02:03.500Z")
    assert "priority" not in status_document(Run("r", RunState.QUEUED, plain, created_at=1.0), links)
