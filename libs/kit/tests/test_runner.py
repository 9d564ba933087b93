"""The service runner as operators see it: start-up errors, graceful shutdown, one trace, auth."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kizuna.identity.v1 import identity_pb2, identity_pb2_grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.events import Consumer
from kizuna.kit.service import Runtime, Service, run_loop
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.telemetry import add_span_processor
from kizuna.kit.testing import NatsServer, TestIssuer, end_process, free_port, reset_streams, spawn, wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlmodel import select

from .demo.process import demo_env, wait_for_ports
from .demo.service import DemoApi, DemoEffect, demo_settings, record_effect, router

TESTS = Path(__file__).parent


def run_points(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "points"], env=env, capture_output=True, text=True, timeout=timeout)


def test_missing_required_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER")}
    env["KIZUNA_ISSUER"] = "http://127.0.0.1:1"
    env["KIZUNA_DATA_DIR"] = str(tmp_path)
    result = run_points(env)
    assert result.returncode != 0
    assert "missing required setting NATS_URL" in result.stderr


def test_invalid_setting_is_named(tmp_path: Path, nats_url: str) -> None:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "KIZUNA_ISSUER": "x",
        "HTTP_PORT": "eighty",
        "KIZUNA_DATA_DIR": str(tmp_path),
    }
    result = run_points(env)
    assert result.returncode != 0
    assert "invalid setting HTTP_PORT" in result.stderr


def test_busy_port_gives_a_clear_message_naming_it(tmp_path: Path, nats_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "KIZUNA_ISSUER": "http://127.0.0.1:1",
            "HTTP_PORT": str(port),
            "KIZUNA_DATA_DIR": str(tmp_path),
        }
        result = run_points(env)
    assert result.returncode != 0
    assert f"http port {port} on 127.0.0.1 is already in use" in result.stderr


async def _published_subjects(nats_url: str, stream: str) -> list[str]:
    """Every member id (ce-subject) published on `stream`, read back from JetStream."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            found.append((msg.headers or {}).get("ce-subject", ""))
        return found
    finally:
        await nc.close()


def test_sigterm_completes_in_flight_grpc_calls_and_exits_zero(tmp_path: Path, nats_server: NatsServer) -> None:
    asyncio.run(reset_streams(nats_server.url, "DEMO"))
    ports_file = tmp_path / "ports.json"
    # The service binds ports of its choosing and reports them once ready.
    env = demo_env(tmp_path, nats_server.url, ports_file, SHUTDOWN_GRACE_SECONDS="8")
    log = (tmp_path / "demo.log").open("w")
    proc = spawn([sys.executable, "-m", "demo.service"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ports = wait_for_ports(ports_file, proc, tmp_path / "demo.log", timeout=30)
        grpc_port = ports["grpc"]
        assert httpx.get(f"http://127.0.0.1:{ports['http']}/readyz", timeout=5).status_code == 200

        async def scenario() -> tuple[list[str], float, int | None, grpc.StatusCode | None]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = identity_pb2_grpc.IdentityServiceStub(channel)
                calls = [
                    asyncio.ensure_future(
                        stub.GetMember(identity_pb2.GetMemberRequest(member_id=f"slow:2:{i}"), timeout=15)
                    )
                    for i in range(5)
                ]
                await asyncio.sleep(0.7)  # all five are now in flight
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                # Draining: a call that arrives now is turned away, not half-served.
                late: grpc.StatusCode | None = None
                async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as fresh:
                    try:
                        await identity_pb2_grpc.IdentityServiceStub(fresh).GetMember(
                            identity_pb2.GetMemberRequest(member_id="late"), timeout=3
                        )
                    except grpc.aio.AioRpcError as exc:
                        late = exc.code()
                replies = await asyncio.gather(*calls)
                code = await asyncio.to_thread(proc.wait, 10)
                return [r.member.member_id for r in replies], time.monotonic() - sent, code, late

        ids, elapsed, code, late = asyncio.run(scenario())
        assert sorted(ids) == [f"slow:2:{i}" for i in range(5)]
        assert code == 0
        assert elapsed < 10
        assert late == grpc.StatusCode.UNAVAILABLE
        # The outbox was flushed before exit: every in-flight call's event is on the stream, and
        # the late call wrote nothing.
        published = asyncio.run(_published_subjects(nats_server.url, "DEMO"))
        assert sorted(published) == [f"slow:2:{i}" for i in range(5)]
    finally:
        end_process(proc)
        log.close()


async def test_readiness_turns_off_when_stopping(demo: Runtime[ServiceSettings]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "nats": "ok"}
        demo.stopping = True
        demo.ready = False
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demo.grpc_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_one_trace_spans_http_grpc_nats_and_consumer(demo: Runtime[ServiceSettings]) -> None:
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
        response = await client.post("/notes/via-grpc", json={"text": "traced"})
        assert response.status_code == 200

    async def effect_done() -> bool:
        async with demo.db.sessions() as session:
            return bool((await session.exec(select(DemoEffect))).all())

    await wait_until(effect_done)
    spans = await wait_until(lambda: _spans_named(exporter, "demo.note.created process"))
    by_name = {s.name: s for s in spans}
    http_span = by_name["POST /notes/via-grpc"]
    assert http_span.attributes["http.route"] == "/notes/via-grpc"
    assert http_span.attributes["http.response.status_code"] == 200
    grpc_client, grpc_server = (
        next(s for s in spans if s.name == "/kizuna.identity.v1.IdentityService/GetMember" and s.kind == kind)
        for kind in (trace.SpanKind.CLIENT, trace.SpanKind.SERVER)
    )
    publish = by_name["demo.note.created publish"]
    process = by_name["demo.note.created process"]
    trace_ids = {s.context.trace_id for s in (http_span, grpc_client, grpc_server, publish, process)}
    assert len(trace_ids) == 1, "HTTP, gRPC, publish and process must share one trace"
    assert grpc_client.parent.span_id == http_span.context.span_id
    assert grpc_server.parent.span_id == grpc_client.context.span_id
    assert publish.parent.span_id == grpc_server.context.span_id
    assert process.parent.span_id == publish.context.span_id
    # The statements of the call and of the consumer, each inside its own span.
    statements = {
        (s.parent.span_id, s.attributes["db.query.text"].split(" (")[0])
        for s in spans
        if s.kind == trace.SpanKind.CLIENT and "db.query.text" in s.attributes
    }
    assert (grpc_server.context.span_id, "INSERT INTO demo_note") in statements
    assert (grpc_server.context.span_id, "INSERT INTO kit_outbox") in statements
    assert (process.context.span_id, "INSERT INTO demo_effect") in statements
    assert process.attributes["messaging.consumer.group.name"] == "demo-effects"
    assert process.attributes["user.id"] == "traced"


async def _spans_named(exporter: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, ...] | None:
    spans = exporter.get_finished_spans()
    return spans if any(s.name == name for s in spans) else None


async def test_grpc_calls_need_a_verified_token(nats_url: str, test_issuer: TestIssuer, tmp_path: Path) -> None:
    await reset_streams(nats_url, "DEMO")
    secured = Service(
        name="demo",
        settings=ServiceSettings,
        http=router,
        grpc=[(identity_pb2_grpc.add_IdentityServiceServicer_to_server, DemoApi)],
        consumers=[Consumer("demo-effects", ["demo.note.created"], record_effect)],
        migrations_dir=TESTS / "demo" / "migrations",
    )
    settings = demo_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", kizuna_issuer=test_issuer.issuer)
    async with secured.running(settings) as runtime:
        async with httpx.AsyncClient() as client:
            ready = (await client.get(f"http://127.0.0.1:{runtime.http_port}/readyz")).json()
            assert ready["checks"]["jwks"] == "ok"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.GetMemberRequest(member_id="m")
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetMember(request, timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            expired = test_issuer.service_token("shop", "x", expires_in=-300)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetMember(request, metadata=call_metadata(expired), timeout=5)
            assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = test_issuer.service_token("shop", "x")
            reply = await stub.GetMember(request, metadata=call_metadata(good), timeout=5)
            assert reply.member.member_id == "m"


async def test_routes_answer_503_until_the_service_is_ready(nats_url: str, tmp_path: Path) -> None:
    await reset_streams(nats_url, "DEMO")
    in_start, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_start(_runtime: Runtime[ServiceSettings]) -> None:
        in_start.set()
        await release.wait()

    starting = Service(
        name="demo",
        settings=ServiceSettings,
        http=router,
        migrations_dir=TESTS / "demo" / "migrations",
        on_start=[slow_start],
        verify_tokens=False,
    )
    settings = demo_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", http_port=free_port())

    async def run() -> None:
        async with starting.running(settings):
            await finished.wait()

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(in_start.wait(), 30)
        base = f"http://127.0.0.1:{settings.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            early = await client.post("/notes", json={"text": "too early"})
            assert early.status_code == 503
            assert early.headers["retry-after"] == "1"
            assert early.json()["error"] == "starting"
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 503
            release.set()
            ready = await wait_until(lambda: _status(client, "/readyz", 200), timeout=30)
            assert ready
            assert (await client.post("/notes", json={"text": "now"})).status_code == 200
    finally:
        release.set()
        finished.set()
        await asyncio.wait_for(task, 30)


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


async def test_grpc_reflection_lists_the_services_without_a_token(demo: Runtime[ServiceSettings]) -> None:
    """Operators' tools (grpcurl, grpc_health_probe) discover a server's API by reflection."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{demo.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: set[str] = set()
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names |= {s.name for s in reply.list_services_response.service}
    assert {"kizuna.identity.v1.IdentityService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(("kind", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_serving_loop_is_uvloop_unless_asyncio_is_asked_for(kind: str, module: str) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert ServiceSettings.model_fields["event_loop"].default == "uvloop"
    assert run_loop(which(), kind) == module
