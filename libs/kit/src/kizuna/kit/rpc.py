"""gRPC server and client plumbing: health, reflection, tracing (OpenTelemetry's gRPC instrumentation),
error mapping, deadlines, retries."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from kizuna.kit.bounds import check_message
from kizuna.kit.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    database_refusal,
)
from kizuna.kit.telemetry import exporting, rpc_duration
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation import grpc as grpc_instrumentation
from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_prefix
from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span, set_span_in_context

log = logging.getLogger("kizuna.kit.rpc")
_tracer = trace.get_tracer("kizuna.kit.rpc")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

# Probes and tooling, not calls: no span, no duration.
_UNTRACED = ("grpc.health", "grpc.reflection")

# OpenTelemetry's gRPC instrumentation has no annotations: its two factories, typed here.
_server_tracing: Callable[..., grpc.aio.ServerInterceptor] = grpc_instrumentation.aio_server_interceptor
_client_tracing: Callable[[], list[grpc.aio.ClientInterceptor]] = grpc_instrumentation.aio_client_interceptors


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def with_unary(handler: grpc.RpcMethodHandler, behavior: UnaryBehavior) -> grpc.RpcMethodHandler:
    """`handler` with `behavior` (which wraps its own) as its unary-unary method: what a server
    interceptor returns to run code around a call."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: str
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    service, _, rpc = method.lstrip("/").rpartition("/")

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            check_message(request)  # NUL or invalid text never reaches a handler
            return await behavior(request, context)
        except DomainError as exc:
            code = exc.grpc_status
            await context.abort(exc.grpc_status, exc.message)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            refusal = database_refusal(exc)
            if refusal is not None:
                code = refusal.grpc_status
                log.warning("%s answered UNAVAILABLE: the database refused a connection (%s)", method, refusal.cause)
                await context.abort(refusal.grpc_status, refusal.message)
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            # The call's SERVER span (OpenTelemetry's interceptor, outside this one) sees only the
            # abort below: the cause is recorded here.
            span = get_current_span()
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            rpc_duration.record(
                (time.perf_counter() - start) * 1000,
                {"rpc.service": service, "rpc.method": rpc, "rpc.grpc.status_code": code.value[0]},
            )

    return wrapped


class KitServerInterceptor:
    """Input bounds, `DomainError` -> its status code, and the call duration histogram.

    The SERVER span is OpenTelemetry's gRPC instrumentation (`tracing_interceptor`), which runs
    before this one so that the span covers the whole call. A virtual subclass of grpc's
    `ServerInterceptor` (registered below): grpc checks interceptors with isinstance.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").startswith(_UNTRACED):
            return handler
        if handler.unary_unary is None:
            return handler
        return with_unary(handler, _wrap_unary(handler.unary_unary, method))


grpc.aio.ServerInterceptor.register(KitServerInterceptor)


class _TracingWhileExported:
    """OpenTelemetry's gRPC instrumentation while spans are exported: a SERVER span per call
    continuing the caller's trace (health checks and reflection aside).

    While nothing is exported, a unary call only runs in a span context that is not recorded: the
    caller's trace continues (its trace id in the logs, in what the call publishes and in the calls
    it makes), as on the HTTP side (`telemetry.instrument_http`). The instrumentation's own work
    per call (its filter, span, attributes and context) was spent on spans nobody kept: without it
    a Credit in points costs 9-14% less CPU and a GetBalance 15-19% less (bench/README.md)."""

    def __init__(self) -> None:
        self.traced = _server_tracing(filter_=negate(any_of(*(service_prefix(prefix) for prefix in _UNTRACED))))
        self.fields = propagate.get_global_textmap().fields

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if exporting():
            handler: grpc.RpcMethodHandler | None = await self.traced.intercept_service(
                continuation, handler_call_details
            )
            return handler
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.lstrip("/").startswith(_UNTRACED):
            return handler
        behavior = handler.unary_unary
        fields = self.fields
        metadata: Any = handler_call_details.invocation_metadata or ()
        carrier = {key: value for key, value in metadata if key in fields}

        async def in_callers_trace(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = propagate.extract(carrier) if carrier else None
            # The sampler drops it (nothing is exported): a span context with ids, nothing recorded.
            span = _tracer.start_span(method, parent, SpanKind.SERVER)
            token = otel_context.attach(set_span_in_context(span, parent))
            try:
                return await behavior(request, context)
            finally:
                otel_context.detach(token)

        return with_unary(handler, in_callers_trace)


grpc.aio.ServerInterceptor.register(_TracingWhileExported)


def tracing_interceptor() -> grpc.aio.ServerInterceptor:
    """A SERVER span per call continuing the caller's trace while spans are exported (see
    `_TracingWhileExported`)."""
    interceptor: grpc.aio.ServerInterceptor = _TracingWhileExported()
    return interceptor


class _ClientTracingWhileExported:
    """OpenTelemetry's client instrumentation for a unary call while spans are exported: a CLIENT
    span, its context in the call's metadata.

    While nothing is exported, the call only carries the current trace context in its metadata, so
    the callee continues the caller's trace (`_TracingWhileExported` on its side). The
    instrumentation's own span, attributes and status were spent on a span nobody kept: 0.03-0.04 ms
    of the client's CPU per call, about a tenth of what a call costs it (`bench/grpc_client_bench.py`)."""

    def __init__(self, traced: grpc.aio.UnaryUnaryClientInterceptor) -> None:
        self.traced = traced

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if exporting():
            return await self.traced.intercept_unary_unary(continuation, client_call_details, request)
        metadata = grpc.aio.Metadata(*tuple(client_call_details.metadata or ()))
        propagate.inject(metadata)
        return await continuation(client_call_details._replace(metadata=metadata), request)


grpc.aio.UnaryUnaryClientInterceptor.register(_ClientTracingWhileExported)


def client_tracing_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """A CLIENT span per call while spans are exported, the trace context in every call's metadata
    (see `_ClientTracingWhileExported`); streaming calls (none in Kizuna's contracts) go through
    OpenTelemetry's interceptors as they are."""
    interceptors: list[grpc.aio.ClientInterceptor] = []
    for interceptor in _client_tracing():
        if isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor):
            unary: grpc.aio.ClientInterceptor = _ClientTracingWhileExported(interceptor)
            interceptors.append(unary)
        else:
            interceptors.append(interceptor)
    return interceptors


ServicerRegistration = tuple[Callable[[Any, grpc.aio.Server], None], Any]


class GrpcServer:
    """A grpc.aio server with health and reflection, serving the given servicers."""

    def __init__(
        self,
        registrations: Sequence[ServicerRegistration],
        service_names: Sequence[str],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        reuse_port: bool = False,
    ) -> None:
        # gRPC sets SO_REUSEPORT on its listening socket by default, which would let a second
        # process bind a port already served and silently share its calls: only the workers of one
        # supervisor share a port (kizuna.kit.workers).
        self.server = grpc.aio.server(
            interceptors=[tracing_interceptor(), KitServerInterceptor(), *interceptors],
            options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
        )
        for add, servicer in registrations:
            add(servicer, self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0

    def bind(self, host: str, port: int) -> int:
        try:
            # gRPC answers a port it cannot bind with 0 or, in newer releases, a RuntimeError.
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise OSError(f"gRPC port {port} on {host} is busy") from exc
        if self.port == 0:
            raise OSError(f"gRPC port {port} on {host} is busy")
        return self.port

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls and let in-flight ones finish within `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _service_config(retry_services: Sequence[str]) -> str:
    config: dict[str, Any] = {"methodConfig": []}
    if retry_services:
        config["methodConfig"].append(
            {
                "name": [{"service": s} for s in retry_services],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


def client_channel(address: str, *, retry_services: Sequence[str] = ()) -> grpc.aio.Channel:
    """A channel to a peer that propagates the trace; calls to `retry_services` retry on UNAVAILABLE.

    Every mutating Kizuna RPC is idempotent by key, so retrying it with the same key is safe.
    Callers pass a `timeout=` (deadline) on every call.
    """
    return grpc.aio.insecure_channel(
        address,
        # The caller's trace context in every call's metadata; a CLIENT span per call while spans are exported.
        interceptors=client_tracing_interceptors(),
        options=[("grpc.service_config", _service_config(retry_services)), ("grpc.enable_retries", 1)],
    )


# A peer's refusal, as the domain error that would have produced it on the peer's side; anything
# else (deadline, connection, internal) is the peer being unavailable.
_PEER_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    cls.grpc_status: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unauthenticated, PermissionDenied)
}


def peer_error(peer: str, exc: grpc.aio.AioRpcError) -> DomainError:
    """The domain error for a failed call to `peer`, its message naming the peer."""
    error = _PEER_ERRORS.get(exc.code(), Unavailable)
    return error(f"{peer}: {exc.details() or exc.code().name}")
