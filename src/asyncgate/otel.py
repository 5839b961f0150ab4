"""The OpenTelemetry implementation of tracing.Tracing; imported only when tracing is on.

Spans are children of the context a run stored (its intake span, itself a child of the
submitter's span), never of a context variable: a run's attempts and deliveries run in tasks,
on any replica, long after the request that made it, and the stored headers are what they share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from asyncgate import __version__
from asyncgate.runs import Headers, Run
from asyncgate.tracing import SPAN_HEADERS, Span, Tracing

#: The service name when OTEL_SERVICE_NAME gives none.
DEFAULT_SERVICE = "asyncgate"
_PROPAGATOR = TraceContextTextMapPropagator()


class RecordingSpan(Span):
    """A span handle over an OpenTelemetry span: the headers naming it, and how it ended."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        self.headers = tuple(carrier.items())

    def finish(self, status: int | None = None, error: str | None = None) -> None:
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if error is not None:
            self.span.set_attribute("error.type", error)
            self.span.set_status(Status(StatusCode.ERROR, error))


def _parent(headers: Headers) -> Context:
    return _PROPAGATOR.extract({name.lower(): value for name, value in headers if name.lower() in SPAN_HEADERS})


def _run_attributes(run: Run) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "asyncgate.run_id": run.run_id,
        "http.request.method": run.request.method,
        "url.path": run.request.path,
    }
    if run.request.route is not None:
        attributes["asyncgate.route"] = run.request.route
    return attributes


class OpenTelemetryTracing(Tracing):
    """Spans for intake, queue wait, upstream attempts and webhook deliveries, through ``provider``."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("asyncgate", __version__)

    @contextmanager
    def _span(self, name: str, parent: Context, kind: SpanKind, attributes: Mapping[str, str | int]) -> Iterator[Span]:
        span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        handle = RecordingSpan(span)
        try:
            yield handle
        except BaseException as exc:
            # A cancelled attempt (a client's cancel, a lost lease, a shutdown) still ends its span.
            handle.finish(error=type(exc).__name__)
            raise
        finally:
            span.end()

    def intake(self, raw_headers: list[tuple[bytes, bytes]], method: str, path: str) -> AbstractContextManager[Span]:
        headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers if n in _RAW_SPAN_HEADERS)
        attributes = {"http.request.method": method, "url.path": path}
        return self._span("asyncgate intake", _parent(headers), SpanKind.SERVER, attributes)

    def queue_wait(self, run: Run) -> None:
        if run.started_at is None:
            return
        start = int(run.created_at * 1e9)
        span = self.tracer.start_span(
            "asyncgate queue wait",
            context=_parent(run.request.headers),
            attributes=_run_attributes(run),
            start_time=start,
        )
        span.end(end_time=max(start, int(run.started_at * 1e9)))

    def upstream_attempt(self, run: Run) -> AbstractContextManager[Span]:
        attributes = {**_run_attributes(run), "asyncgate.attempt": run.attempt}
        return self._span("asyncgate upstream attempt", _parent(run.request.headers), SpanKind.CLIENT, attributes)

    def delivery_attempt(self, run: Run, attempt: int) -> AbstractContextManager[Span]:
        # The receiver's host only: webhook URLs often carry tokens in their path or query.
        attributes: dict[str, str | int] = {
            "asyncgate.run_id": run.run_id,
            "asyncgate.webhook.attempt": attempt,
            "http.request.method": "POST",
            "server.address": urlsplit(run.request.webhook_url or "").hostname or "",
        }
        parent = _parent(run.request.headers)
        return self._span("asyncgate webhook delivery", parent, SpanKind.CLIENT, attributes)

    async def shutdown(self) -> None:
        # The SDK's shutdown joins its export thread and flushes: not on the event loop.
        await asyncio.to_thread(self.provider.shutdown)


_RAW_SPAN_HEADERS = frozenset(name.encode() for name in SPAN_HEADERS)


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    # Headers, timeout, compression and certificates the exporter reads from the standard variables.
    return OTLPSpanExporter(endpoint=endpoint or None)


def from_environ(environ: Mapping[str, str], exporters: frozenset[str]) -> OpenTelemetryTracing:
    """A tracer provider of its own (never the global one), exporting in batches as the variables say."""
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE})
    # The sampler (OTEL_TRACES_SAMPLER) and the batch settings (OTEL_BSP_*) the SDK reads itself.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if "otlp" in exporters:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
    if "console" in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return OpenTelemetryTracing(provider)
