"""tracing.py: which OTEL_* settings turn spans on, and the pure header helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asyncgate.errors import ConfigError
from asyncgate.otel import OpenTelemetryTracing
from asyncgate.runs import Run, RunRequest, RunState
from asyncgate.tracing import NO_TRACING, from_environ, trace_headers, with_span


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_named(environ: dict[str, str]) -> None:
    assert from_environ(environ) is NO_TRACING


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "console,otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
)
def test_an_exporter_or_an_endpoint_turns_spans_on(environ: dict[str, str]) -> None:
    tracing = from_environ(environ)
    assert isinstance(tracing, OpenTelemetryTracing)
    tracing.provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "jaeger"},
            "OTEL_TRACES_EXPORTER: asyncgate exports to otlp, console or none, not jaeger",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: asyncgate sends OTLP as http/protobuf, not grpc",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: asyncgate sends OTLP as http/protobuf, not grpc",
        ),
    ],
)
def test_settings_asyncgate_cannot_honour_are_refused(environ: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_environ(environ)
    assert str(info.value) == line


def test_serve_with_an_unknown_exporter_is_one_line_and_exit_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "zipkin"}
    command = [sys.executable, "-m", "asyncgate", "serve", "--upstream", "http://127.0.0.1:9"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "asyncgate: configuration error: OTEL_TRACES_EXPORTER: asyncgate exports to otlp, console or none, not zipkin"
    ]


def test_a_gateway_without_tracing_never_loads_its_opentelemetry_side() -> None:
    # redis-py imports the SDK by itself when it is installed: what matters is asyncgate's own use.
    code = (
        "import sys\n"
        "from asyncgate.app import create_app\n"
        "from asyncgate.config import load\n"
        "from asyncgate.tracing import from_environ\n"
        "config = load(None, environ={}, overrides={'upstream': 'http://a:1', 'store.data_dir': '/nonexistent'})\n"
        "create_app(config, from_environ({}))\n"
        "print('asyncgate.otel' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "False\n", "")


def test_with_span_replaces_only_the_span_naming_fields() -> None:
    stored = (("Traceparent", "00-a-b-01"), ("Accept", "*/*"), ("tracestate", "v=1"), ("baggage", "k=v"))
    assert with_span(stored, ()) is stored
    span = (("traceparent", "00-a-c-01"), ("tracestate", "v=1"))
    assert with_span(stored, span) == (("Accept", "*/*"), ("baggage", "k=v"), *span)
    assert list(trace_headers(stored)) == [("Traceparent", "00-a-b-01"), ("tracestate", "v=1"), ("baggage", "k=v")]


def test_the_no_op_tracing_records_nothing() -> None:
    run = Run("r", RunState.RUNNING, RunRequest("GET", "/", "", (), None, 1.0), created_at=1.0, started_at=2.0)
    with NO_TRACING.upstream_attempt(run) as span, NO_TRACING.delivery_attempt(run, 1) as other:
        assert span.headers == () and span is other
        span.finish(200)
    NO_TRACING.queue_wait(run)
