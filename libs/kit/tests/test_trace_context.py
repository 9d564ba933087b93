"""Without an exporter the HTTP and gRPC instrumentation is bypassed, but a request or call still
continues its caller's trace: the trace id reaches the events it publishes (and the logs)."""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import nats
from kizuna.kit.testing import NatsServer, end_process, reset_streams, spawn

from .demo.process import demo_env, wait_for_ports


def _post_note(port: int, text: str, headers: dict[str, str], path: str = "/notes") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps({"text": text}), {"content-type": "application/json", **headers})
        return conn.getresponse().status
    finally:
        conn.close()


async def _traceparents(nats_url: str, stream: str) -> dict[str, str]:
    """ce-subject -> traceparent of every event on `stream`."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            headers = (await js.get_msg(stream, seq)).headers or {}
            found[headers.get("ce-subject", "")] = headers.get("traceparent", "")
        return found
    finally:
        await nc.close()


def test_a_request_continues_its_callers_trace_while_nothing_is_exported(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    asyncio.run(reset_streams(nats_server.url, "DEMO"))
    ports_file = tmp_path / "ports.json"
    log_path = tmp_path / "demo.log"
    env = demo_env(
        tmp_path, nats_server.url, ports_file, KIZUNA_WORKERS="1", SHUTDOWN_GRACE_SECONDS="8", LOG_FORMAT="text"
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    with log_path.open("w") as log:
        proc = spawn([sys.executable, "-m", "demo.service"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            port = wait_for_ports(ports_file, proc, log_path)["http"]
            trace_id = secrets.token_hex(16)
            caller = f"00-{trace_id}-{secrets.token_hex(8)}-01"
            # The standard library's client: httpx in this process may be instrumented by another
            # test's configure_telemetry, and would replace the caller's traceparent with its own.
            traced = _post_note(port, "traced", {"traceparent": caller})
            untraced = _post_note(port, "untraced", {})
            # Through a gRPC call: the HTTP request calls the service's own gRPC server, whose
            # method publishes the event.
            by_grpc = _post_note(port, "by-grpc", {"traceparent": caller}, path="/notes/via-grpc")
            assert traced == untraced == by_grpc == 200
            found: dict[str, str] = {}
            deadline = time.monotonic() + 30  # the relay publishes within ms; a loaded machine may take seconds
            while time.monotonic() < deadline:
                found = asyncio.run(_traceparents(nats_server.url, "DEMO"))
                if {"traced", "untraced", "by-grpc"} <= set(found):
                    break
                time.sleep(0.1)
            # The caller's trace continues into the event; a request without one starts its own.
            assert found["traced"].split("-")[1] == trace_id, found
            assert found["untraced"].split("-")[1] not in (trace_id, "0" * 32), found
            assert found["by-grpc"].split("-")[1] == trace_id, found
        finally:
            end_process(proc)
