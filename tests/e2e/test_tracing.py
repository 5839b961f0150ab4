"""Trace context across the async boundary, and the gateway's spans, over real sockets.

Without tracing, a submission's traceparent, tracestate and baggage reach the upstream and the
webhook as sent. With tracing, the gateway's spans (intake, queue wait, each upstream attempt,
each delivery attempt) join the submitter's trace, and each call names the span that covers it:
recorded by the SDK's in-memory exporter in-process, and sent over OTLP by real processes.
"""

from __future__ import annotations

import gzip
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asyncgate.otel import OpenTelemetryTracing
from tests.e2e.conftest import GatewayFactory, Receiver, Upstream
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer, free_port
from tests.support.sealing import ENCRYPTION_KEY_ENV
from tests.support.servers import ServerThread
from tests.support.wait import wait_until


class ClientTrace:
    """A client's span, as a W3C traceparent plus vendor state and baggage."""

    def __init__(self) -> None:
        self.trace_id = secrets.token_hex(16)
        self.span_id = secrets.token_hex(8)
        self.headers = {
            "traceparent": f"00-{self.trace_id}-{self.span_id}-01",
            "tracestate": "vendor=abc",
            "baggage": "tenant=acme,user=alice",
        }

    def names(self, span_id: str) -> str:
        return f"00-{self.trace_id}-{span_id}-01"


def upstream_headers(gateway: Any, run_id: str) -> dict[str, str]:
    """The headers the upstream got on the run's last attempt (the echo upstream's answer)."""
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").json()
    return {name: value for name, value in result["headers"]}


def test_trace_context_reaches_the_upstream_and_the_webhook_as_sent(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    gateway = make_gateway()
    client = ClientTrace()
    submitted = gateway.client.post(
        "/echo",
        params={"async": "true", "webhookEndpoint": f"{receiver.url}/hook"},
        content=b"x",
        headers=client.headers,
    )
    assert submitted.status_code == 202
    run_id = submitted.json()["run_id"]
    assert gateway.wait_final(run_id)["status"] == "succeeded"
    seen = upstream_headers(gateway, run_id)
    assert {name: seen[name] for name in client.headers} == client.headers
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id), message="delivered")[0]
    assert {name: delivery["headers"][name] for name in client.headers} == client.headers


def test_no_trace_context_is_made_up_when_tracing_is_off(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway()
    run_id = gateway.client.post("/echo", params={"async": "true", "webhookEndpoint": f"{receiver.url}/h"}).json()[
        "run_id"
    ]
    gateway.wait_final(run_id)
    assert not {"traceparent", "tracestate", "baggage"} & set(upstream_headers(gateway, run_id))
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id), message="delivered")[0]
    assert not {"traceparent", "tracestate", "baggage"} & set(delivery["headers"])


class Recorder:
    """One replica's tracer provider, its spans kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = OpenTelemetryTracing(provider)

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        spans = wait_until(lambda: self.spans(name), message=f"span {name}")
        assert len(spans) == 1, spans
        return spans[0]


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def parent_of(span: ReadableSpan) -> str:
    assert span.parent is not None, span.name
    return hex_id(span.parent.span_id, 16)


def span_id(span: ReadableSpan) -> str:
    return hex_id(span.context.span_id, 16)


def test_spans_join_the_submitters_trace_and_name_each_call(
    make_gateway: GatewayFactory, receiver: Receiver, upstream: Upstream
) -> None:
    recorder = Recorder()
    gateway = make_gateway(tracing=recorder.tracing)
    client = ClientTrace()
    hook = f"{receiver.url}/hook?token=s3cret"
    submitted = gateway.client.post("/echo", params={"async": "true", "webhookEndpoint": hook}, headers=client.headers)
    run_id = submitted.json()["run_id"]
    status = gateway.wait_final(run_id)
    delivery = wait_until(lambda: receiver.deliveries.for_run(run_id), message="delivered")[0]

    intake = recorder.one("asyncgate intake")
    queued = recorder.one("asyncgate queue wait")
    attempt = recorder.one("asyncgate upstream attempt")
    delivered = recorder.one("asyncgate webhook delivery")
    spans = [intake, queued, attempt, delivered]
    assert {hex_id(span.context.trace_id, 32) for span in spans} == {client.trace_id}
    assert intake.kind is SpanKind.SERVER and intake.parent is not None and intake.parent.is_remote
    assert parent_of(intake) == client.span_id
    assert [parent_of(span) for span in spans[1:]] == [span_id(intake)] * 3
    assert dict(intake.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/echo",
        "http.response.status_code": 202,
    }
    assert dict(attempt.attributes or {}) == {
        "asyncgate.run_id": run_id,
        "http.request.method": "POST",
        "url.path": "/echo",
        "asyncgate.attempt": 1,
        "http.response.status_code": 200,
    }
    assert attempt.kind is SpanKind.CLIENT and attempt.status.status_code is StatusCode.UNSET
    assert dict(delivered.attributes or {}) == {
        "asyncgate.run_id": run_id,
        "asyncgate.webhook.attempt": 1,
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "http.response.status_code": 200,
    }
    # The queue wait spans the time from acceptance to the claim.
    assert queued.start_time is not None and queued.end_time is not None
    assert queued.start_time <= queued.end_time <= (attempt.start_time or 0)
    assert status["status"] == "succeeded"
    # Each call names its own span, so the upstream's and the receiver's spans nest under them;
    # the vendor state and the baggage travel on unchanged.
    seen = upstream_headers(gateway, run_id)
    assert (seen["traceparent"], seen["tracestate"], seen["baggage"]) == (
        client.names(span_id(attempt)),
        "vendor=abc",
        "tenant=acme,user=alice",
    )
    headers = delivery["headers"]
    assert (headers["traceparent"], headers["tracestate"], headers["baggage"]) == (
        client.names(span_id(delivered)),
        "vendor=abc",
        "tenant=acme,user=alice",
    )
    assert not any("s3cret" in str(span.attributes) for span in spans)


def test_a_failing_attempt_and_a_failing_delivery_are_error_spans(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    recorder = Recorder()
    gateway = make_gateway({"webhooks.schedule": [0, 0]}, tracing=recorder.tracing)
    receiver.deliveries.script = [503]
    submitted = gateway.client.get("/status/500", params={"async": "true", "webhookEndpoint": f"{receiver.url}/h"})
    run_id = submitted.json()["run_id"]
    assert gateway.wait_final(run_id)["error"]["code"] == "upstream_error"
    attempt = recorder.one("asyncgate upstream attempt")
    assert attempt.status.status_code is StatusCode.ERROR
    assert (attempt.attributes or {})["error.type"] == "upstream_error"
    deliveries = wait_until(lambda: len(s := recorder.spans("asyncgate webhook delivery")) == 2 and s)
    by_attempt = {(span.attributes or {})["asyncgate.webhook.attempt"]: span for span in deliveries}
    assert (by_attempt[1].attributes or {})["error.type"] == "503"
    assert by_attempt[2].status.status_code is StatusCode.UNSET
    # A submission without a trace context starts one: every later span is in it.
    intake = recorder.one("asyncgate intake")
    assert intake.parent is None
    assert {span.context.trace_id for span in [attempt, *deliveries]} == {intake.context.trace_id}


def test_a_lost_holders_resend_is_a_second_attempt_span_in_the_same_trace(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """Two replicas, each with its own provider, as separate processes would have."""
    first, second = Recorder(), Recorder()
    holder = make_gateway({"shutdown.drain_timeout": 0.5}, tracing=first.tracing)
    client = ClientTrace()
    run_id = holder.client.get("/echo?async=true&delay=3", headers=client.headers).json()["run_id"]
    wait_until(lambda: holder.run(run_id)["status"] == "running", message="running")
    holder.stop()
    replica = make_gateway(tracing=second.tracing)
    assert replica.wait_final(run_id, timeout=20)["attempt"] == 2

    intake = first.one("asyncgate intake")
    cut = first.one("asyncgate upstream attempt")
    resent = second.one("asyncgate upstream attempt")
    assert (cut.attributes or {})["asyncgate.attempt"] == 1
    assert cut.status.status_code is StatusCode.ERROR and (cut.attributes or {})["error.type"] == "CancelledError"
    assert (resent.attributes or {})["asyncgate.attempt"] == 2
    assert parent_of(cut) == parent_of(resent) == span_id(intake)
    assert {hex_id(s.context.trace_id, 32) for s in (intake, cut, resent)} == {client.trace_id}
    assert second.spans("asyncgate queue wait") == []  # only a run's first wait is a queue wait span
    assert upstream_headers(replica, run_id)["traceparent"] == client.names(span_id(resent))


# Over OTLP, from real gateway processes ---------------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces, protobuf decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.server = ServerThread(Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])).start()
        self.url = self.server.url

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            for resource_spans in export.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "scope": scope_spans.scope.name,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                            }
                        )
        content = ExportTraceServiceResponse().SerializeToString()
        return Response(content, media_type="application/x-protobuf")

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [span for span in self.spans if span["name"] == name]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.server.stop()


def test_otlp_spans_from_two_replica_processes_form_one_trace_across_a_resend(
    collector: Collector, upstream: Upstream, receiver: Receiver, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "asyncgate-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ASYNCGATE_ACCESS_MODE": "open",
        "ASYNCGATE_WEBHOOKS_ALLOW": "127.0.0.0/8",
        "ASYNCGATE_RUNS_POLL_INTERVAL": "0.2",
        "ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT": "0.5",
        "ASYNCGATE_STORE_KEY_PREFIX": f"o{uuid.uuid4().hex[:10]}",
        "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
        **ENCRYPTION_KEY_ENV,
    }
    args = ["--upstream", upstream.url, "--redis-url", redis_server.url]
    first = GatewayProcess(args, env, tmp_path / "first.log")
    client = ClientTrace()
    hook = f"{receiver.url}/hook"
    submitted = first.client.get(
        "/echo", params={"async": "true", "delay": "6", "webhookEndpoint": hook}, headers=client.headers
    )
    run_id = submitted.json()["run_id"]
    wait_until(lambda: first.run(run_id)["status"] == "running", message="running")
    second = GatewayProcess(args, env, tmp_path / "second.log")
    try:
        stderr = first.terminate()
        assert "queued again after attempt 1" in stderr and "Traceback" not in stderr, stderr
        done = wait_until(lambda: (r := second.run(run_id))["status"] == "succeeded" and r, timeout=30)
        assert done["attempt"] == 2
        delivery = wait_until(lambda: receiver.deliveries.for_run(run_id), message="delivered")[0]
        names = ("asyncgate intake", "asyncgate queue wait", "asyncgate upstream attempt", "asyncgate webhook delivery")
        wait_until(lambda: [len(collector.named(n)) for n in names] == [1, 1, 2, 1], timeout=15, message="spans")
        result = second.client.get(f"/_asyncgate/runs/{run_id}/result").json()
    finally:
        stderr = second.terminate()
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    (intake,), (queued,), attempts, (delivered,) = (collector.named(n) for n in names)
    spans = [intake, queued, *attempts, delivered]
    assert {span["trace_id"] for span in spans} == {client.trace_id}
    assert {(span["service"], span["scope"]) for span in spans} == {("asyncgate-e2e", "asyncgate")}
    assert intake["parent"] == client.span_id
    assert {span["parent"] for span in spans[1:]} == {intake["span_id"]}
    by_attempt = {span["attributes"]["asyncgate.attempt"]: span for span in attempts}
    assert by_attempt[1]["attributes"]["error.type"] == "CancelledError"
    assert by_attempt[2]["attributes"]["http.response.status_code"] == 200
    assert dict(result["headers"])["traceparent"] == client.names(by_attempt[2]["span_id"])
    assert delivery["headers"]["traceparent"] == client.names(delivered["span_id"])
    assert delivery["headers"]["baggage"] == "tenant=acme,user=alice"


def test_tracing_needs_the_sdk_only_when_asked_for(tmp_path: Path, upstream: Upstream) -> None:
    """A gateway without the OpenTelemetry packages serves, and carries trace context; asking for spans is exit 2."""
    script = tmp_path / "no_otel.py"
    script.write_text(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the package were not installed\n"
        "from asyncgate.cli import main\n"
        "sys.exit(main())\n"
    )
    env = {**os.environ, "ASYNCGATE_ACCESS_MODE": "open", "OTEL_TRACES_EXPORTER": "otlp"}
    refused = subprocess.run(
        [sys.executable, str(script), "serve", "--upstream", upstream.url], env=env, capture_output=True, text=True
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.splitlines() == [
        "asyncgate: configuration error: OTEL_TRACES_EXPORTER: tracing is asked for but the OpenTelemetry SDK "
        "is missing: pip install 'asyncgate[otel]'"
    ]
    del env["OTEL_TRACES_EXPORTER"]
    port = free_port()
    args = [sys.executable, str(script), "serve", "--upstream", upstream.url, "--port", str(port)]
    process = subprocess.Popen([*args, "--data-dir", str(tmp_path / "d")], env=env, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as client:

            def ready() -> bool:
                assert process.poll() is None, process.communicate()[1].decode()
                try:
                    return client.get("/_asyncgate/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=20, message="gateway without the SDK ready")
            trace = ClientTrace()
            run_id = client.post("/echo?async=true", headers=trace.headers).json()["run_id"]
            wait_until(lambda: client.get(f"/_asyncgate/runs/{run_id}").json()["status"] == "succeeded")
            result = client.get(f"/_asyncgate/runs/{run_id}/result").json()
            assert dict(result["headers"])["traceparent"] == trace.headers["traceparent"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
