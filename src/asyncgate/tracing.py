"""Tracing: W3C Trace Context across the async boundary, and OpenTelemetry spans when asked for.

A submission's ``traceparent``, ``tracestate`` and ``baggage`` are stored with its request, so
the upstream call and the webhook delivery carry them whichever replica makes them. Spans are
off unless the standard OpenTelemetry variables ask for them (``OTEL_TRACES_EXPORTER``, or an
``OTEL_EXPORTER_OTLP_*ENDPOINT``); the SDK is then needed (``pip install 'asyncgate[otel]'``) and
lives in asyncgate.otel, which nothing imports otherwise. Off, every hook here is a method that
returns a shared no-op: no span, no allocation, no import.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext

from asyncgate.errors import ConfigError
from asyncgate.headers import BAGGAGE, TRACEPARENT, TRACESTATE
from asyncgate.runs import Headers, Run

#: The W3C Trace Context and Baggage fields a run carries from its submission to its calls.
TRACE_HEADERS = frozenset(name.lower() for name in (TRACEPARENT, TRACESTATE, BAGGAGE))
#: The fields that name a span: replaced on a call the gateway traces, so the callee nests under it.
SPAN_HEADERS = frozenset(name.lower() for name in (TRACEPARENT, TRACESTATE))
#: Exporters OTEL_TRACES_EXPORTER may name here; an OTLP exporter speaks HTTP/protobuf.
EXPORTERS = frozenset({"otlp", "console"})
OTLP_PROTOCOL = "http/protobuf"


def trace_headers(headers: Headers) -> Iterator[tuple[str, str]]:
    """The trace context fields among a stored request's headers."""
    return ((name, value) for name, value in headers if name.lower() in TRACE_HEADERS)


def with_span(headers: Headers, span: Headers) -> Headers:
    """``headers`` with their traceparent and tracestate replaced by those naming ``span``."""
    if not span:
        return headers
    return tuple((n, v) for n, v in headers if n.lower() not in SPAN_HEADERS) + span


class Span:
    """A span in progress, as the code it covers sees it; this one records nothing."""

    #: traceparent (and tracestate) naming this span, for the request it covers; empty when off.
    headers: Headers = ()

    def finish(self, status: int | None = None, error: str | None = None) -> None:
        """Record how the covered work ended: an HTTP status, and an error code when it failed."""


_NO_SPAN = nullcontext(Span())


class Tracing:
    """Tracing off: every hook is free. asyncgate.otel's subclass records spans."""

    def intake(self, raw_headers: list[tuple[bytes, bytes]], method: str, path: str) -> AbstractContextManager[Span]:
        """A submission being accepted, a child of the submitter's span."""
        return _NO_SPAN

    def queue_wait(self, run: Run) -> None:
        """A run's first wait in the queue, from its creation to its claim (both already past)."""

    def upstream_attempt(self, run: Run) -> AbstractContextManager[Span]:
        """One attempt of a run's upstream call; its ``headers`` go on the request."""
        return _NO_SPAN

    def delivery_attempt(self, run: Run, attempt: int) -> AbstractContextManager[Span]:
        """One attempt of a run's webhook delivery; its ``headers`` go on the request."""
        return _NO_SPAN

    async def shutdown(self) -> None:
        """Send what is still buffered, then stop."""


NO_TRACING = Tracing()


def _flag(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip().lower()


def from_environ(environ: Mapping[str, str]) -> Tracing:
    """Tracing as the standard OTEL_* variables ask: off unless an exporter or an OTLP endpoint is named.

    Raises ConfigError for an exporter or protocol asyncgate cannot use, or when the SDK is missing.
    """
    if _flag(environ, "OTEL_SDK_DISABLED") == "true":
        return NO_TRACING
    named = _flag(environ, "OTEL_TRACES_EXPORTER")
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if named == "none" or (not named and not endpoint):
        return NO_TRACING
    exporters = frozenset(name.strip() for name in (named or "otlp").split(",") if name.strip())
    if not exporters <= EXPORTERS:
        unknown = ", ".join(sorted(exporters - EXPORTERS))
        raise ConfigError("OTEL_TRACES_EXPORTER", f"asyncgate exports to otlp, console or none, not {unknown}")
    protocol = _flag(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _flag(environ, "OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in exporters and protocol not in ("", OTLP_PROTOCOL):
        raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", f"asyncgate sends OTLP as {OTLP_PROTOCOL}, not {protocol}")
    try:
        from asyncgate import otel
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        message = "tracing is asked for but the OpenTelemetry SDK is missing: pip install 'asyncgate[otel]'"
        raise ConfigError("OTEL_TRACES_EXPORTER" if named else "OTEL_EXPORTER_OTLP_ENDPOINT", message) from None
    return otel.from_environ(environ, exporters)
