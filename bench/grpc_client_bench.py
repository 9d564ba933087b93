"""gRPC client benchmark (not a test): what a caller's channel costs it per unary call, with the kit's
tracing interceptors (`rpc.client_tracing_interceptors`, as `rpc.client_channel` builds them),
with OpenTelemetry's own client interceptors, and with none, in alternating rounds, while nothing
is exported (no OTLP endpoint: the way a service runs without a collector).

    .venv/bin/python -m bench.grpc_client_bench [--seconds 3] [--rounds 5] [--clients 1]

The server is the constant-answer thread-pool server (`bench/floor_server.py sync`) in its own
process; the measure is this process's CPU time per answered GetBalance (user + system), which a
shared machine moves less than calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import uvloop
from kizuna.kit import rpc
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc
from opentelemetry.instrumentation import grpc as grpc_instrumentation

ROOT = Path(__file__).resolve().parent.parent
REQUEST = pb.GetBalanceRequest(member_id="bench-1")
METADATA = (("authorization", "Bearer bench"),)

CHOICES: dict[str, Callable[[], list[grpc.aio.ClientInterceptor]]] = {
    "kit": rpc.client_tracing_interceptors,
    "opentelemetry": grpc_instrumentation.aio_client_interceptors,
    "none": list,
}


async def measure(address: str, interceptors: list[grpc.aio.ClientInterceptor], seconds: float, clients: int) -> str:
    channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
    stub = points_pb2_grpc.PointsServiceStub(channel)
    try:
        await stub.GetBalance(REQUEST, metadata=METADATA, timeout=10)  # connected before the clock starts
        answered = 0
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal answered
            while time.perf_counter() < stop:
                await stub.GetBalance(REQUEST, metadata=METADATA, timeout=10)
                answered += 1

        began, cpu_before = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_before
        return f"{answered / elapsed:7.0f} calls/s  client CPU {cpu / answered * 1000:.3f} ms/call"
    finally:
        await channel.close()


async def rounds(address: str, seconds: float, count: int, clients: int) -> None:
    print(f"{clients} client(s), {seconds:.0f}s per phase; load {os.getloadavg()[0]:.1f} at the start")
    for round_ in range(1, count + 1):
        for name, interceptors in CHOICES.items():
            result = await measure(address, interceptors(), seconds, clients)
            print(f"round {round_}  {name:<14} {result}", flush=True)
    print(f"load {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.floor_server", "sync", "1", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        address = f"127.0.0.1:{server.stdout.readline().strip()}"
        uvloop.run(rounds(address, args.seconds, args.rounds, args.clients))
    finally:
        server.kill()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
