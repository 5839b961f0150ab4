"""The run's status resource, described once: each field's name, kind, meaning and value.

The status JSON (``status_document``), its OpenAPI schema (``openapi.py``) and the SDK's
``RunStatus`` (``tests/client/test_models.py`` holds it to this table) all follow it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Generic, TypeVar

from asyncgate.links import RunLinks
from asyncgate.runs import COMPLETED, Delivery, DeliveryState, Run, mask_url, rfc3339


class Kind(StrEnum):
    """What a field's JSON value is."""

    #: A string, always present.
    TEXT = "text"
    #: A string or null.
    OPTIONAL_TEXT = "optional_text"
    #: A whole number, at least 0.
    COUNT = "count"
    #: A whole number or null.
    OPTIONAL_INT = "optional_int"
    #: An RFC 3339 timestamp, always present.
    TIME = "time"
    #: An RFC 3339 timestamp or null.
    OPTIONAL_TIME = "optional_time"
    #: A RunState value.
    STATE = "state"
    #: A DeliveryState value, or null.
    OPTIONAL_DELIVERY_STATE = "optional_delivery_state"
    #: ``{"code", "message"}`` or null.
    ERROR = "error"
    #: The webhook delivery's own document (WEBHOOK_STATUS) or null.
    WEBHOOK = "webhook"
    #: The run's URLs by name (``links.RunLinks.urls``).
    URLS = "urls"
    #: A list of webhook event names (runs.WEBHOOK_EVENTS).
    EVENTS = "events"
    #: The latest progress report, ``{"value", "message", "attempt", "at"}``, or null.
    PROGRESS = "progress"


Reader = TypeVar("Reader", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Field(Generic[Reader]):
    name: str
    kind: Kind
    #: For people reading the API's description; empty when the name says it all.
    description: str
    read: Reader


RunReader = Callable[[Run, RunLinks], Any]
WebhookReader = Callable[[Run], Any]


def _delivery(run: Run) -> Delivery | None:
    """The delivery of ``completed``; None for a run that asked only for other events (none is made)."""
    if not run.request.hooks(COMPLETED):
        return None
    return run.delivery or Delivery(DeliveryState.PENDING)


def _of_delivery(read: Callable[[Delivery], Any], absent: Any = None) -> WebhookReader:
    """A reader of the ``completed`` delivery's field; ``absent`` when no delivery is made."""

    def reader(run: Run) -> Any:
        delivery = _delivery(run)
        return absent if delivery is None else read(delivery)

    return reader


#: The webhook delivery's document, for a run that has a webhook URL.
WEBHOOK_STATUS: tuple[Field[WebhookReader], ...] = (
    Field(
        "url",
        Kind.TEXT,
        "The webhook URL, credentials and query values masked.",
        lambda run: mask_url(run.request.webhook_url or ""),
    ),
    Field(
        "state",
        Kind.OPTIONAL_DELIVERY_STATE,
        "The delivery of `completed`: null when the run asked only for other events, which are "
        "delivered apart and shown in its event stream.",
        _of_delivery(lambda delivery: delivery.state.value),
    ),
    Field("attempts", Kind.COUNT, "", _of_delivery(lambda delivery: delivery.attempts, absent=0)),
    Field("last_status", Kind.OPTIONAL_INT, "", _of_delivery(lambda delivery: delivery.last_status)),
    Field("last_error", Kind.OPTIONAL_TEXT, "", _of_delivery(lambda delivery: delivery.last_error)),
    Field(
        "next_attempt_at",
        Kind.OPTIONAL_TIME,
        "When the next attempt is due; null once final.",
        _of_delivery(lambda delivery: None if delivery.state.is_final else rfc3339(delivery.next_attempt_at)),
    ),
    Field(
        "events",
        Kind.EVENTS,
        "The webhook events asked for (`webhookEvents`); `completed` alone by default.",
        lambda run: list(run.request.webhook_events),
    ),
)


def _webhook(run: Run, links: RunLinks) -> dict[str, Any] | None:
    if run.request.webhook_url is None:
        return None
    return {field.name: field.read(run) for field in WEBHOOK_STATUS}


#: What a client may see of a run, in this order: never its headers, body or webhook secrets.
RUN_STATUS: tuple[Field[RunReader], ...] = (
    Field("run_id", Kind.TEXT, "", lambda run, links: run.run_id),
    Field("status", Kind.STATE, "", lambda run, links: run.state.value),
    Field("created_at", Kind.TIME, "", lambda run, links: rfc3339(run.created_at)),
    Field(
        "started_at",
        Kind.OPTIONAL_TIME,
        "When the current attempt started; null while queued.",
        lambda run, links: rfc3339(run.started_at),
    ),
    Field(
        "finished_at", Kind.OPTIONAL_TIME, "null until the run is final.", lambda run, links: rfc3339(run.finished_at)
    ),
    Field("method", Kind.TEXT, "", lambda run, links: run.request.method),
    Field("path", Kind.TEXT, "As the client sent it, without the query.", lambda run, links: run.request.path),
    Field("upstream_status", Kind.OPTIONAL_INT, "", lambda run, links: run.upstream_status),
    Field(
        "error",
        Kind.ERROR,
        "Why the run failed or was cancelled.",
        lambda run, links: dataclasses.asdict(run.error) if run.error else None,
    ),
    Field("attempt", Kind.COUNT, "1 on the first sending; 0 before it.", lambda run, links: run.attempt),
    Field("webhook", Kind.WEBHOOK, "null without a webhook.", _webhook),
    Field(
        "route",
        Kind.OPTIONAL_TEXT,
        "The route policy that applied (its name, else its index in `routes:`); null for none.",
        lambda run, links: run.request.route,
    ),
    Field("urls", Kind.URLS, "", lambda run, links: links.urls(run.run_id)),
    Field(
        "progress",
        Kind.PROGRESS,
        "The latest progress the upstream reported; null before the first report.",
        lambda run, links: run.progress.to_public() if run.progress else None,
    ),
)


def status_document(run: Run, links: RunLinks) -> dict[str, Any]:
    """The run's status resource: its public fields and the URLs of what can be done with it.

    ``priority`` and ``queue_deadline`` follow only when set, so that a gateway without priorities
    or deadlines shows what it always did (openapi.py describes them apart).
    """
    document = {field.name: field.read(run, links) for field in RUN_STATUS}
    if run.request.priority:
        document["priority"] = run.request.priority
    if run.request.queue_deadline is not None:
        document["queue_deadline"] = rfc3339(run.request.queue_deadline)
    return document
