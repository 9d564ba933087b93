"""OpenTelemetry wiring: one trace across HTTP -> gRPC -> SQL -> NATS -> consumer.

OpenTelemetry's instrumentation packages make the spans of the HTTP server (FastAPI), gRPC servers
and clients (`kizuna.kit.rpc`), SQL statements (SQLAlchemy) and outgoing HTTP calls (httpx). The
kit adds what they do not: the trace context in NATS headers (`inject_headers` / `extract_context`,
used by `kizuna.kit.events`), the service's resource, probes left out of traces, SQL spans only
inside a trace, and the trace id in every JSON log line (`kizuna.kit.logs`).

Configuration is the standard `OTEL_*` environment: `OTEL_EXPORTER_OTLP_ENDPOINT` turns on OTLP
export of traces and metrics. Without it (and without a processor added with `add_span_processor`)
spans are not recorded, since nothing would read them: every span still has its trace and span ids,
so trace ids reach the logs and travel to other services, but a request pays for no span attributes,
events or timings (a span per SQL statement included).
"""

from __future__ import annotations

import os
import re
import socket
import weakref
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, TraceState
from opentelemetry.util import types

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from starlette.types import ASGIApp, Receive, Scope, Send

_configured = False

# Set in each worker process of a supervisor (kizuna.kit.workers): its slot, 0 .. N-1.
WORKER_VARIABLE = "KIZUNA_WORKER"

# Kubernetes and Prometheus probe these; a trace per probe would bury the requests that matter.
PROBES = ("/healthz", "/readyz", "/metrics")

# The stable HTTP and database semantic conventions (the instrumentation packages default to the
# old ones): HTTP server durations are `http.server.request.duration` in seconds, the name the
# dashboards and alerts use; SQL spans carry `db.system.name` and `db.query.text`.
_STABLE_CONVENTIONS = ("http", "database")
_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"


def _opt_in_to_stable_conventions() -> None:
    """Add the stable conventions to `OTEL_SEMCONV_STABILITY_OPT_IN` (keeping what an operator set,
    such as `http/dup`). The instrumentation packages read it once, at their first instrumenting."""
    chosen = [part.strip() for part in os.environ.get(_OPT_IN, "").split(",") if part.strip()]
    for signal in _STABLE_CONVENTIONS:
        if not any(part.split("/")[0] == signal for part in chosen):
            chosen.append(signal)
    os.environ[_OPT_IN] = ",".join(chosen)


def configure_telemetry(service: str) -> None:
    """Install the SDK tracer and meter providers once per process, and trace outgoing httpx calls."""
    global _configured
    if _configured:
        return
    _configured = True
    _opt_in_to_stable_conventions()
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
            "service.namespace": "kizuna",
        }
    )
    worker = os.environ.get(WORKER_VARIABLE)
    if worker:
        # The workers of one pod (kizuna.kit.workers) each push their own cumulative counters and
        # histograms, which the collector keeps apart only by resource: `<pod>/worker-<n>`.
        base = resource.attributes.get("service.instance.id") or socket.gethostname()
        resource = resource.merge(Resource({"service.instance.id": f"{base}/worker-{worker}"}))
    provider = TracerProvider(resource=resource)
    # The sampler OTEL_TRACES_SAMPLER chose (by default: always, or as the caller's trace says),
    # consulted only while spans go somewhere.
    provider.sampler = _WhileExporting(provider.sampler)
    readers = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        timeout = _export_timeout()
        _add_span_processor(provider, BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(timeout=timeout)))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))

    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()


# How long one export may take, retries included, unless `OTEL_EXPORTER_OTLP_TIMEOUT` (or the
# signal's own variable) says otherwise. The exporters' default is 10 s and they ignore the timeout
# a flush passes them: with the collector unreachable, a stopping service spent 10 s in the flush
# and 10 s more in the SDK's exit hook, past its grace period, and was killed.
EXPORT_TIMEOUT_SECONDS = 3.0
_TIMEOUT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)


def _export_timeout() -> float | None:
    """The kit's export timeout, or None where the operator set one (the exporters read it)."""
    return None if any(os.environ.get(name) for name in _TIMEOUT_VARIABLES) else EXPORT_TIMEOUT_SECONDS


_exporting = False


class _WhileExporting(Sampler):
    """Records spans only while a span processor receives them; otherwise drops them, which keeps
    their ids (logs and propagation) but skips recording them."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not _exporting:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WhileExporting{{{self._inner.get_description()}}}"


def exporting() -> bool:
    """Whether spans are recorded and sent somewhere (an OTLP endpoint or a span processor added)."""
    return _exporting


def _add_span_processor(provider: TracerProvider, processor: SpanProcessor) -> None:
    global _exporting
    provider.add_span_processor(processor)
    _exporting = True
    for engine in list(_untraced_engines):
        _trace_statements(engine)
    _untraced_engines.clear()


def add_span_processor(processor: SpanProcessor) -> None:
    """Send spans to `processor` as well (tests read them in-process with an `InMemorySpanExporter`);
    from now on spans are recorded. Call after `configure_telemetry`."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        raise RuntimeError("configure_telemetry() first: no SDK tracer provider is installed")
    _add_span_processor(provider, processor)


def shutdown_telemetry(*, final: bool = False) -> None:
    """Flush spans and metrics still buffered (called on graceful shutdown). `final`: the process is
    ending, so the providers shut down too and the SDK's exit hook has nothing left to export."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        if final:  # exports what is buffered, then stops the exporter
            provider.shutdown()
        else:
            provider.force_flush(timeout_millis=3000)
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        if final:
            meter_provider.shutdown(timeout_millis=3000)
        else:
            meter_provider.force_flush(timeout_millis=3000)


tracer = trace.get_tracer("kizuna.kit")
_http_tracer = trace.get_tracer("kizuna.kit.http")
meter = metrics.get_meter("kizuna.kit")

# HTTP server durations come from the FastAPI instrumentation (`http.server.request.duration`, s).
# gRPC's instrumentation has no metrics: the kit's gRPC server records this one around every call.
rpc_duration = meter.create_histogram("rpc.server.duration", unit="ms", description="gRPC server call duration")
messages_published = meter.create_counter(
    "messaging.client.published.messages", description="Events published to JetStream"
)
messages_consumed = meter.create_counter(
    "messaging.client.consumed.messages", description="Events processed by a consumer"
)
dead_letters = meter.create_counter(
    "kizuna.events.dead_lettered", description="Events moved to the dead-letter subject"
)


def inject_headers(carrier: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the W3C trace context (`traceparent`) of the current span into a carrier."""
    propagate.inject(carrier, context=context)


def extract_context(carrier: Mapping[str, str]) -> Context:
    """Read a W3C trace context from headers or gRPC metadata."""
    return propagate.extract(dict(carrier))


def instrument_http(app: FastAPI) -> None:
    """A SERVER span per HTTP request (continuing the caller's trace) and the request duration
    histogram, by OpenTelemetry's FastAPI instrumentation; probes are left out of both.

    While nothing is exported (no OTLP endpoint, no span processor added) the instrumentation is
    bypassed: a request only gets a span context (its trace id for the logs, the caller's trace
    continued in outgoing calls). The instrumentation matches every request against all routes to
    name its span and records five measurements; that was about half the CPU time of a token
    request (bench/token_bench.py), spent on spans and metrics nobody read."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _opt_in_to_stable_conventions()
    FastAPIInstrumentor.instrument_app(
        app,
        # Matched against the full URL (scheme://host:port/path, no query).
        excluded_urls=",".join(rf"^[a-z]+://[^/]+{re.escape(path)}$" for path in PROBES),
        # No INTERNAL span per ASGI receive/send message: they say nothing the server span does not.
        exclude_spans=["receive", "send"],
    )
    instrumented_build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        traced = instrumented_build()
        # The instrumentation's stack: ServerErrorMiddleware -> OpenTelemetryMiddleware -> the
        # application's own stack. Anything else (a newer instrumentation): always traced.
        otel = getattr(traced, "app", None)
        plain = getattr(otel, "app", None)
        if type(otel).__name__ != "OpenTelemetryMiddleware" or plain is None:
            return traced
        return _WhileExported(traced, plain)

    # An instance attribute, as the instrumentation's own replacement is.
    app.__dict__["build_middleware_stack"] = build_middleware_stack


class _WhileExported:
    """The instrumented stack while spans are exported; otherwise the application's own stack
    inside a span context that is not recorded (see `instrument_http`)."""

    def __init__(self, traced: ASGIApp, plain: ASGIApp) -> None:
        self.traced = traced
        self.plain = plain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _exporting or scope["type"] != "http":
            await self.traced(scope, receive, send)
            return
        parent: Context | None = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = propagate.extract({"traceparent": value.decode("latin-1")})
                break
        # The sampler drops it (nothing is exported): a span context with ids, nothing recorded.
        span = _http_tracer.start_span("HTTP", parent, SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.plain(scope, receive, send)
        finally:
            otel_context.detach(token)


class _InTraceOnly:
    """The tracer SQLAlchemy's instrumentation is given: it starts spans only inside a trace. A
    statement run outside any (the outbox relay's poll, a readiness ping) would otherwise be a
    one-span trace of its own, every second. (The instrumentation calls `start_span` only.)"""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._inner.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )


# Engines created while no span is recorded: their statements are traced once spans are.
_untraced_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def instrument_database(engine: AsyncEngine) -> None:
    """A CLIENT span per SQL statement on this engine, inside a trace, by OpenTelemetry's SQLAlchemy
    instrumentation: from now on while spans are recorded, else from when they are. Until then the
    engine has no listener of the instrumentation's, so a statement costs nothing more."""
    # The async engine runs its statements on the sync engine inside it: its events are the ones.
    if _exporting:
        _trace_statements(engine.sync_engine)
    else:
        _untraced_engines.add(engine.sync_engine)


def _trace_statements(engine: Engine) -> None:
    from opentelemetry.instrumentation.sqlalchemy import engine as sqlalchemy_instrumentation
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as version

    global _sql_tracer
    if _sql_tracer is None:
        _opt_in_to_stable_conventions()
        _sql_tracer = _InTraceOnly(trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", version))
    # The instrumentation has no annotations; its tracer of an engine, typed here. Its pool gauge
    # (db.client.connections.usage) is left out: an engine traced after it started would count
    # the connections it already had wrong, and no dashboard reads it.
    engine_tracer: Callable[[_InTraceOnly, Engine, metrics.UpDownCounter], object] = (
        sqlalchemy_instrumentation.EngineTracer
    )
    engine_tracer(_sql_tracer, engine, metrics.NoOpUpDownCounter("db.client.connections.usage"))


_sql_tracer: _InTraceOnly | None = None
