"""One checkout, one trace: the member's HTTP request into the shop, the shop's gRPC calls to points
and fintech, the SQL statements of all three, the shop's purchase event over NATS and points'
consumer of it, all under one trace id and linked parent to child.

Points and fintech run as `python -m points` / `python -m fintech` (the kit's `ecosystem`) and
export over OTLP, as in production, to a small OTLP receiver this module runs (a real gRPC
server speaking OpenTelemetry's collector protocol). The shop runs in this process; its spans are
read through the kit's `add_span_processor`. The receiver also gets the services' metrics: the
names the dashboards and alerts read are checked on what a real service exports.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from kizuna.kit.auth import call_metadata
from kizuna.kit.telemetry import add_span_processor
from kizuna.kit.testing import PostgresServer, wait_until
from kizuna.kit.testing_stack import Ecosystem
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.shop.tests.shop_support import ShopApi, running_shop, shop_api

# The ecosystem exports to this module's receiver, which ends with the module: so does it (shared,
# it would go on exporting to a closed port for the rest of the session).
pytestmark = pytest.mark.own_ecosystem

OWNER = "mbr_owner"


@dataclass(frozen=True)
class Seen:
    """A finished span, from whichever process: its service, identity, parent and attributes."""

    service: str
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id) of each linked span

    @property
    def is_sql(self) -> bool:
        return self.kind == "CLIENT" and "db.system.name" in self.attributes


def _value(kv: KeyValue) -> Any:
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv) for kv in kvs}


class _Traces:
    """OpenTelemetry's TraceService (grpc needs only its `Export`)."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        seen = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    seen.append(
                        Seen(
                            service=service,
                            name=span.name,
                            kind=OtlpSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            attributes=_attributes(span.attributes),
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        )
                    )
        with self.receiver.lock:
            self.receiver.spans.extend(seen)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics:
    """OpenTelemetry's MetricsService (grpc needs only its `Export`)."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        seen = []
        for resource_metrics in request.resource_metrics:
            service = str(_attributes(resource_metrics.resource.attributes).get("service.name"))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points = metric.histogram.data_points if metric.HasField("histogram") else []
                    for point in points:
                        seen.append((service, metric.name, metric.unit, _attributes(point.attributes)))
        with self.receiver.lock:
            self.receiver.metrics.extend(seen)
        return metrics_service_pb2.ExportMetricsServiceResponse()


# The generated registration functions have no annotations: typed here.
_serve_traces: Callable[[_Traces, grpc.Server], None] = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
_serve_metrics: Callable[[_Metrics, grpc.Server], None] = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server


class OtlpReceiver:
    """An OTLP/gRPC endpoint on a free loopback port, keeping every span and histogram point it gets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Seen] = []
        self.metrics: list[tuple[str, str, str, dict[str, Any]]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        _serve_traces(_Traces(self), self.server)
        _serve_metrics(_Metrics(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def env(self) -> dict[str, str]:
        """What a service needs to export here at once (spans every 100 ms, metrics every 500 ms)."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }

    def spans_of(self, trace_id: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp.server.start()
    try:
        yield otlp
    finally:
        otlp.server.stop(grace=None)


@pytest.fixture(scope="module")
def ecosystem_env(receiver: OtlpReceiver, postgres_server: PostgresServer) -> dict[str, dict[str, str]]:
    """Points and fintech export their spans and metrics to this module's receiver; points runs on
    PostgreSQL, as in production (its Credit calls commit in groups there)."""
    database = postgres_server.new_database("kizuna_points").replace("postgresql://", "postgresql+asyncpg://", 1)
    return {"points": {**receiver.env(), "DATABASE_URL": database}, "fintech": receiver.env()}


@dataclass
class TracedShop:
    api: ShopApi
    spans: InMemorySpanExporter

    def seen(self, trace_id: str | None = None) -> list[Seen]:
        return [_seen(s) for s in self.spans.get_finished_spans() if trace_id in (None, _hex(s.context.trace_id))]


def _hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def _seen(span: ReadableSpan) -> Seen:
    assert span.context is not None
    return Seen(
        service="shop",
        name=span.name,
        kind=span.kind.name,
        trace_id=_hex(span.context.trace_id),
        span_id=format(span.context.span_id, "016x"),
        parent_id=format(span.parent.span_id, "016x") if span.parent else None,
        attributes=dict(span.attributes or {}),
    )


@pytest.fixture
async def shop(ecosystem: Ecosystem, database_url: str) -> AsyncIterator[TracedShop]:
    """The shop in this process against the module's points and fintech, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    async with (
        running_shop(
            nats_url=ecosystem.nats_url,
            database_url=database_url,
            issuer=ecosystem.issuer,
            points_addr=ecosystem.points_addr,
            fintech_addr=ecosystem.fintech_addr,
        ) as runtime,
        shop_api(runtime, ecosystem.issuer) as api,
    ):
        add_span_processor(SimpleSpanProcessor(exporter))
        try:
            yield TracedShop(api, exporter)
        finally:
            exporter.shutdown()  # later tests in this process record into nothing


def _complete(spans: list[Seen]) -> bool:
    """Every part of the checkout has reached us: points' and fintech's calls with their SQL, and
    points' consumer of the purchase event with its SQL."""
    ids = {s.span_id: s for s in spans}

    def has_sql_under(parent: Seen) -> bool:
        # Under it, or under its group's span (a call that commits or reads in a group).
        return any(s.is_sql and _ancestor(ids, s, parent) for s in spans)

    parts = [
        [s for s in spans if s.service == "points" and s.kind == "SERVER"],
        [s for s in spans if s.service == "fintech" and s.kind == "SERVER"],
        [s for s in spans if s.service == "points" and s.kind == "CONSUMER"],
    ]
    return all(any(has_sql_under(s) for s in part) for part in parts) and all(
        s.parent_id is None or s.parent_id in ids for s in spans
    )


async def test_a_checkout_is_one_trace_through_shop_points_fintech_their_sql_and_the_event(
    ecosystem: Ecosystem, shop: TracedShop, receiver: OtlpReceiver
) -> None:
    buyer = await ecosystem.member(points=1000)
    merchant = await shop.api.active_merchant(OWNER)
    product = await shop.api.product(merchant, OWNER, price=10_000, stock=3)
    await shop.api.ok("PUT", "/api/cart/items", buyer.id, {"product_id": product, "quantity": 1})
    response = await shop.api.checkout(buyer.id, points=400, key=uuid.uuid4().hex)
    assert response.status_code == 200, response.text

    (checkout,) = [s for s in shop.seen() if s.name == "POST /api/checkout" and s.kind == "SERVER"]
    assert checkout.attributes["http.route"] == "/api/checkout"
    assert checkout.attributes["http.response.status_code"] == 200

    async def whole_trace() -> list[Seen] | None:
        spans = shop.seen(checkout.trace_id) + receiver.spans_of(checkout.trace_id)
        return spans if _complete(spans) else None

    spans: list[Seen] = await wait_until(whole_trace, timeout=30)
    by_id = {s.span_id: s for s in spans}

    # One tree: the test's own HTTP client call is its root, every other span hangs under it.
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.service == "shop" and root.kind == "CLIENT" and checkout.parent_id == root.span_id

    def shop_client(peer: str) -> list[Seen]:
        return [
            s for s in spans if s.service == "shop" and s.kind == "CLIENT" and s.name.startswith(f"/kizuna.{peer}.")
        ]

    # The shop's own statements run in its request.
    assert any(s.is_sql and s.parent_id == checkout.span_id for s in spans)
    for peer in ("points", "fintech"):
        calls = shop_client(peer)
        assert calls, f"the shop made no gRPC call to {peer} in the checkout"
        servers = [s for s in spans if s.service == peer and s.kind == "SERVER"]
        assert servers, f"{peer} exported no SERVER span of the checkout"
        for server in servers:
            # Each call the peer served continues the shop's CLIENT span of it...
            assert by_id[server.parent_id or ""].service == "shop"
            assert by_id[server.parent_id or ""] in calls
            assert server.attributes["rpc.system"] == "grpc"
        # ...and its SQL statements are spans of its own, under the call (or under the span of the
        # group that handled it with others: points' Reserve and GetBalance).
        sql = [s for s in spans if s.service == peer and s.is_sql]
        under = any(_ancestor(by_id, s, server) for s in sql for server in servers)
        assert under, f"no SQL span of {peer} under its call"
        assert all(s.attributes["db.query.text"] for s in sql)
        # (The calls' parent is the checkout request, whichever shop code made them.)
        assert all(_ancestor(by_id, call, checkout) for call in calls)

    # The purchase event: published by the shop's outbox relay in the checkout's trace, processed by
    # points' earning consumer as its child, with the consumer's statements under it.
    (publish,) = [s for s in spans if s.name == "shop.purchase.paid publish"]
    assert publish.service == "shop" and publish.kind == "PRODUCER"
    assert _ancestor(by_id, publish, checkout)
    (process,) = [s for s in spans if s.service == "points" and s.name == "shop.purchase.paid process"]
    assert process.kind == "CONSUMER" and process.parent_id == publish.span_id
    assert process.attributes["messaging.consumer.group.name"] == "points-shop-earn"
    consumer_sql = [s for s in spans if s.is_sql and s.parent_id == process.span_id]
    assert consumer_sql and {s.service for s in consumer_sql} == {"points"}

    # Probes stay out of traces (the fixtures polled /readyz until each service was ready).
    with receiver.lock:
        names = {s.name for s in receiver.spans}
    assert not {n for n in names if n.endswith(("/healthz", "/readyz"))}, names
    assert not {n for n in names if n.startswith("/grpc.health")}, names


async def test_a_credit_links_to_the_group_that_committed_it_and_its_sql(
    ecosystem: Ecosystem, receiver: OtlpReceiver
) -> None:
    """Credit commits in groups (points.group_commit): the group's span, with the statements under
    it, hangs in the trace of its first call and is linked both ways with every call's span."""
    member = await ecosystem.member(points=0)

    def credit(stub: points_pb2_grpc.PointsServiceStub, metadata: Metadata) -> Any:
        key, kind = uuid.uuid4().hex, pb.CREDIT_KIND_REGULAR
        request = pb.CreditRequest(member_id=member.id, amount=10, kind=kind, reason="trace", idempotency_key=key)
        return stub.Credit(request, metadata=metadata, timeout=30)

    traces = await _three_traces(ecosystem, "points:credit", credit)
    await _linked_to_groups(receiver, traces, "/Credit", "points credit group", "points_entry")


async def test_a_balance_links_to_the_group_that_read_it_and_its_sql(
    ecosystem: Ecosystem, receiver: OtlpReceiver
) -> None:
    """GetBalance reads in groups (points.balances.BalanceReads), on the driver's connection: the
    group's span, with its statement under it, hangs in the trace of its first call and is linked
    both ways with every call's span."""
    member = await ecosystem.member(points=0)

    def balance(stub: points_pb2_grpc.PointsServiceStub, metadata: Metadata) -> Any:
        return stub.GetBalance(pb.GetBalanceRequest(member_id=member.id), metadata=metadata, timeout=30)

    traces = await _three_traces(ecosystem, "points:read", balance)
    await _linked_to_groups(receiver, traces, "/GetBalance", "points balance read group", "points_wallet")


Metadata = tuple[tuple[str, str], ...]


async def _three_traces(
    ecosystem: Ecosystem, scope: str, call: Callable[[points_pb2_grpc.PointsServiceStub, Metadata], Awaitable[Any]]
) -> list[str]:
    """Three calls at once, each in a trace of its own (a `traceparent` of the caller's): the traces."""
    token = ecosystem.issuer.service_token("shop", scope)
    traces = [uuid.uuid4().hex for _ in range(3)]
    async with grpc.aio.insecure_channel(ecosystem.points_addr) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)
        await asyncio.gather(
            *(
                call(stub, (*call_metadata(token), ("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")))
                for trace_id in traces
            )
        )
    return traces


async def _linked_to_groups(receiver: OtlpReceiver, traces: list[str], method: str, name: str, table: str) -> None:
    """Each call's SERVER span (one per trace) links to the span of the group that handled it, and
    back; the group hangs under its first call, in that call's trace; its SQL (on `table`) under it."""

    def call_of(trace_id: str) -> Seen | None:
        found = [s for s in receiver.spans_of(trace_id) if s.kind == "SERVER" and s.name.endswith(method)]
        return found[0] if found else None

    async def seen() -> dict[str, Seen] | None:
        with receiver.lock:
            groups = {s.span_id: s for s in receiver.spans if s.name == name}
        calls = [call_of(t) for t in traces]
        if None in calls or not all(any(sid in groups for _, sid in c.links) for c in calls if c):
            return None
        return groups

    groups: dict[str, Seen] = await wait_until(seen, timeout=30)
    for trace_id in traces:
        call = call_of(trace_id)
        assert call is not None
        (group,) = [groups[sid] for _, sid in call.links if sid in groups]
        assert (call.trace_id, call.span_id) in group.links  # linked both ways
        # The group hangs under its first call, in that call's trace; its SQL hangs under it.
        first = [c for t in traces if (c := call_of(t)) and c.span_id == group.parent_id]
        assert len(first) == 1 and group.trace_id == first[0].trace_id
        sql = [s for s in receiver.spans_of(group.trace_id) if s.is_sql and s.parent_id == group.span_id]
        assert any(table in str(s.attributes.get("db.query.text", "")) for s in sql), sql


def _ancestor(by_id: dict[str, Seen], span: Seen, ancestor: Seen) -> bool:
    while span.parent_id is not None and span.parent_id in by_id:
        span = by_id[span.parent_id]
        if span.span_id == ancestor.span_id:
            return True
    return False


async def test_the_services_export_the_metrics_the_dashboards_read(
    ecosystem: Ecosystem, shop: TracedShop, receiver: OtlpReceiver
) -> None:
    """HTTP server durations (OpenTelemetry's FastAPI instrumentation, stable conventions) and gRPC
    server durations (the kit's), by the names and labels the dashboards and alerts use; probes are
    not counted as requests."""
    await ecosystem.member(points=10)  # a card application (HTTP at fintech), a credit (gRPC at points)

    def points_of(service: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        with receiver.lock:
            return [(unit, attrs) for s, n, unit, attrs in receiver.metrics if s == service and n == name]

    async def exported() -> bool:
        http = points_of("fintech", "http.server.request.duration")
        rpc = points_of("points", "rpc.server.duration")
        groups = points_of("points", "kizuna.points.group_size")
        return (
            any(a.get("http.route") == "/api/card/apply" for _, a in http)
            and any(a.get("rpc.method") == "Credit" for _, a in rpc)
            and any(a.get("operation") == "credit" for _, a in groups)
        )

    await wait_until(exported, timeout=15)
    http = points_of("fintech", "http.server.request.duration")
    assert {unit for unit, _ in http} == {"s"}
    apply = [a for _, a in http if a.get("http.route") == "/api/card/apply"]
    assert {a["http.request.method"] for a in apply} == {"POST"}
    assert {a["http.response.status_code"] for a in apply} == {201}
    assert not [a for _, a in http if a.get("http.route") in ("/healthz", "/readyz")]
    rpc = points_of("points", "rpc.server.duration")
    assert {unit for unit, _ in rpc} == {"ms"}
    credit = [a for _, a in rpc if a.get("rpc.method") == "Credit"]
    assert {(a["rpc.service"], a["rpc.grpc.status_code"]) for a in credit} >= {("kizuna.points.v1.PointsService", 0)}
    # The ledger's group commits (points runs on PostgreSQL here), by operation, for the dashboard.
    groups = points_of("points", "kizuna.points.group_size")
    assert {unit for unit, _ in groups} == {"{call}"}
    assert "credit" in {a["operation"] for _, a in groups}
