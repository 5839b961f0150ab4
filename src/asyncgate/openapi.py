"""The OpenAPI 3.1 document of the gateway's own API, built from the configuration it serves.

The document describes the asynchronous workflow (submit, 202, follow, fetch the result, or be
called back) and every answer the control API can give; ``tests/test_openapi.py`` holds it to
the live routes and runs schemathesis against a real gateway, so it cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asyncgate import __version__
from asyncgate import headers as h
from asyncgate.config import Config
from asyncgate.endpoints import (
    CANCEL_CONFIRM_SECONDS,
    COUNT_LIMIT,
    CURSOR_PARAM,
    DEFAULT_PAGE,
    LIMIT_PARAM,
    MAX_PAGE,
    STATUS_PARAM,
    WAIT_PARAM,
    route_policies,
)
from asyncgate.eventstream import AFTER_PARAM, RECONNECT_MS
from asyncgate.feeds import READ_WAIT
from asyncgate.intake import (
    ASYNC_PARAM,
    FALSE_WORDS,
    MAX_IDEMPOTENCY_KEY,
    MAX_WEBHOOK_URL,
    QUEUE_RETRY_AFTER,
    SHARE_RETRY_AFTER,
    STORE_RETRY_AFTER,
    TRUE_WORDS,
    WEBHOOK_EVENTS_PARAM,
    WEBHOOK_PARAM,
)
from asyncgate.links import CANCEL, EVENTS, REDIRECT_PARAM, REDIRECT_TO_RESULT, RESULT, STATUS, retry_after
from asyncgate.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from asyncgate.output import CHUNKS, MAX_PIECE, NDJSON, SSE
from asyncgate.policies import AsyncMode
from asyncgate.progress import KEPT_REPORTS, MAX_MESSAGE_BYTES, MAX_REPORT_BYTES
from asyncgate.responses import JSONResponse
from asyncgate.runs import MAX_PRIORITY, WEBHOOK_EVENTS, DeliveryState, ErrorCode, RunState
from asyncgate.status import RUN_STATUS, WEBHOOK_STATUS, Field, Kind

Schema = dict[str, Any]

_EVENT_NAMES = "|".join(WEBHOOK_EVENTS)
_EVENT_LIST = ", ".join(WEBHOOK_EVENTS)

OPENAPI_VERSION = "3.1.0"

_INTRO = """\
asyncgate sits in front of a synchronous HTTP server and gives every endpoint an asynchronous mode.

**Ordinary requests** pass straight through to the upstream, streamed both ways.

**An asynchronous request** is any request (any method, any path outside `{prefix}`) with
`?async=true` or a `Prefer: respond-async` header. The gateway stores it durably and answers at
once with `202 Accepted`, a `run_id`, a `Location` header naming the run's status resource and
`Retry-After` saying when to look; it then makes the upstream call itself (up to `runs.timeout`)
and keeps the upstream's whole response, whatever its status. This is the asynchronous
request-reply pattern: a client needs to know no path but the one it called.

The workflow:

1. **Submit**: `POST /predict?async=true` → `202`, `Location: {prefix}/runs/{{run_id}}`,
   `Retry-After: {retry_after}`, `{{"run_id": "...", "status": "queued"}}`.
2. **Follow**: poll `GET {prefix}/runs/{{run_id}}` (`Retry-After` says when to ask again), long-poll
   it with `?wait=N`, or stream its state changes from `GET {prefix}/runs/{{run_id}}/events`.
   A run is `queued`, then `running`, and ends `succeeded` (the upstream answered 2xx), `failed`,
   `cancelled`, or `expired` (still queued at its queue deadline: never sent). While queued, its
   status shows `queue`: the runs ahead of it and a rough estimate of the wait.
3. **Fetch the result**: `GET {prefix}/runs/{{run_id}}/result` answers exactly what the upstream
   answered (status, headers, body). Or ask the status to send you there: with
   `?{redirect}={to_result}`, a finished run's status answers `303 See Other` to its result.
4. **Or be called back**: with `webhookEndpoint=<url>` (or an `Asyncgate-Webhook` header) the
   upstream's body is POSTed to that URL when the run ends (see `webhooks` below), signed per
   Standard Webhooks, retried until delivered.

The 202 and every status document name the run's URLs, relative to the gateway: in the body's
`urls` (`status`, `result`, `events`, and `cancel`, which is `DELETE`d) and in `Link` headers
(RFC 8288) with those names as `rel`.

Errors are JSON, `{{"error": {{"code": "...", "message": "..."}}}}`; the `code` is stable and
meant to be matched on. Beyond the answers listed on each operation, any path under `{prefix}`
may answer `404` (`not_found`, an unknown path), `405` (`method_not_allowed`, with `Allow`) and,
on a bug, `500` (`internal_error`), all in that form. Before any of this, the HTTP server closes
a connection whose request is malformed or ambiguous (`400`), whose head is too slow to arrive
(`408`, `limits.request_timeout`) or too large (`431`, `limits.max_header_bytes`).
{access}"""

_ACCESS_HEADER = """
**Access.** Runs belong to the caller who submitted them, named by the `{header}` header (its
value is fingerprinted, never stored). Any other caller gets the very `404 run_not_found` an
unknown id gets; a request without the header gets `401 credentials_required`. A bearer token
equal to `access.admin_token` sees and controls every run.
"""

_ACCESS_OPEN = """
**Access.** `access.mode` is `open`: any caller may see and control any run.
"""

_SUBMIT = """\
Any request to the gateway outside `{prefix}` is forwarded to the upstream. It becomes an
asynchronous **run** when it carries `?{async_param}=true` (also `1` or `yes`, any case) or a
`Prefer: respond-async` header (RFC 7240); `?{async_param}=false` keeps it synchronous even then.
`/{{path}}` stands for any path: the whole path (slashes included) and the query string are
replayed to the upstream, less the gateway's own parameters (`{async_param}`, `{webhook_param}`)
and headers (`Prefer: respond-async`/`wait`, `Asyncgate-*`).

The run is stored durably before the `202` is sent: a `202` is never given for a run that could
be lost. The body must not exceed `limits.max_body_bytes` ({max_body} bytes).

`Prefer: respond-async, wait=N` waits up to N seconds (at most `limits.max_wait`, {max_wait:g} s)
and answers the upstream's own response, with an `{run_id_header}` header, if the run ends in
time; otherwise the `202`.

A request that is not asynchronous is the pass-through: the upstream's response, or `502`
(`upstream_unreachable`) / `504` (`upstream_timeout`) when it cannot be reached or is too slow.
"""

_EVENTS = """\
A Server-Sent Events stream of the run's life, from its first event. Each event has an `id`,
an `event` name and a JSON `data` line:

* `queued`, `running`: the run entered that state (`data` is a `StateEvent`); a run whose holder
  was lost goes back to `queued` and then `running` again with the next `attempt`;
* `succeeded`, `failed`, `cancelled`, `expired`: the final state, with `upstream_status` and `error`;
* `webhook`: the webhook delivery changed (`data` is a `WebhookEvent`);
* `output`: while the run works, what a streaming upstream answers (`text/event-stream`,
  `application/x-ndjson`, or a chunked body without a length), as it arrives: one event per
  upstream SSE event or NDJSON line, else per chunk (`data` is an `OutputEvent`). A response that
  does not stream has none; the result is always the whole response;
* `output_dropped`: the run's output passed `runs.output_max_events` or `runs.output_max_bytes`;
  later `output` events are still sent live, marked `"kept": false`, but are not kept for a
  stream resumed or opened later (`data` is an `OutputDroppedEvent`);
* `progress`: the upstream reported its progress, by an `asyncgate.progress` event in its SSE
  answer or a POST to the URL its request announced (`data` is a `ProgressEvent`); the run's
  status shows the latest report.

The stream starts with `retry: {reconnect}`, sends a `: keep-alive` comment every {keep_alive:g} s while idle, and
ends once the final state and the webhook events logged by then are sent. To resume after a
broken connection, send the last `id` received as `Last-Event-ID` (browsers' `EventSource` does
so by itself) or as `?after=`: the stream goes on after that event. Ids are opaque strings.
"""

_WEBHOOK = """\
When a run with a webhook ends (`succeeded`, `failed`, `cancelled` or `expired`), the gateway POSTs to the
webhook URL {body}

The delivery is signed per Standard Webhooks v1 when `webhooks.signing_secrets` is set
(`webhook-signature` holds one `v1,<base64 HMAC-SHA256>` per secret, over
`{{webhook-id}}.{{webhook-timestamp}}.{{body}}`). `webhook-id` is `msg_<run_id>` on every attempt:
deliveries are at-least-once, so receivers de-duplicate on it.

The gateway calls only public addresses: a URL naming a loopback, private, link-local or cloud
metadata address is refused at submission (`400 blocked_destination`), a host name is resolved at
each attempt and every address it answers is checked, unless `webhooks.allow` lists it.

Any 2xx answer delivers it. `410 Gone` stops at once (state `gone`). Anything else, a redirect
(never followed), a timeout (`webhooks.timeout`) or a connection error is retried on the
`webhooks.schedule` ({attempts} attempts in all), honouring `Retry-After` on 429 and 503; past the
last attempt the delivery is `failed`, stays visible in the run's status, and can be sent again
with `POST {prefix}/runs/{{run_id}}/webhook`.
"""


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API served with ``config``."""
    prefix = config.server.prefix
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "asyncgate",
            "version": __version__,
            "summary": "An asynchronous mode for any synchronous HTTP endpoint.",
            "description": _INTRO.format(
                prefix=prefix,
                access=_access_text(config),
                retry_after=retry_after(config.runs.retry_after),
                redirect=REDIRECT_PARAM,
                to_result=REDIRECT_TO_RESULT,
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "submission", "description": "Making any request asynchronous."},
            {"name": "runs", "description": "Following, controlling and reading runs."},
            {"name": "operations", "description": "Health, readiness, metrics and this document."},
        ],
        "paths": {
            "/{path}": _submission_path(config),
            **_run_paths(config),
            **_operations_paths(prefix),
        },
        "webhooks": {
            "runFinished": {"post": _webhook_operation(config)},
            "runLifecycle": {"post": _lifecycle_operation(config)},
        },
        "components": _components(config),
    }
    if _access_required(config):
        document["security"] = [{"caller": []}]
    if config.routes:
        document["x-asyncgate-routes"] = route_policies(config)
    return document


_ROUTES = """

**Route policies** (`routes:` in the configuration, matched in order, first match wins; each is
listed with the settings in force under `x-asyncgate-routes`, and a run's status names its route):

| route | methods | path | async | idempotent | timeout | attempts | body limit |
|---|---|---|---|---|---|---|---|
"""


def _routes_text(config: Config) -> str:
    if not config.routes:
        return ""
    rows = [
        f"| {p['name']} | {', '.join(p['methods'] or ['any'])} | `{p['path']}` | {p['async']} | "
        f"{'by method' if p['idempotent'] is None else str(p['idempotent']).lower()} | {p['timeout']:g} s | "
        f"{p['max_attempts']} | {p['max_body_bytes']} |"
        for p in route_policies(config)
    ]
    return _ROUTES + "\n".join(rows) + "\n"


async def openapi_endpoint(request: Request) -> Response:
    """``GET {prefix}/openapi.json``."""
    config: Config = request.app.state.services.config
    return JSONResponse(openapi_document(config))


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_endpoint, methods=["GET"])]


# Small builders ---------------------------------------------------------------------------------


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: Schema, **examples: Any) -> Schema:
    content: Schema = {"application/json": {"schema": schema}}
    if examples:
        content["application/json"]["examples"] = {name: {"value": value} for name, value in examples.items()}
    return content


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _error_response(description: str, *codes: tuple[str, str], retry_after: bool = False) -> Schema:
    """A JSON error response; ``codes`` are the (code, example message) pairs it may carry."""
    response: Schema = {
        "description": description,
        "content": _json(_ref("schemas", "Error"), **{code: _error(code, message) for code, message in codes}),
    }
    if retry_after:
        response["headers"] = {h.RETRY_AFTER: _ref("headers", "RetryAfter")}
    return response


def _header_param(name: str, description: str, schema: Schema, required: bool = False) -> Schema:
    return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}


def _query_param(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _access_required(config: Config) -> bool:
    return config.access.mode == "header"


def _access_text(config: Config) -> str:
    if _access_required(config):
        return _ACCESS_HEADER.format(header=config.access.header)
    return _ACCESS_OPEN


def _run_errors(config: Config) -> dict[str, Schema]:
    """The answers every operation on one run may give besides its own."""
    errors = {"404": _ref("responses", "RunNotFound"), "429": _ref("responses", "TooManyUnknownRuns")}
    if _access_required(config):
        errors["401"] = _ref("responses", "CredentialsRequired")
    errors["503"] = _ref("responses", "StoreUnavailable")
    return errors


def _operation(operation_id: str, tag: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"operationId": operation_id, "tags": [tag], "summary": summary, **extra, "responses": responses}


# The submission ---------------------------------------------------------------------------------


def _submission_path(config: Config) -> Schema:
    description = _SUBMIT.format(
        prefix=config.server.prefix,
        async_param=ASYNC_PARAM,
        webhook_param=WEBHOOK_PARAM,
        max_body=config.limits.max_body_bytes,
        max_wait=config.limits.max_wait,
        run_id_header=h.RUN_ID,
    ) + _routes_text(config)
    path_item: Schema = {
        "summary": "Any upstream path: submit a request asynchronously",
        "description": description,
        "parameters": [
            {
                "name": "path",
                "in": "path",
                "required": True,
                "description": "Any path outside the gateway's prefix, slashes included, as the upstream knows it.",
                "schema": {"type": "string"},
                "example": "predict",
            },
            *_submission_params(config),
        ],
    }
    for method in ("post", "put", "patch", "get", "delete"):
        path_item[method] = _submission_operation(config, method)
    return path_item


def _submission_params(config: Config) -> list[Schema]:
    return [
        _query_param(
            ASYNC_PARAM,
            "`true` (or `1`, `yes`) makes the request asynchronous; `false` (`0`, `no`) keeps it synchronous "
            "even with `Prefer: respond-async`.",
            {"type": "string", "enum": [word for pair in zip(TRUE_WORDS, FALSE_WORDS, strict=True) for word in pair]},
        ),
        _query_param(
            WEBHOOK_PARAM,
            "An absolute http(s) URL (percent-encoded) to POST the upstream's response body to when the run "
            "ends. Needs an asynchronous request.",
            {"type": "string", "format": "uri", "maxLength": MAX_WEBHOOK_URL},
        ),
        _query_param(
            WEBHOOK_EVENTS_PARAM,
            "The webhook events to deliver, comma-separated: `start` (an attempt sends its request), `output` "
            "(a streaming answer, in batches), `progress` (the upstream's reports), `completed` (the run's end, "
            "today's delivery). Default `completed` alone. Needs a webhook.",
            {"type": "string", "pattern": f"^\\s*({_EVENT_NAMES})\\s*(,\\s*({_EVENT_NAMES})\\s*)*$"},
        ),
        _header_param(
            h.PREFER,
            "`respond-async` makes the request asynchronous (RFC 7240); `wait=N` waits up to N seconds "
            f"(at most {config.limits.max_wait:g}) for the upstream's response before answering 202. "
            "Other preferences are forwarded to the upstream.",
            {"type": "string", "examples": [h.RESPOND_ASYNC, f"{h.RESPOND_ASYNC}, {h.WAIT_PREFERENCE}=10"]},
        ),
        _header_param(
            h.WEBHOOK,
            f"The webhook URL, as a header instead of `{WEBHOOK_PARAM}` (one or the other).",
            {"type": "string", "format": "uri"},
        ),
        _header_param(
            h.WEBHOOK_EVENTS,
            f"The webhook events, as a header instead of (or besides) `{WEBHOOK_EVENTS_PARAM}`.",
            {"type": "string"},
        ),
        _header_param(
            h.TIMEOUT,
            f"The run's own time limit in seconds, shorter than `runs.timeout` ({config.runs.timeout:g}).",
            {"type": "number", "exclusiveMinimum": 0, "maximum": config.runs.timeout},
        ),
        _header_param(
            h.PRIORITY,
            "The run's priority, from 0 (lowest) to the route's `priority_max`: higher priorities are claimed first "
            "(the route's `priority` when absent). Outside the route's bounds, 400 `invalid_priority`.",
            {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        ),
        _header_param(
            h.QUEUE_DEADLINE,
            "Seconds the run may wait in the queue; still queued after it, it ends `expired` and is never sent. "
            "At most the route's `queue_deadline`.",
            {"type": "number", "exclusiveMinimum": 0},
        ),
        _header_param(
            h.IDEMPOTENCY_KEY,
            "Submitting the same request again with the same key (per caller) returns the run it made "
            "instead of a new one, with `Asyncgate-Idempotent-Replay: true`; a different request with that "
            "key is refused (422). A keyed POST may also be re-sent safely after a gateway crash.",
            {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        ),
    ]


def _submission_operation(config: Config, method: str) -> Schema:
    accepted: Schema = {
        "description": "The run is stored and queued; follow it at `Location`.",
        "headers": {
            h.LOCATION: _ref("headers", "Location"),
            h.RETRY_AFTER: _ref("headers", "PollAfter"),
            h.LINK: _ref("headers", "Link"),
            h.PREFERENCE_APPLIED: {
                "description": "`respond-async`, when the request asked with `Prefer`.",
                "schema": {"type": "string", "const": h.RESPOND_ASYNC},
            },
            h.IDEMPOTENT_REPLAY: {
                "description": "`true` when an `Idempotency-Key` named an existing run: this is that run.",
                "schema": {"type": "string", "const": "true"},
            },
        },
        "content": _json(_ref("schemas", "Accepted"), queued={"run_id": "q3Jx0V2kS1uVw2yWb7m1bA", "status": "queued"}),
    }
    responses: dict[str, Schema] = {
        "202": accepted,
        "400": _error_response(
            "The gateway's parameters or headers are malformed; nothing was stored.",
            ("invalid_parameter", f"{ASYNC_PARAM} must be true or false, got 'maybe'"),
            ("invalid_webhook_events", f"unknown webhook event 'logs': {WEBHOOK_EVENTS_PARAM} takes {_EVENT_LIST}"),
            ("invalid_webhook_url", f"{WEBHOOK_PARAM} must be an absolute http or https URL"),
            ("blocked_destination", f"{WEBHOOK_PARAM} names a destination the gateway will not call (loopback)"),
            ("invalid_header", f"{h.WEBHOOK.lower()} is given more than once"),
            ("invalid_timeout", f"{h.TIMEOUT} must be a number of seconds in (0, {config.runs.timeout:g}]"),
            ("invalid_idempotency_key", f"{h.IDEMPOTENCY_KEY} must hold 1 to {MAX_IDEMPOTENCY_KEY} characters"),
            ("invalid_priority", f"{h.PRIORITY} must be a whole number from 0 to 5 on this path"),
            ("invalid_queue_deadline", f"{h.QUEUE_DEADLINE} must be a number of seconds in (0, 30]"),
            ("webhook_requires_async", f"{WEBHOOK_PARAM}, {h.WEBHOOK} and {h.TIMEOUT} need ..."),
            ("async_not_allowed", "requests to /health/** are never asynchronous (route health); ..."),
            ("sync_not_allowed", "requests to /v1/batch/** are always asynchronous (route batch); ..."),
        ),
        "413": _error_response(
            f"The body is larger than `limits.max_body_bytes` ({config.limits.max_body_bytes}); nothing was stored.",
            ("payload_too_large", f"the request body is larger than {config.limits.max_body_bytes} bytes"),
        ),
        "422": _error_response(
            "The `Idempotency-Key` was used for a different request.",
            ("idempotency_key_reused", "this Idempotency-Key was used for a different request"),
        ),
        "429": _error_response(
            f"`limits.max_queued` ({config.limits.max_queued}) runs are waiting already (retry after "
            f"`Retry-After`, {QUEUE_RETRY_AFTER} s), or the caller holds its share of runs queued or running "
            f"(`limits.max_per_caller`, a route's `share`; retry after `Retry-After`, {SHARE_RETRY_AFTER} s). "
            "Nothing was stored.",
            ("queue_full", f"the gateway holds {config.limits.max_queued} queued runs; retry later"),
            ("share_exceeded", "this caller holds 20 runs queued or running on route batch; retry once one has ended"),
            retry_after=True,
        ),
        "503": _error_response(
            f"The store cannot take the run now; retry after `Retry-After` ({STORE_RETRY_AFTER} s). No run exists.",
            ("store_unavailable", "the gateway cannot store the run right now; retry later"),
            retry_after=True,
        ),
        "default": {
            "description": "The upstream's own response: a synchronous request passed through, or the result "
            f"of a run that ended within `Prefer: wait` (then with `{h.RUN_ID}`). `502` "
            "(`upstream_unreachable`) and `504` (`upstream_timeout`) are the gateway's, for synchronous requests.",
            "headers": {h.RUN_ID: {"description": "The run, when it was one.", "schema": {"type": "string"}}},
            "content": {"*/*": {"schema": {}}},
        },
    }
    if _access_required(config):
        responses["401"] = _ref("responses", "CredentialsRequired")
    extra: Schema = {"description": "See the path's description."}
    if method in ("post", "put", "patch"):
        extra["requestBody"] = {
            "required": False,
            "description": "Any body, forwarded to the upstream byte for byte.",
            "content": {"*/*": {"schema": {}}, "application/json": {"example": {"param": "hello world"}}},
        }
    summary = f"Submit a {method.upper()} request asynchronously (any path)"
    return _operation(f"submit{method.capitalize()}", "submission", summary, responses, **extra)


# Runs -------------------------------------------------------------------------------------------


def _run_paths(config: Config) -> dict[str, Schema]:
    runs = f"{config.server.prefix}/runs"
    run_id = {"parameters": [_ref("parameters", "RunId")]}
    return {
        runs: {"get": _list_operation(config)},
        f"{runs}/counts": {"get": _counts_operation(config)},
        f"{runs}/{{run_id}}": {**run_id, "get": _status_operation(config), "delete": _cancel_operation(config)},
        f"{runs}/{{run_id}}/result": {**run_id, "get": _result_operation(config)},
        f"{runs}/{{run_id}}/events": {**run_id, "get": _events_operation(config)},
        f"{runs}/{{run_id}}/webhook": {**run_id, "post": _redeliver_operation(config)},
        f"{runs}/{{run_id}}/attempts/{{attempt}}/progress/{{token}}": {
            **run_id,
            "post": _progress_operation(),
        },
    }


_PROGRESS = f"""\
Where an upstream reports its progress while it works on a run: the executor announces this URL
to each attempt in the `{h.PROGRESS_URL}` request header. The URL is a capability: its last
segment is a signature of the run and the attempt, valid only while that attempt runs; it needs no
caller credentials, and lets its holder do nothing but report. Any replica takes it.

A report is `{{"progress": 0.42, "message": "step 3 of 7"}}` (`progress` from 0 to 1, or `percent`
from 0 to 100; `message` at most {MAX_MESSAGE_BYTES} bytes; at least one of them). Each becomes a
`progress` event of the run, and the latest its status's `progress`. A run's log keeps its first
{KEPT_REPORTS} reports; past them each replaces the previous one.
"""


def _progress_operation() -> Schema:
    params = [
        {"name": "attempt", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}},
        {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    responses = {
        "204": {"description": "Reported."},
        "400": _error_response(
            "Not a progress report; nothing changed.",
            ("invalid_progress", "progress must be between 0 and 1"),
        ),
        "404": _error_response(
            "No such progress URL: the token does not match the run and attempt.",
            ("not_found", "no such progress URL"),
        ),
        "410": _error_response(
            "The attempt is over (finished, cancelled, or replaced by another): stop reporting.",
            ("attempt_over", "this attempt of the run is over: stop reporting its progress"),
        ),
        "413": _error_response(
            f"The report is longer than {MAX_REPORT_BYTES} bytes.",
            ("progress_too_large", f"a progress report is at most {MAX_REPORT_BYTES} bytes"),
        ),
        "503": _ref("responses", "StoreUnavailable"),
    }
    body = {"required": True, "content": _json(_ref("schemas", "ProgressReport"))}
    return _operation(
        "reportProgress",
        "runs",
        "Report an attempt's progress (for the upstream)",
        responses,
        parameters=params,
        requestBody=body,
        description=_PROGRESS,
        security=[],
    )


def _list_operation(config: Config) -> Schema:
    statuses = [state.value for state in RunState]
    params = [
        _query_param(STATUS_PARAM, "Only runs in this state.", {"type": "string", "enum": statuses}),
        _query_param(
            LIMIT_PARAM,
            f"Runs per page, 1 to {MAX_PAGE}.",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        ),
        _query_param(CURSOR_PARAM, "The `next_cursor` of the previous page.", {"type": "string"}),
    ]
    responses = {
        "200": {"description": "One page of runs, newest first.", "content": _json(_ref("schemas", "RunList"))},
        "400": _ref("responses", "InvalidParameter"),
        **{code: response for code, response in _run_errors(config).items() if code in ("401", "503")},
    }
    summary = "List runs, newest first (only the caller's, unless access is open or the caller is the admin)"
    return _operation("listRuns", "runs", summary, responses, parameters=params)


def _counts_operation(config: Config) -> Schema:
    responses = {
        "200": {
            "description": f"How many runs are in each state, over the newest {COUNT_LIMIT} runs the caller may list.",
            "content": _json(_ref("schemas", "RunCounts")),
        },
        **{code: response for code, response in _run_errors(config).items() if code in ("401", "503")},
    }
    summary = "Count runs by state (the runs the listing would show)"
    return _operation("countRuns", "runs", summary, responses)


def _status_response(description: str) -> Schema:
    return {
        "description": description,
        "headers": {
            h.RETRY_AFTER: {
                "description": "While the run is not final: poll again after this many seconds (`runs.retry_after`).",
                "schema": {"type": "integer", "minimum": 1},
            },
            h.LINK: _ref("headers", "Link"),
        },
        "content": _json(_ref("schemas", "RunStatus")),
    }


_REDIRECT = f"""`{REDIRECT_TO_RESULT}`: once the run is final and has an upstream response, answer `303 See Other`
to its result instead of `200`. Opt-in, never the default: a client that follows redirects blindly
would otherwise fetch the result, perhaps a large one, when it asked for a status. A query
parameter rather than a `Prefer` token, because it is part of the URL: it can be given to `curl -L`
or a browser as it is, every cache keys on it without `Vary`, and it sits beside `?wait=`, so
`?wait=30&{REDIRECT_PARAM}={REDIRECT_TO_RESULT}` is one call that waits for the run and leads to its result.
A run that is not final, or ended without an upstream response, gets its status as usual.
"""


def _status_operation(config: Config) -> Schema:
    wait = _query_param(
        WAIT_PARAM,
        "Long-poll: answer as soon as the run is final, or after this many seconds "
        f"(0 to `limits.max_wait`, {config.limits.max_wait:g}).",
        {"type": "number", "minimum": 0, "maximum": config.limits.max_wait},
    )
    redirect = _query_param(REDIRECT_PARAM, _REDIRECT, {"type": "string", "enum": [REDIRECT_TO_RESULT]})
    see_other = {
        "description": f"`?{REDIRECT_PARAM}={REDIRECT_TO_RESULT}` and the run has a result: fetch it at `Location`. "
        "The body is the run's status.",
        "headers": {
            h.LOCATION: {
                "description": f"The run's result, `{config.server.prefix}/runs/{{run_id}}/result`.",
                "schema": {"type": "string"},
                "required": True,
            },
            h.LINK: _ref("headers", "Link"),
        },
        "content": _json(_ref("schemas", "RunStatus")),
    }
    responses = {
        "200": _status_response("The run's status, with its timing fields, webhook delivery and URLs."),
        "303": see_other,
        "400": _ref("responses", "InvalidParameter"),
        **_run_errors(config),
    }
    return _operation("getRun", "runs", "The run's status", responses, parameters=[wait, redirect])


def _cancel_operation(config: Config) -> Schema:
    responses = {
        "200": _status_response("The run is cancelled (a queued run at once, a running one once its call is aborted)."),
        "202": _status_response(
            "Cancellation was asked of the gateway holding the run, which has not confirmed it within "
            f"{CANCEL_CONFIRM_SECONDS:g} s; "
            "the run is still `running`."
        ),
        "409": _error_response(
            "The run has already finished; nothing changed.",
            ("run_finished", "the run has already finished (succeeded)"),
        ),
        **_run_errors(config),
    }
    description = (
        "A queued run never reaches the upstream. A running run's upstream call is aborted (the "
        "connection is closed). The run ends `cancelled` with error code `cancelled`, and its webhook, "
        "if any, is delivered."
    )
    return _operation("cancelRun", "runs", "Cancel the run", responses, description=description)


def _result_operation(config: Config) -> Schema:
    responses = {
        "default": {
            "description": "Exactly the upstream's response to the run: its status (any, including 4xx and 5xx "
            "for a failed run), its end-to-end headers and its body, byte for byte.",
            "content": {"*/*": {"schema": {}}},
        },
        "409": _error_response(
            "There is no upstream response to give (yet).",
            ("run_not_finished", "the run has not finished yet"),
            ("no_upstream_response", "the run has no upstream response: the upstream could not be reached"),
            retry_after=True,
        ),
        **_run_errors(config),
    }
    description = (
        "`409 run_not_finished` (with `Retry-After`) while the run is queued or running; "
        "`409 no_upstream_response` when it ended without one (cancelled while queued, upstream "
        "unreachable, timed out, result too large)."
    )
    return _operation("getRunResult", "runs", "The upstream's response", responses, description=description)


def _events_operation(config: Config) -> Schema:
    params = [
        _header_param(h.LAST_EVENT_ID, "Resume after this event id.", {"type": "string"}),
        _query_param(AFTER_PARAM, "Resume after this event id (when the header cannot be sent).", {"type": "string"}),
    ]
    stream = {
        "description": "The event stream; it ends after the run's final state.",
        "headers": {h.CACHE_CONTROL: {"schema": {"type": "string", "const": "no-cache"}}},
        "content": {
            "text/event-stream": {
                "schema": _ref("schemas", "ServerSentEvent"),
                "example": 'id: 1\nevent: queued\ndata: {"event":"queued","status":"queued","attempt":0,...}\n\n',
            }
        },
    }
    responses = {"200": stream, "400": _ref("responses", "InvalidParameter"), **_run_errors(config)}
    return _operation(
        "streamRunEvents",
        "runs",
        "The run's events",
        responses,
        parameters=params,
        description=_EVENTS.format(reconnect=RECONNECT_MS, keep_alive=READ_WAIT),
    )


def _redeliver_operation(config: Config) -> Schema:
    responses = {
        "202": {
            "description": "The delivery is pending again, with the same `webhook-id`.",
            "content": _json(_ref("schemas", "RunStatus")),
        },
        "400": _error_response(
            "The URL named is malformed or refused; nothing changed.",
            ("invalid_webhook_url", f"{WEBHOOK_PARAM} must be an absolute http or https URL"),
            ("blocked_destination", f"{WEBHOOK_PARAM} names a destination the gateway will not call (loopback)"),
        ),
        "409": _error_response(
            "The run has no webhook, has not finished, or its URL was deleted and none is named.",
            ("no_webhook", "the run has no webhook"),
            ("run_not_finished", "the run has not finished yet"),
            ("webhook_url_deleted", "the run's webhook URL was deleted when its last delivery ended; ..."),
            retry_after=True,
        ),
        **_run_errors(config),
    }
    params = [
        _query_param(
            WEBHOOK_PARAM,
            "Where to deliver. The run's own URL is deleted once its delivery is final, so a redelivery "
            "then names one (the same or another); without one, the run's own URL while it is stored.",
            {"type": "string", "format": "uri", "maxLength": MAX_WEBHOOK_URL},
        ),
        _header_param(
            h.WEBHOOK,
            f"The URL, as a header instead of `{WEBHOOK_PARAM}` (one or the other).",
            {"type": "string", "format": "uri"},
        ),
    ]
    description = "Whatever the delivery's state (delivered, failed, gone), it is made again from the first attempt."
    return _operation(
        "redeliverWebhook",
        "runs",
        "Send the run's webhook again",
        responses,
        parameters=params,
        description=description,
    )


# Operations -------------------------------------------------------------------------------------


def _operations_paths(prefix: str) -> dict[str, Schema]:
    public: list[dict[str, list[str]]] = []  # no credentials needed, whatever access.mode is
    health = _operation(
        "healthz",
        "operations",
        "Liveness: the process answers",
        {"200": {"description": "Alive.", "content": _json(_ref("schemas", "Health"))}},
        security=public,
    )
    readiness = {"description": "", "content": _json(_ref("schemas", "Readiness"))}
    ready = _operation(
        "readyz",
        "operations",
        "Readiness: the store answers and the gateway is not draining",
        {
            "200": {**readiness, "description": "Ready to take traffic."},
            "503": {
                **readiness,
                "description": "Draining after SIGTERM, or the store does not answer or take writes.",
            },
        },
        security=public,
    )
    metrics = _operation(
        "metrics",
        "operations",
        "Prometheus metrics",
        {"200": {"description": "The text exposition format.", "content": {METRICS_CONTENT_TYPE: {"schema": {}}}}},
        security=public,
    )
    document = _operation(
        "openapi",
        "operations",
        "This document",
        {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
        security=public,
    )
    return {
        f"{prefix}/healthz": {"get": health},
        f"{prefix}/readyz": {"get": ready},
        f"{prefix}/metrics": {"get": metrics},
        f"{prefix}/openapi.json": {"get": document},
    }


# The webhook ------------------------------------------------------------------------------------


def _webhook_operation(config: Config) -> Schema:
    signed = bool(config.webhooks.signing_secrets)
    if config.webhooks.format == "envelope":
        body_text = "a JSON envelope (`webhooks.format: envelope`): the run's outcome with the upstream's body inside."
        content: Schema = {"application/json": {"schema": _ref("schemas", "WebhookEnvelope")}}
    else:
        body_text = (
            "the upstream's response body as it is, with the upstream's `Content-Type` "
            "(`webhooks.format: body`; an empty body for a run without one)."
        )
        content = {"*/*": {"schema": {}}}
    signature = "One `v1,<base64>` per signing secret, space-separated."
    params = [
        _header_param(h.WEBHOOK_ID, "`msg_<run_id>`, the same on every attempt.", {"type": "string"}, True),
        _header_param(h.WEBHOOK_TIMESTAMP, "Unix seconds of this attempt.", {"type": "string"}, True),
        _header_param(h.WEBHOOK_SIGNATURE, signature, {"type": "string"}, signed),
        _header_param(h.RUN_ID, "The run.", {"type": "string"}, True),
        _header_param(h.RUN_STATUS, "The run's final state.", _final_states(), True),
        _header_param(
            h.UPSTREAM_STATUS,
            "The upstream's status, empty when there was no upstream response.",
            {"type": "string", "pattern": "^([1-5][0-9][0-9])?$"},
            True,
        ),
        _header_param(
            h.WEBHOOK_EVENT,
            f"`completed`; only when the run's `{WEBHOOK_EVENTS_PARAM}` asked for more than completed.",
            {"const": "completed"},
        ),
        _header_param(
            h.WEBHOOK_SEQUENCE,
            "The delivery's place among the run's deliveries, the highest; only with `Asyncgate-Webhook-Event`.",
            {"type": "string", "pattern": "^[1-9][0-9]*$"},
        ),
    ]
    retried = "Not delivered: retried on the schedule (a 3xx is not followed; Retry-After is honoured on 429 and 503)."
    responses = {
        "2XX": {"description": "Delivered."},
        "410": {"description": "Gone: never retried (state `gone`) unless sent again by hand."},
        "default": {"description": retried},
    }
    return {
        "operationId": "runFinished",
        "summary": "A run ended: the gateway POSTs its outcome to the run's webhook URL",
        "description": _WEBHOOK.format(
            body=body_text, prefix=config.server.prefix, attempts=len(config.webhooks.schedule)
        ),
        "parameters": params,
        "requestBody": {"required": False, "content": content},
        "responses": responses,
    }


_LIFECYCLE = """\
A run whose request named `{param}` with `start`, `output` or `progress` gets a delivery for each
such event while it works, to its webhook URL, before its `completed` one (if it asked for that):

* `start`: an attempt sends its request upstream (once per attempt);
* `output`: a streaming answer's output events, in batches cut after
  `webhooks.output_batch_interval` ({interval:g} s) or at `webhooks.output_batch_bytes`
  ({batch} bytes), whichever comes first;
* `progress`: an upstream's progress report; a report waiting behind another delivery is replaced
  by a later one (the latest wins).

Deliveries of a run are sent one at a time, in order, each signed like the completed one, with a
`webhook-id` of its own (`msg_<run_id>_<sequence>`, the same on every attempt) and
`Asyncgate-Webhook-Sequence`: 1, 2, 3..., `completed` having the highest. Each is retried on
`webhooks.schedule` like the completed delivery; the next waits for it. At most
`webhooks.max_pending_events` ({pending}) wait per run; past them output and progress deliveries
are dropped, and the next delivery's `dropped` says how many.
"""


def _lifecycle_operation(config: Config) -> Schema:
    hooks = config.webhooks
    params = [
        _header_param(h.WEBHOOK_ID, "`msg_<run_id>_<sequence>`, the same on every attempt.", {"type": "string"}, True),
        _header_param(h.WEBHOOK_TIMESTAMP, "Unix seconds of this attempt.", {"type": "string"}, True),
        _header_param(h.WEBHOOK_SIGNATURE, "One `v1,<base64>` per signing secret.", {"type": "string"}),
        _header_param(h.RUN_ID, "The run.", {"type": "string"}, True),
        _header_param(h.WEBHOOK_EVENT, "The event.", {"type": "string", "enum": ["start", "output", "progress"]}, True),
        _header_param(
            h.WEBHOOK_SEQUENCE,
            "The delivery's place among the run's deliveries: order and de-duplicate by it.",
            {"type": "string", "pattern": "^[1-9][0-9]*$"},
            True,
        ),
    ]
    body = {
        "oneOf": [
            _ref("schemas", "WebhookStart"),
            _ref("schemas", "WebhookOutput"),
            _ref("schemas", "WebhookProgress"),
        ]
    }
    responses = {
        "2XX": {"description": "Delivered; the run's next delivery follows."},
        "410": {"description": "Gone: this delivery is not tried again; the next follows."},
        "default": {"description": "Not delivered: retried on the schedule; the run's next deliveries wait."},
    }
    return {
        "operationId": "runLifecycle",
        "summary": "A run started, streamed output or reported progress: the deliveries it asked for",
        "description": _LIFECYCLE.format(
            param=WEBHOOK_EVENTS_PARAM,
            interval=hooks.output_batch_interval,
            batch=hooks.output_batch_bytes,
            pending=hooks.max_pending_events,
        ),
        "parameters": params,
        "requestBody": {"required": True, "content": _json(body)},
        "responses": responses,
    }


def _lifecycle_schemas() -> dict[str, Schema]:
    common: Schema = {
        "run_id": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 1},
        "dropped": {"type": "integer", "description": "Deliveries dropped just before this one (queue full)."},
    }
    at: Schema = {"type": "string", "format": "date-time"}
    return {
        "WebhookStart": {
            "type": "object",
            "required": ["type", "run_id", "attempt", "at"],
            "properties": {"type": {"const": "run.start"}, **common, "at": at},
        },
        "WebhookOutput": {
            "type": "object",
            "required": ["type", "run_id", "attempt", "from_seq", "to_seq", "events"],
            "properties": {
                "type": {"const": "run.output"},
                **common,
                "from_seq": {"type": "integer"},
                "to_seq": {"type": "integer"},
                "events": {
                    "type": "array",
                    "description": "Output events as the event stream has them, less `event`, `attempt` and `run_id`.",
                    "items": {"type": "object"},
                },
            },
        },
        "WebhookProgress": {
            "type": "object",
            "required": ["type", "run_id", "attempt", "progress", "message", "at"],
            "properties": {
                "type": {"const": "run.progress"},
                **common,
                "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "message": {"type": ["string", "null"]},
                "at": at,
            },
        },
    }


def _final_states() -> Schema:
    return {"type": "string", "enum": [state.value for state in RunState if state.is_final]}


# Components -------------------------------------------------------------------------------------


def _components(config: Config) -> Schema:
    components: Schema = {
        "schemas": _schemas(config.server.prefix),
        "parameters": {
            "RunId": {
                "name": "run_id",
                "in": "path",
                "required": True,
                "description": "The `run_id` of the 202 (22 URL-safe base64 characters).",
                "schema": {"type": "string"},
                "example": "q3Jx0V2kS1uVw2yWb7m1bA",
            }
        },
        "headers": {
            "Location": {
                "description": f"The run's status resource, `{config.server.prefix}/runs/{{run_id}}`.",
                "schema": {"type": "string"},
                "required": True,
            },
            "RetryAfter": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
            "PollAfter": {
                "description": "Seconds to wait before asking the status (`runs.retry_after`, "
                f"{retry_after(config.runs.retry_after)}).",
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
            },
            "Link": {
                "description": "The run's URLs (RFC 8288), as in the status document's `urls`: "
                f'`<{config.server.prefix}/runs/{{run_id}}>; rel="{STATUS}"`, then `rel="{RESULT}"`, '
                f'`rel="{EVENTS}"` and `rel="{CANCEL}"` (the run\'s own URL, to `DELETE`).',
                "schema": {"type": "string"},
                "required": True,
            },
        },
        "responses": _shared_responses(config),
    }
    if _access_required(config):
        components["securitySchemes"] = {
            "caller": {
                "type": "apiKey",
                "in": "header",
                "name": config.access.header,
                "description": "Names the caller; runs belong to the caller who submitted them.",
            }
        }
    return components


def _shared_responses(config: Config) -> dict[str, Schema]:
    return {
        "RunNotFound": _error_response(
            "No such run: unknown, expired after `runs.retention`, or another caller's.",
            ("run_not_found", "no run with this id"),
        ),
        "TooManyUnknownRuns": _error_response(
            f"More than `access.unknown_run_limit` ({config.access.unknown_run_limit}) lookups of unknown run "
            "ids in a minute by this caller.",
            ("too_many_unknown_runs", "too many lookups of unknown runs; slow down"),
            retry_after=True,
        ),
        "InvalidParameter": _error_response(
            "A parameter is out of range or malformed (a limit, a cursor, an event id).",
            ("invalid_parameter", f"limit must be a whole number from 1 to {MAX_PAGE}"),
        ),
        "CredentialsRequired": _error_response(
            f"The request has no `{config.access.header}` header, and runs must belong to a caller.",
            ("credentials_required", f"send the {config.access.header} header: runs belong to the caller ..."),
        ),
        "StoreUnavailable": _error_response(
            "The run store does not answer; retry after `Retry-After`.",
            ("store_unavailable", "the run store is unavailable"),
            retry_after=True,
        ),
    }


def _schemas(prefix: str) -> dict[str, Schema]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    return {
        "RunState": {
            "type": "string",
            "enum": [state.value for state in RunState],
            "description": "`queued` → `running` → `succeeded` | `failed` | `cancelled` | `expired` "
            "(the last four are final).",
        },
        "RunError": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
                "message": {"type": "string"},
            },
        },
        "RunStatus": _run_status_schema(prefix),
        "RunUrls": _run_urls_schema(),
        "WebhookStatus": _fields_schema(WEBHOOK_STATUS),
        "RunList": {
            "type": "object",
            "required": ["runs", "next_cursor"],
            "properties": {
                "runs": {"type": "array", "items": _ref("schemas", "RunStatus")},
                "next_cursor": {"type": ["string", "null"], "description": "null on the last page."},
            },
        },
        "RunCounts": {
            "type": "object",
            "required": ["counts", "total", "complete"],
            "properties": {
                "counts": {
                    "type": "object",
                    "required": [state.value for state in RunState],
                    "properties": {state.value: {"type": "integer", "minimum": 0} for state in RunState},
                    "additionalProperties": False,
                },
                "total": {"type": "integer", "minimum": 0, "description": "The runs counted."},
                "complete": {
                    "type": "boolean",
                    "description": f"false past {COUNT_LIMIT} runs: the oldest are not counted.",
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["run_id", "status"],
            "properties": {"run_id": {"type": "string"}, "status": _ref("schemas", "RunState")},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, machine-readable."},
                        "message": {"type": "string", "description": "For people."},
                    },
                }
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "draining", "unavailable"]},
                "store": {"type": "string", "enum": ["redis", "embedded"]},
                "durability": {
                    "type": "string",
                    "description": "What the store promises about accepted runs, e.g. "
                    "`appendfsync everysec: up to one second of accepted runs can be lost if Redis itself crashes`.",
                },
                "warnings": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Store settings that put runs at risk (`maxmemory-policy`, `appendonly`, "
                    "`store.plaintext`).",
                },
                "sealing": {
                    "type": "string",
                    "enum": ["sealed", "plaintext"],
                    "description": "Whether credentials and webhook URLs rest sealed in the store.",
                },
                "reason": {
                    "type": "string",
                    "description": "Why the store is unavailable: unreachable, refusing writes (out of memory, a "
                    "failed save, a full disk), or holding another upstream's runs.",
                },
                "routes": {
                    "type": "array",
                    "items": _ref("schemas", "RoutePolicy"),
                    "description": "The route policies in force, in matching order (present when `routes:` has any).",
                },
            },
        },
        "RoutePolicy": _route_policy_schema(),
        **_event_schemas(timestamp),
    }


def _route_policy_schema() -> Schema:
    return {
        "type": "object",
        "required": ["name", "methods", "path", "async", "idempotent", "timeout", "max_attempts", "max_body_bytes"],
        "properties": {
            "name": {"type": "string", "description": "Its `name`, else its index in `routes:`."},
            "methods": {"type": ["array", "null"], "items": {"type": "string"}, "description": "null: any."},
            "path": {"type": "string", "description": "`*` matches within a path segment, `**` across them."},
            "async": {"type": "string", "enum": [mode.value for mode in AsyncMode]},
            "idempotent": {
                "type": ["boolean", "null"],
                "description": "Whether a run is re-sent after a lost holder; null: as its method says.",
            },
            "timeout": {"type": "number", "description": "A run's time limit in seconds."},
            "max_attempts": {"type": "integer", "minimum": 1},
            "max_body_bytes": {"type": "integer", "minimum": 1},
            "webhook": {
                "type": ["object", "null"],
                "description": "The default webhook (URL masked) and the events it gets.",
                "properties": {"url": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}}},
            },
            "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
            "priority_max": {"type": "integer", "description": "The highest priority a caller may ask for."},
            "queue_deadline": {"type": ["number", "null"], "description": "Seconds a run may wait queued."},
            "share": {"type": ["integer", "null"], "description": "Runs one caller may hold queued or running."},
        },
    }


def _field_schema(kind: Kind) -> Schema:
    """The JSON schema of a status field's kind."""
    schemas: dict[Kind, Schema] = {
        Kind.TEXT: {"type": "string"},
        Kind.OPTIONAL_TEXT: {"type": ["string", "null"]},
        Kind.COUNT: {"type": "integer", "minimum": 0},
        Kind.OPTIONAL_INT: {"type": ["integer", "null"]},
        Kind.TIME: {"type": "string", "format": "date-time"},
        Kind.OPTIONAL_TIME: {"type": ["string", "null"], "format": "date-time"},
        Kind.STATE: _ref("schemas", "RunState"),
        Kind.OPTIONAL_DELIVERY_STATE: {
            "type": ["string", "null"],
            "enum": [*(state.value for state in DeliveryState), None],
        },
        Kind.ERROR: _nullable(_ref("schemas", "RunError")),
        Kind.WEBHOOK: _nullable(_ref("schemas", "WebhookStatus")),
        Kind.URLS: _ref("schemas", "RunUrls"),
        Kind.EVENTS: {"type": "array", "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)}},
        Kind.PROGRESS: _nullable(_ref("schemas", "RunProgress")),
    }
    return schemas[kind]


def _fields_schema(fields: Sequence[Field[Any]]) -> Schema:
    properties = {
        field.name: {**_field_schema(field.kind), **({"description": field.description} if field.description else {})}
        for field in fields
    }
    return {"type": "object", "required": list(properties), "properties": properties}


def _run_status_schema(prefix: str) -> Schema:
    run = f"{prefix}/runs/q3Jx0V2kS1uVw2yWb7m1bA"
    example = {
        "run_id": "q3Jx0V2kS1uVw2yWb7m1bA",
        "status": "succeeded",
        "created_at": "2026-11-23T10:03:00.120Z",
        "started_at": "2026-11-23T10:03:00.125Z",
        "finished_at": "2026-11-23T10:05:41.002Z",
        "method": "POST",
        "path": "/predict",
        "upstream_status": 200,
        "error": None,
        "attempt": 1,
        "webhook": None,
        "route": None,
        "urls": {STATUS: run, RESULT: f"{run}/result", EVENTS: f"{run}/events", CANCEL: run},
        "progress": {"value": 1.0, "message": "done", "attempt": 1, "at": "2026-11-23T10:05:40.870Z"},
    }
    schema = _fields_schema(RUN_STATUS)
    return {**schema, "properties": schema["properties"] | _OPTIONAL_STATUS, "examples": [example]}


#: Status fields shown only when they apply (status.py adds them): a run without them reads as it always did.
_OPTIONAL_STATUS: Schema = {
    "priority": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_PRIORITY,
        "description": "Only when not 0: higher priorities are claimed first.",
    },
    "queue_deadline": {
        "type": "string",
        "format": "date-time",
        "description": "Only when the run has one: still queued then, it ends `expired` and is never sent.",
    },
    "queue": {
        "type": "object",
        "description": "Only while queued: the runs claimed before this one (higher priorities, then older), "
        "and a rough wait in seconds (the runs ahead divided by the recent claim rate; null when unknown).",
        "required": ["ahead", "estimated_wait"],
        "properties": {
            "ahead": {"type": "integer", "minimum": 0},
            "estimated_wait": {"type": ["number", "null"]},
        },
    },
}


def _run_urls_schema() -> Schema:
    relative = "A path on the gateway, under its prefix (resolve it against the URL the client called)."
    described = {
        STATUS: "This status resource (`GET`, `?wait=N` to long-poll).",
        RESULT: "The upstream's response, once the run is final.",
        EVENTS: "The run's Server-Sent Events.",
        CANCEL: "`DELETE` it to cancel the run: the run's own URL.",
    }
    return {
        "type": "object",
        "description": f"The run's URLs; the `Link` header names the same, each with its key as `rel`. {relative}",
        "required": list(described),
        "properties": {name: {"type": "string", "description": text} for name, text in described.items()},
    }


def _output_schemas() -> dict[str, Schema]:
    common: dict[str, Schema] = {
        "attempt": {"type": "integer", "description": "The attempt whose upstream answer this is."},
        "at": {"type": "string", "format": "date-time", "description": "When the gateway read it."},
        "run_id": {"type": "string"},
    }
    return {
        "OutputEvent": {
            "type": "object",
            "description": "The `data` of an `output` event: one piece of a streaming upstream's answer.",
            "required": ["event", "attempt", "seq", "at", "run_id"],
            "properties": {
                "event": {"const": "output"},
                **common,
                "seq": {"type": "integer", "description": "0, 1, 2... within the attempt: a gap shows output missed."},
                "format": {
                    "type": "string",
                    "enum": [SSE, NDJSON, CHUNKS],
                    "description": "How the answer is cut into events; in the attempt's first output event only.",
                },
                "content_type": {"type": "string", "description": "The answer's; first output event only."},
                "data": {"type": "string", "description": "The SSE event's data, the NDJSON line, or a text chunk."},
                "data_base64": {"type": "string", "description": "A chunk of a binary answer, base64-encoded."},
                "sse_event": {"type": "string", "description": "The upstream SSE event's name, unless `message`."},
                "sse_id": {"type": "string", "description": "The upstream SSE stream's last event id, if any."},
                "partial": {
                    "const": True,
                    "description": f"A piece of a line or event longer than {MAX_PIECE // 1024} KiB: "
                    "the next event continues it.",
                },
                "kept": {
                    "const": False,
                    "description": "Past the run's output bound: sent live, not kept (absent when kept).",
                },
            },
        },
        "OutputDroppedEvent": {
            "type": "object",
            "description": "The `data` of an `output_dropped` event: output from `from_seq` on is not kept.",
            "required": ["event", "attempt", "from_seq", "kept_events", "kept_bytes", "at", "run_id"],
            "properties": {
                "event": {"const": "output_dropped"},
                **common,
                "from_seq": {"type": "integer"},
                "kept_events": {"type": "integer", "description": "Output events of the attempt kept."},
                "kept_bytes": {"type": "integer", "description": "Their data's size."},
            },
        },
    }


def _progress_schemas() -> dict[str, Schema]:
    fraction: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "The share done."}
    message: Schema = {"type": ["string", "null"], "maxLength": MAX_MESSAGE_BYTES, "description": "What it does now."}
    return {
        "ProgressReport": {
            "type": "object",
            "description": "What an upstream reports: `progress` or `percent`, and/or `message`.",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "progress": {**fraction, "type": "number"},
                "percent": {"type": "number", "minimum": 0, "maximum": 100, "description": "The share done, in %."},
                "message": {**message, "type": "string"},
            },
        },
        "RunProgress": {
            "type": "object",
            "description": "The latest progress reported for a run.",
            "required": ["value", "message", "attempt", "at"],
            "properties": {
                "value": fraction,
                "message": message,
                "attempt": {"type": "integer", "description": "The attempt that reported it."},
                "at": {"type": "string", "format": "date-time"},
            },
        },
        "ProgressEvent": {
            "type": "object",
            "description": "The `data` of a `progress` event: one report of the upstream.",
            "required": ["event", "attempt", "progress", "message", "at", "run_id"],
            "properties": {
                "event": {"const": "progress"},
                "attempt": {"type": "integer"},
                "progress": fraction,
                "message": message,
                "at": {"type": "string", "format": "date-time"},
                "run_id": {"type": "string"},
            },
        },
    }


def _event_schemas(timestamp: Schema) -> dict[str, Schema]:
    delivery = {
        "type": "object",
        "properties": {
            "state": {"type": "string", "enum": [state.value for state in DeliveryState]},
            "attempts": {"type": "integer"},
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "next_attempt_at": {"type": ["number", "null"], "description": "Unix seconds."},
        },
    }
    names = [*(state.value for state in RunState), "webhook", "output", "output_dropped", "progress"]
    return {
        "ServerSentEvent": {
            "type": "object",
            "description": "One event of the stream (OpenAPI 3.1 describes each event with the schema).",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "description": "Opaque; send it back as Last-Event-ID to resume."},
                "event": {"type": "string", "enum": names},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "oneOf": [
                            _ref("schemas", "StateEvent"),
                            _ref("schemas", "WebhookEvent"),
                            _ref("schemas", "OutputEvent"),
                            _ref("schemas", "OutputDroppedEvent"),
                            _ref("schemas", "ProgressEvent"),
                        ]
                    },
                },
            },
        },
        "StateEvent": {
            "type": "object",
            "description": "The `data` of a `queued`, `running`, `succeeded`, `failed`, `cancelled` or `expired` "
            "event.",
            "required": ["event", "status", "attempt", "at", "run_id"],
            "properties": {
                "event": _ref("schemas", "RunState"),
                "status": _ref("schemas", "RunState"),
                "attempt": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "run_id": {"type": "string"},
                "upstream_status": {"type": ["integer", "null"], "description": "Final events only."},
                "error": {**_nullable(_ref("schemas", "RunError")), "description": "Final events only."},
            },
        },
        "WebhookEvent": {
            "type": "object",
            "description": "The `data` of a `webhook` event.",
            "required": ["event", "webhook", "at", "run_id"],
            "properties": {
                "event": {"const": "webhook"},
                "webhook": delivery,
                "at": {"type": "string", "format": "date-time"},
                "run_id": {"type": "string"},
            },
        },
        **_output_schemas(),
        **_progress_schemas(),
        **_lifecycle_schemas(),
        "WebhookEnvelope": {
            "type": "object",
            "description": "The webhook body with `webhooks.format: envelope`.",
            "required": ["run_id", "status", "upstream_status", "result", "error", "created_at", "finished_at"],
            "properties": {
                "run_id": {"type": "string"},
                "status": _final_states(),
                "upstream_status": {"type": ["integer", "null"]},
                "result": {
                    "description": "The upstream's JSON body parsed; any other body as "
                    "`{base64, content_type}`; null without a body.",
                },
                "error": _nullable(_ref("schemas", "RunError")),
                "created_at": {"type": "string", "format": "date-time"},
                "finished_at": timestamp,
                "duration_seconds": {"type": ["number", "null"]},
            },
        },
    }
