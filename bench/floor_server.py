"""A gRPC server that answers points' GetBalance and Credit with a constant and does nothing else:
the floor `grpc_floor_bench.py` measures (not a test, not a service).

    python -m bench.floor_server aio|sync PROCESSES PORT
    python -m bench.floor_server kit 1 PORT ISSUER

It binds 127.0.0.1:PORT (0: a free one), starts its other processes on the same port (aio only;
gRPC sets SO_REUSEPORT, so the kernel spreads the connections, as among the kit's worker
processes), then prints the port once all of them serve. `kit` serves the same constants through
the kit's own gRPC server as every service has it (`rpc.GrpcServer`: tracing, error mapping,
bounds and the duration histogram, health, reflection) with token verification against ISSUER
(`auth.authorized`), after the kit's telemetry setup: the kit's per-call cost without points.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from typing import Any

import grpc
import uvloop
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.rpc import GrpcServer
from kizuna.kit.telemetry import configure_telemetry
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc

BALANCE = pb.GetBalanceResponse(total=1200, regular=1200)
CREDITED = pb.CreditResponse(entry_id="e" * 32, balance_after=1300)


# Two methods only (the stubs mark the rest abstract): any other answers UNIMPLEMENTED.
class AsyncFloor(points_pb2_grpc.PointsServiceServicer):
    async def GetBalance(self, request: Any, context: Any) -> pb.GetBalanceResponse:
        return BALANCE

    async def Credit(self, request: Any, context: Any) -> pb.CreditResponse:
        return CREDITED


class ThreadFloor(points_pb2_grpc.PointsServiceServicer):
    def GetBalance(self, request: Any, context: Any) -> pb.GetBalanceResponse:
        return BALANCE

    def Credit(self, request: Any, context: Any) -> pb.CreditResponse:
        return CREDITED


async def serve_aio(processes: int, port: int) -> None:
    server = grpc.aio.server()
    points_pb2_grpc.add_PointsServiceServicer_to_server(AsyncFloor(), server)  # type: ignore[abstract]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _start_others(processes - 1, bound)
    print(bound, flush=True)
    await server.wait_for_termination()


def _start_others(count: int, port: int) -> None:
    """`count` more processes serving `port`, each started once it says so."""
    others = [
        subprocess.Popen([sys.executable, "-m", "bench.floor_server", "aio", "1", str(port)], stdout=subprocess.PIPE)
        for _ in range(count)
    ]
    for other in others:
        assert other.stdout is not None
        other.stdout.readline()  # it serves


async def serve_kit(port: int, issuer: str) -> None:
    configure_telemetry("floor")
    verifier = TokenVerifier(issuer)
    await verifier.refresh_keys(force=True)
    server = GrpcServer(
        [(points_pb2_grpc.add_PointsServiceServicer_to_server, AsyncFloor())],  # type: ignore[abstract]
        verifier=verifier,
    )
    bound = server.bind("127.0.0.1", port)
    await server.start()
    await server.set_serving(True)
    print(bound, flush=True)
    await server.server.wait_for_termination()


def serve_threads(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    points_pb2_grpc.add_PointsServiceServicer_to_server(ThreadFloor(), server)  # type: ignore[abstract]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(bound, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    kind, processes, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if kind == "aio":
        uvloop.run(serve_aio(processes, port))
    elif kind == "kit":
        uvloop.run(serve_kit(port, sys.argv[4]))
    else:
        serve_threads(port)
