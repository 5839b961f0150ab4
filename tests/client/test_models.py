"""The SDK's records agree with the one description of the status resource (asyncgate.status)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import orjson

from asyncgate.client import _protocol as protocol
from asyncgate.client._models import QueuePlace, RunStatus, WebhookStatus
from asyncgate.links import RunLinks
from asyncgate.runs import Delivery, DeliveryState, Progress, Run, RunError, RunRequest, RunState
from asyncgate.status import RUN_STATUS, WEBHOOK_STATUS, Field, Kind, status_document

#: Where the SDK names a field otherwise: RunStatus.state is the document's status (a RunState).
RENAMED = {"status": "state"}


def sdk_name(field: Field[Any]) -> str:
    return RENAMED.get(field.name, field.name)


def every_field_set() -> Run:
    request = RunRequest(
        "POST", "/predict", "", (), "https://hooks.example.com/done?token=s", 30.0, route="predict", max_attempts=3
    )
    return Run(
        "q3Jx0V2kS1uVw2yWb7m1bA",
        RunState.FAILED,
        request,
        created_at=1_795_000_000.125,
        started_at=1_795_000_001.5,
        finished_at=1_795_000_002.75,
        attempt=2,
        upstream_status=500,
        error=RunError("upstream_error", "the upstream answered 500"),
        delivery=Delivery(DeliveryState.PENDING, 1, 503, "the receiver answered 503", 1_795_000_010.0),
        progress=Progress(0.5, "half way", 2, 1_795_000_002.5),
    )


def agrees(kind: Kind, parsed: Any, sent: Any) -> bool:
    """Whether the SDK's value is what the gateway sent for a field of this kind."""
    if kind in (Kind.TEXT, Kind.OPTIONAL_TEXT, Kind.COUNT, Kind.OPTIONAL_INT, Kind.OPTIONAL_DELIVERY_STATE, Kind.URLS):
        return bool(parsed == sent)
    if kind in (Kind.TIME, Kind.OPTIONAL_TIME):
        return isinstance(parsed, datetime) and parsed == datetime.fromisoformat(sent)
    if kind is Kind.STATE:
        return isinstance(parsed, RunState) and parsed.value == sent
    if kind is Kind.ERROR:
        return (parsed.code, parsed.message) == (sent["code"], sent["message"])
    if kind is Kind.EVENTS:
        return isinstance(parsed, tuple) and list(parsed) == sent
    if kind is Kind.PROGRESS:
        return (parsed.value, parsed.message, parsed.attempt, parsed.at) == (
            sent["value"],
            sent["message"],
            sent["attempt"],
            datetime.fromisoformat(sent["at"]),
        )
    if kind is Kind.WEBHOOK:
        return isinstance(parsed, WebhookStatus) and all(
            agrees(field.kind, getattr(parsed, field.name), sent[field.name]) for field in WEBHOOK_STATUS
        )
    raise AssertionError(f"a field kind the SDK is not checked against: {kind}")


#: Fields the status shows only when they apply (priorities, queue deadlines, a queued run's place).
WHEN_SET = {"priority", "queue_deadline", "queue"}


def test_run_status_has_an_attribute_for_every_field_of_the_document() -> None:
    attributes = {field.name for field in dataclasses.fields(RunStatus)} - {"raw"} - WHEN_SET
    assert attributes == {sdk_name(field) for field in RUN_STATUS}


def test_the_sdk_reads_priority_deadline_and_queue_place_when_shown() -> None:
    request = RunRequest("POST", "/predict", "", (), None, 30.0, priority=7, queue_deadline=1_795_000_060.5)
    queued = Run("q3Jx0V2kS1uVw2yWb7m1bA", RunState.QUEUED, request, created_at=1_795_000_000.125)
    sent = orjson.loads(orjson.dumps(status_document(queued, RunLinks("/_asyncgate"))))
    sent["queue"] = {"ahead": 3, "estimated_wait": 1.5}  # added by the status endpoint while queued

    parsed = protocol.run_status(sent)

    assert parsed.priority == 7
    assert parsed.queue_deadline == datetime.fromisoformat(sent["queue_deadline"])
    assert parsed.queue == QueuePlace(ahead=3, estimated_wait=1.5)
    unknown = protocol.run_status({**sent, "queue": {"ahead": 0, "estimated_wait": None}})
    assert unknown.queue == QueuePlace(ahead=0, estimated_wait=None)


def test_a_run_without_them_reads_as_before() -> None:
    request = RunRequest("GET", "/", "", (), None, 30.0)
    plain = Run("q3Jx0V2kS1uVw2yWb7m1bA", RunState.RUNNING, request, created_at=1_795_000_000.125)
    parsed = protocol.run_status(orjson.loads(orjson.dumps(status_document(plain, RunLinks("/_asyncgate")))))
    assert (parsed.priority, parsed.queue_deadline, parsed.queue) == (0, None, None)


def test_webhook_status_has_an_attribute_for_every_field_of_the_delivery_document() -> None:
    assert [field.name for field in dataclasses.fields(WebhookStatus)] == [field.name for field in WEBHOOK_STATUS]


def test_the_sdk_reads_every_field_the_gateway_writes() -> None:
    sent = orjson.loads(orjson.dumps(status_document(every_field_set(), RunLinks("/_asyncgate"))))
    assert list(sent) == [field.name for field in RUN_STATUS]
    assert all(value is not None for value in sent.values())
    parsed = protocol.run_status(sent)
    wrong = [
        field.name for field in RUN_STATUS if not agrees(field.kind, getattr(parsed, sdk_name(field)), sent[field.name])
    ]
    assert wrong == []


def test_a_run_asking_only_for_lifecycle_events_shows_no_completed_delivery() -> None:
    request = RunRequest("POST", "/", "", (), "http://hooks.example/x", 30.0, webhook_events=("start", "output"))
    ended = Run("q3Jx0V2kS1uVw2yWb7m1bA", RunState.SUCCEEDED, request, created_at=1_795_000_000.125)
    sent = orjson.loads(orjson.dumps(status_document(ended, RunLinks("/_asyncgate"))))
    # Not "pending" for good: no delivery is made at its end, so none is waiting.
    assert {key: sent["webhook"][key] for key in ("state", "attempts", "next_attempt_at", "events")} == {
        "state": None,
        "attempts": 0,
        "next_attempt_at": None,
        "events": ["start", "output"],
    }
    webhook = protocol.run_status(sent).webhook
    assert webhook is not None and webhook.state is None and webhook.events == ("start", "output")
