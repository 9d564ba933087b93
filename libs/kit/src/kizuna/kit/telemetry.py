"""OpenTelemetry wiring: one trace across HTTP -> gRPC -> NATS -> consumer.

Configuration is the standard `OTEL_*` environment: `OTEL_EXPORTER_OTLP_ENDPOINT` turns on OTLP
export of traces and metrics; without it spans are still created (so trace ids reach the logs and
travel to other services) but nothing is exported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_configured = False


def configure_telemetry(service: str) -> None:
    """Install the SDK tracer and meter providers once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", service), "service.namespace": "kizuna"}
    )
    provider = TracerProvider(resource=resource)
    readers = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


def shutdown_telemetry() -> None:
    """Flush spans and metrics still buffered (called on graceful shutdown)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=3000)
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.force_flush(timeout_millis=3000)


tracer = trace.get_tracer("kizuna.kit")
meter = metrics.get_meter("kizuna.kit")

http_duration = meter.create_histogram(
    "http.server.request.duration", unit="s", description="HTTP server request duration"
)
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


class TracingMiddleware:
    """ASGI middleware: a SERVER span per HTTP request, continuing the caller's trace."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        status_code = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            f"{method} {path}",
            context=extract_context(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                span.set_attribute("http.response.status_code", status_code)
                if status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                route = scope.get("route")
                route_path = getattr(route, "path", None) or "unmatched"
                if route_path != "unmatched":
                    span.update_name(f"{method} {route_path}")
                    span.set_attribute("http.route", route_path)
                http_duration.record(
                    time.perf_counter() - start,
                    {
                        "http.request.method": method,
                        "http.route": route_path,
                        "http.response.status_code": status_code,
                        "service": self.service,
                    },
                )


AsyncFn = Callable[..., Awaitable[Any]]
