"""The OpenAPI document: valid OpenAPI 3.1, true to the live routes, and to a real gateway's answers."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from asyncgate import endpoints, openapi
from asyncgate.config import Config, load
from asyncgate.links import RunLinks
from asyncgate.openapi import openapi_document
from asyncgate.runs import Run, RunRequest, RunState
from asyncgate.status import status_document
from tests.e2e.conftest import Gateway, Receiver, Upstream
from tests.support.redis_server import RedisServer
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.wait import wait_until

CALLER = {"Authorization": "Bearer schemathesis-caller"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: What the fuzzed gateway runs with: access per caller, short waits so long-polls stay cheap.
SETTINGS: dict[str, Any] = {
    "upstream": "http://127.0.0.1:9",
    "access.mode": "header",
    "access.unknown_run_limit": 1_000_000,
    "limits.max_wait": 0.3,
    "runs.poll_interval": 0.2,
    "shutdown.drain_timeout": 0.5,
    "webhooks.schedule": [0],
    "webhooks.allow": ["127.0.0.1"],
}
EXAMPLES_PER_OPERATION = 40
#: Every property test here: a fixed number of examples, derandomised, with nothing kept between runs.
EXAMPLES = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def config_for(**overrides: Any) -> Config:
    return load(None, environ={}, overrides={**SETTINGS, **overrides})


def control_operations(document: dict[str, Any], prefix: str) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith(prefix + "/")
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    }


def routed_operations(prefix: str) -> set[tuple[str, str]]:
    routes = [route for route in [*endpoints.routes(), *openapi.routes()] if isinstance(route, Route)]
    # Starlette answers HEAD wherever GET is routed; the document leaves that implicit.
    return {(method, prefix + route.path) for route in routes for method in route.methods or () if method != "HEAD"}


# The document itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["header", "open"])
@pytest.mark.parametrize("webhook_format", ["body", "envelope"])
def test_document_is_valid_openapi_3_1(mode: str, webhook_format: str) -> None:
    document = openapi_document(config_for(**{"access.mode": mode, "webhooks.format": webhook_format}))
    validate(document)
    assert document["openapi"].startswith("3.1.")
    assert ("security" in document) is (mode == "header")


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    config = config_for(**{"server.prefix": "/gw/api"})
    documented = control_operations(openapi_document(config), "/gw/api")
    assert documented == routed_operations("/gw/api")


def test_submission_is_documented_for_any_path_with_its_parameters() -> None:
    item = openapi_document(config_for())["paths"]["/{path}"]
    names = {param["name"] for param in item["parameters"]}
    assert {"async", "webhookEndpoint", "Prefer", "Asyncgate-Webhook", "Asyncgate-Timeout", "Idempotency-Key"} <= names
    for method in ("get", "post", "put", "patch", "delete"):
        responses = item[method]["responses"]
        assert {"202", "400", "401", "413", "422", "429", "503", "default"} <= set(responses)
        assert responses["202"]["headers"]["Location"] == {"$ref": "#/components/headers/Location"}
        assert responses["202"]["headers"]["Retry-After"] == {"$ref": "#/components/headers/PollAfter"}
        assert responses["202"]["headers"]["Link"] == {"$ref": "#/components/headers/Link"}


def test_status_documents_its_links_retry_after_and_opt_in_redirect() -> None:
    document = openapi_document(config_for(**{"runs.retry_after": "2500ms"}))
    run = document["paths"]["/_asyncgate/runs/{run_id}"]
    status = run["get"]
    assert [param["name"] for param in status["parameters"]] == ["wait", "redirect"]
    assert status["parameters"][1]["schema"] == {"type": "string", "enum": ["result"]}
    assert set(status["responses"]["303"]["headers"]) == {"Location", "Link"}
    for operation, code in ((status, "200"), (run["delete"], "200"), (run["delete"], "202")):
        assert set(operation["responses"][code]["headers"]) == {"Retry-After", "Link"}
    headers = document["components"]["headers"]
    assert headers["Link"]["required"] and headers["PollAfter"]["required"]
    assert "Retry-After: 3" in document["info"]["description"]  # runs.retry_after, rounded up


def test_run_status_schema_names_exactly_what_the_status_resource_holds() -> None:
    schemas = openapi_document(config_for())["components"]["schemas"]
    request = RunRequest("POST", "/predict", "", (), "https://hooks.example.com/x", 10.0)
    public = status_document(Run("r", RunState.QUEUED, request, created_at=0.0), RunLinks("/_asyncgate"))
    # ``queue`` is there only while the run is queued (from the status endpoint); the other two when set.
    optional = {"queue", "priority", "queue_deadline"}
    assert set(schemas["RunStatus"]["properties"]) - optional == set(public) == set(schemas["RunStatus"]["required"])
    assert set(schemas["RunUrls"]["properties"]) == set(public["urls"]) == set(schemas["RunUrls"]["required"])
    assert set(schemas["WebhookStatus"]["properties"]) == set(public["webhook"])
    assert schemas["RunState"]["enum"] == [state.value for state in RunState]


def test_webhook_delivery_is_described_in_the_webhooks_section() -> None:
    signed = config_for(**{"webhooks.signing_secrets": ["whsec_" + "a" * 24]})
    post = openapi_document(signed)["webhooks"]["runFinished"]["post"]
    headers = {param["name"]: param["required"] for param in post["parameters"]}
    assert headers == {
        "webhook-id": True,
        "webhook-timestamp": True,
        "webhook-signature": True,
        "Asyncgate-Run-Id": True,
        "Asyncgate-Status": True,
        "Asyncgate-Upstream-Status": True,
        "Asyncgate-Webhook-Event": False,
        "Asyncgate-Webhook-Sequence": False,
    }
    lifecycle = openapi_document(signed)["webhooks"]["runLifecycle"]["post"]
    assert {param["name"] for param in lifecycle["parameters"]} >= {"webhook-id", "Asyncgate-Webhook-Sequence"}
    envelope = openapi_document(config_for(**{"webhooks.format": "envelope"}))["webhooks"]["runFinished"]["post"]
    assert envelope["requestBody"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/WebhookEnvelope"}}
    }


# A real gateway, fuzzed by schemathesis ---------------------------------------------------------


@dataclasses.dataclass
class Live:
    store: str
    gateway: Gateway
    schema: Any
    #: Seeded runs by what they are; ``final`` ones are safe to stream events from (the stream ends).
    runs: dict[str, str]
    final: list[str]
    #: A webhook URL on the local receiver.
    hook: str


def seed_runs(gateway: Gateway, receiver: Receiver) -> dict[str, str]:
    hook = quote(f"{receiver.url}/hook", safe="")

    def submit(path: str) -> str:
        response = gateway.client.post(path, content=b'{"param": 1}', headers=CALLER)
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def status(run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=CALLER).json()
        return data

    runs = {
        "succeeded": submit("/echo?async=true"),
        "failed": submit("/status/500?async=true"),
        "webhook": submit(f"/echo?async=true&webhookEndpoint={hook}"),
        "cancelled": submit("/sleep?seconds=60&async=true"),
        "running": submit("/sleep?seconds=600&async=true"),
    }
    wait_until(lambda: status(runs["cancelled"])["status"] == "running", message="run to cancel started")
    assert gateway.client.delete(f"{gateway.prefix}/runs/{runs['cancelled']}", headers=CALLER).status_code == 200

    def finished(name: str) -> bool:
        return status(runs[name])["status"] in {"succeeded", "failed"}

    for name in ("succeeded", "failed", "webhook"):
        wait_until(functools.partial(finished, name), message=name)
    wait_until(lambda: (status(runs["webhook"])["webhook"] or {}).get("state") == "delivered", message="delivery")
    return runs


@pytest.fixture(scope="module", params=["embedded", "redis"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    upstream, receiver = Upstream(), Receiver()
    store: dict[str, Any] = {"store.data_dir": str(Path(tmp_path_factory.mktemp("openapi")) / "data")}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        store = {
            "store.redis_url": redis.url,
            "store.key_prefix": f"openapi{uuid.uuid4().hex[:8]}",
            "store.encryption_key": [ENCRYPTION_KEY],
        }
    config = config_for(**{"upstream": upstream.url, **store})
    gateway = Gateway(config)
    try:
        runs = seed_runs(gateway, receiver)
        schema = schemathesis.openapi.from_dict(openapi_document(config))
        final = [runs[name] for name in ("succeeded", "failed", "webhook", "cancelled")]
        yield Live(request.param, gateway, schema, runs, final, f"{receiver.url}/hook")
    finally:
        gateway.stop()
        receiver.server.stop()
        upstream.server.stop()


def fuzzed_operations() -> list[str]:
    """Every control operation schemathesis can drive: all but the submission (any path, any body)."""
    document = openapi_document(config_for())
    prefix = config_for().server.prefix
    return sorted(f"{method} {path}" for method, path in control_operations(document, prefix))


def run_ids_for(live: Live, label: str) -> list[str]:
    """Seeded runs worth sending to ``label``: an event stream of an unfinished run would not end."""
    if label.endswith("/events"):
        return live.final
    return list(live.runs.values())


@pytest.mark.parametrize("label", fuzzed_operations())
def test_live_gateway_answers_as_documented(live: Live, label: str) -> None:
    operation = live.schema.find_operation_by_label(label)
    assert operation is not None, label
    # Negative cases (out-of-range or malformed parameters) must get a documented 4xx, never a 5xx.
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode, headers=CALLER) for mode in modes]
    strategies.append(operation.as_strategy())  # any Authorization, even none: another caller, or 401
    if "{run_id}" in label:
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, headers=CALLER, path_parameters={"run_id": run_id})
            for run_id in run_ids_for(live, label)
        ]

    @given(case=st.one_of(strategies))
    @EXAMPLES
    def conforms(case: Any) -> None:
        response = case.call(base_url=live.gateway.url, headers=CALLER, timeout=15)
        checks = CHECKS
        if label.endswith("/result") and case.path_parameters["run_id"] == live.runs["failed"]:
            # The result is the upstream's own answer, here a 500: relayed as documented, not the gateway's.
            checks = [check for check in CHECKS if check is not not_a_server_error]
        case.validate_response(response, checks=checks, headers=CALLER)

    conforms()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_live_submission_answers_as_documented(live: Live, method: str) -> None:
    """``/{path}`` stands for any upstream path; here it is the fake upstream's /echo."""
    operation = live.schema.find_operation_by_label(f"{method} /{{path}}")
    assert operation is not None
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode, headers=CALLER, path_parameters={"path": "echo"}) for mode in modes]

    @given(case=st.one_of(strategies))
    @EXAMPLES
    def conforms(case: Any) -> None:
        # Webhooks go to the local receiver, never to whatever host was generated; and one way of
        # naming it is kept (both is a 400), so that more cases become runs.
        if "webhookEndpoint" in (case.query or {}):
            case.query["webhookEndpoint"] = live.hook
            case.headers.pop("Asyncgate-Webhook", None)
        elif "Asyncgate-Webhook" in (case.headers or {}):
            case.headers["Asyncgate-Webhook"] = live.hook
        response = case.call(base_url=live.gateway.url, timeout=15)
        case.validate_response(response, checks=CHECKS, headers=CALLER)

    conforms()


def test_openapi_json_is_served(live: Live) -> None:
    gateway = live.gateway
    response = httpx.get(f"{gateway.url}{gateway.prefix}/openapi.json", trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document(gateway.config)
