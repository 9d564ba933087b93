"""gRPC server and client plumbing: health, reflection, tracing (OpenTelemetry's gRPC instrumentation),
error mapping, deadlines, retries."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from kizuna.kit.auth import TokenVerifier, UnaryBehavior, authorized
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
from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span, set_span_in_context

log = logging.getLogger("kizuna.kit.rpc")
_tracer = trace.get_tracer("kizuna.kit.rpc")

# OpenTelemetry's gRPC instrumentation has no annotations: its two factories, typed here.
_server_tracing: Callable[..., grpc.aio.ServerInterceptor] = grpc_instrumentation.aio_server_interceptor
_client_tracing: Callable[[], list[grpc.aio.ClientInterceptor]] = grpc_instrumentation.aio_client_interceptors


# Trailing metadata on every call a Kizuna server refused with a domain error (`_handled`):
# `peer_error` tells such an answer from a call that got none.
REFUSED_METADATA = "kizuna-refused"


def with_unary(handler: grpc.RpcMethodHandler, behavior: UnaryBehavior) -> grpc.RpcMethodHandler:
    """`handler` with `behavior` (which wraps its own) as its unary-unary method."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _handled(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    """`behavior` with the kit's handling of a call: input bounds, `DomainError` -> its status code
    (a database refusing connections -> UNAVAILABLE), any other exception logged and recorded on
    the call's span as INTERNAL, and the call duration histogram."""
    service, _, rpc = method.lstrip("/").rpartition("/")

    async def handled(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            check_message(request)  # NUL or invalid text never reaches a handler
            return await behavior(request, context)
        except DomainError as exc:
            code = exc.grpc_status
            # Marked as this service's own answer: a caller tells it from a call that never got one.
            context.set_trailing_metadata(((REFUSED_METADATA, "1"),))
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
            # The call's SERVER span (`_traced`, outside this) sees only the abort below: the cause
            # is recorded here.
            span = get_current_span()
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            rpc_duration.record(
                (time.perf_counter() - start) * 1000,
                {"rpc.service": service, "rpc.method": rpc, "rpc.grpc.status_code": code.value[0]},
            )

    return handled


class _CallDetails(NamedTuple):
    """What grpc tells a server interceptor about a call (a `grpc.HandlerCallDetails`)."""

    method: str
    invocation_metadata: Any


def _traced(handler: grpc.RpcMethodHandler, method: str, instrumentation: grpc.aio.ServerInterceptor) -> UnaryBehavior:
    """`handler`'s behavior in the caller's trace: while spans are exported, inside the SERVER span
    of OpenTelemetry's gRPC instrumentation (`instrumentation`, its interceptor, run as grpc would);
    while nothing is exported, in a span context that is not recorded.

    The instrumentation's own work per call (its span, attributes and context) was spent on spans
    nobody kept: without it a Credit in points costs 9-14% less CPU and a GetBalance 15-19% less
    (bench/README.md). The unrecorded span context still continues the caller's trace: its trace
    id reaches the logs, what the call publishes and the calls it makes, as on the HTTP side
    (`telemetry.instrument_http`)."""
    behavior = handler.unary_unary
    fields = propagate.get_global_textmap().fields

    async def as_registered(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        if exporting():
            spanned = await instrumentation.intercept_service(as_registered, _CallDetails(method, metadata))
            return await spanned.unary_unary(request, context)
        carrier = {key: value for key, value in metadata if key in fields}
        parent = propagate.extract(carrier) if carrier else None
        # The sampler drops it (nothing is exported): a span context with ids, nothing recorded.
        span = _tracer.start_span(method, parent, SpanKind.SERVER)
        token = otel_context.attach(set_span_in_context(span, parent))
        try:
            return await behavior(request, context)
        finally:
            otel_context.detach(token)

    return traced


Wrap = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]


class _KitRegistration:
    """What a generated `add_<Service>Servicer_to_server` is given as the server: each method
    handler it registers is wrapped, once, with what the kit does around every call (`GrpcServer`).

    Server interceptors would do the same at a cost on every call: grpc runs their chain (a
    coroutine each, a new method handler from each) to find a call's handler, while a wrapped
    handler is found as registered."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap) -> None:
        self.server = server
        self.wrap = wrap
        self.services: dict[str, None] = {}  # the full names of the services registered, in order

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = None
        self.server.add_registered_method_handlers(
            service, {name: self.wrap(handler, f"/{service}/{name}") for name, handler in handlers.items()}
        )

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for handler in generic_handlers:
            named = getattr(handler, "service_name", None)  # grpc's handler of one service has it
            if named is not None:
                self.services[named()] = None
        self.server.add_generic_rpc_handlers([_WrappedGeneric(handler, self.wrap) for handler in generic_handlers])


class _WrappedGeneric:
    """A generic handler whose method handlers are wrapped once each, when first asked for (a
    `grpc.GenericRpcHandler` by registration, below: grpc ships no types)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self.inner = inner
        self.wrap = wrap
        self.wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        wrapped = self.wrapped.get(method)
        if wrapped is None:
            handler = self.inner.service(handler_call_details)
            if handler is None:
                return None  # not this handler's: not remembered (callers choose the names asked for)
            wrapped = self.wrapped[method] = self.wrap(handler, method)
        return wrapped


grpc.GenericRpcHandler.register(_WrappedGeneric)


class _ClientTracingWhileExported:
    """OpenTelemetry's client instrumentation for a unary call while spans are exported: a CLIENT
    span, its context in the call's metadata.

    While nothing is exported, the call only carries the current trace context in its metadata, so
    the callee continues the caller's trace (`_traced` on its side). The
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
    """A grpc.aio server with health and reflection, serving the given servicers.

    Every method of the servicers runs, outermost first: in the caller's trace (a SERVER span while
    spans are exported); with the kit's bounds, error mapping and duration histogram; and, given a
    `verifier`, once the call's tokens verify (`auth.authorized`), except in the services named in
    `own_auth`, which authenticate their callers themselves. Each method is wrapped once, when
    registered (`_KitRegistration`). Health checks and reflection are neither traced nor verified.
    `interceptors`, grpc server interceptors, run on every call before all of that."""

    def __init__(
        self,
        registrations: Sequence[ServicerRegistration],
        *,
        verifier: TokenVerifier | None = None,
        own_auth: Sequence[str] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        reuse_port: bool = False,
    ) -> None:
        # gRPC sets SO_REUSEPORT on its listening socket by default, which would let a second
        # process bind a port already served and silently share its calls: only the workers of one
        # supervisor share a port (kizuna.kit.workers).
        self.server = grpc.aio.server(
            interceptors=list(interceptors) or None,
            options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
        )
        self.verifier = verifier
        self.own_auth = tuple(f"/{name}/" for name in own_auth)
        self._instrumentation = _server_tracing()
        registration = _KitRegistration(self.server, self._wrap)
        for add, servicer in registrations:
            add(servicer, registration)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # What the servicers registered: health answers for them, reflection lists them.
        self.service_names = list(registration.services)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            # Kizuna's contracts are unary: a streaming method would need its own verification.
            raise TypeError(f"{method}: the kit's gRPC server serves unary methods only")
        behavior: UnaryBehavior = handler.unary_unary
        if self.verifier is not None and not method.startswith(self.own_auth):
            behavior = authorized(behavior, self.verifier)
        inner = with_unary(handler, _handled(behavior, method))
        return with_unary(handler, _traced(inner, method, self._instrumentation))

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
    """The domain error for a failed call to `peer`, its message naming the peer: the peer's own
    refusal as it gave it ("fintech: the payment is still in progress"); a call that got no answer
    (no connection, a deadline, the peer failing) as `Unavailable` that says so in words a page can
    recognize (`kizuna.kit.web.wording`): "<peer> cannot be reached (...)", "<peer> did not answer
    in time"."""
    code, details = exc.code(), exc.details() or exc.code().name
    refused = any(key == REFUSED_METADATA for key, _ in exc.trailing_metadata() or ())
    error = _PEER_ERRORS.get(code)
    if error is not None:
        return error(f"{peer}: {details}")
    if refused:
        return Unavailable(f"{peer}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unavailable(f"{peer} did not answer in time")
    return Unavailable(f"{peer} cannot be reached ({code.name}: {details})")
