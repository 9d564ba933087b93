"""gRPC floor benchmark (not a test): what Python's gRPC server alone costs per call on this machine,
beside points serving the same calls, in one run.

    .venv/bin/python -m bench.grpc_floor_bench [--seconds 10] [--rounds 2] [--no-h2load] [--no-node]
        [--servers floor-aio,floor-aio2,floor-sync,floor-kit,points,points2] [--baseline REV]

The servers answer `kizuna.points.v1.PointsService` GetBalance and Credit to the same 64 clients
as `points_bench.py` (eight channels, one connection each):
- `floor-aio`: a bare `grpc.aio` server on uvloop (the kit's loop) whose handlers return a constant
  response: no database, no token check, no interceptor, no event. Its calls per second and CPU per
  call are the most a Python grpcio service can do on this machine, whatever it does inside;
- `floor-aio2`: the same in two processes sharing the port (one per core, as `KIZUNA_WORKERS=2`);
- `floor-sync`: the same on grpcio's thread-pool server (16 threads), the other way grpcio serves;
- `floor-kit`: the same constants through the kit's gRPC server as every service has it (tracing,
  bounds, error mapping and the duration histogram, and the token check against the bench's
  issuer): what the kit costs per call before a service does anything;
- `points`: `python -m points` on PostgreSQL (1,000 wallets), as `points_bench.py` runs it;
- `points2`: the same from two worker processes (`KIZUNA_WORKERS=2`), on the same database.
`--baseline REV` adds `floor-kit` and `points` as of REV (the kit's, points' and this bench's
sources then), beside this tree's in the same rounds. Each server is its own process; the CPU per
call is that process's (user + system), the bench's clients are this process. GetBalance and
Credit are driven once more from Node (`bench/grpc_load.mjs`, 64 clients on 8 connections, a new
idempotency key per Credit), and GetBalance once more from h2load (Debian's nghttp2-client, C),
where installed: both clients cost less CPU per call than grpcio's, so more of the machine's two
cores is left to the server. Each round runs every server in turn, and every other round in the
opposite order: a machine that slows down slows all, and being first in a round favours none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc

from bench import points_bench
from bench.baseline import export_baseline
from bench.points_bench import CLIENTS, drive, drive_node, load, node_client_missing, settle
from bench.scratch import add_wallets, create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


class FloorServer:
    """A constant-answer gRPC server (`bench/floor_server.py`) in its own process group; reports
    the port it bound."""

    def __init__(self, kind: str, processes: int = 1, issuer: str = "", source: Path | None = None) -> None:
        self.kind = kind
        self.processes = processes
        self.issuer = issuer  # `kit` verifies tokens against it
        self.source = source  # the kit's sources of a baseline (`--baseline`), else this tree's
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> FloorServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_server", self.kind, str(self.processes), "0", self.issuer],
            cwd=self.source or ROOT,  # a baseline's own bench/floor_server.py
            env={**os.environ, **_sources(self.source, ())},
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError(f"the {self.kind} floor server did not start")
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its other processes too
            self.process.wait(timeout=10)


def _sources(source: Path | None, services: Sequence[str]) -> dict[str, str]:
    """The environment that imports the kit (and `services`) from `source`, if given."""
    if source is None:
        return {}
    paths = [source / "libs" / "kit" / "src", *(source / "services" / name / "src" for name in services)]
    return {"PYTHONPATH": os.pathsep.join(str(path) for path in paths)}


async def measure(
    label: str, address: str, pid: int, seconds: float, token: str, *, with_h2load: bool, with_node: bool
) -> None:
    metadata = call_metadata(token)
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]
    stubs = [points_pb2_grpc.PointsServiceStub(c) for c in channels]

    async def balance(i: int, n: int) -> None:
        member = points_bench.bench_member(i, n)
        await stubs[i % 8].GetBalance(pb.GetBalanceRequest(member_id=f"bench-{member}"), metadata=metadata, timeout=30)

    async def credit(i: int, n: int) -> None:
        await stubs[i % 8].Credit(points_bench.credit_request(i, n), metadata=metadata, timeout=30)

    try:
        for stub in stubs:  # connect every channel before the clock starts
            await stub.GetBalance(pb.GetBalanceRequest(member_id="bench-1"), metadata=metadata, timeout=30)
        await drive(f"{label}: GetBalance", seconds, balance, pid=pid)
        await drive(f"{label}: Credit", seconds, credit, pid=pid)
        # One call at a time (P5's single-client latency): what the server adds to a lone call.
        await drive(f"{label}: GetBalance (1 client)", seconds, balance, clients=1, pid=pid)
        if with_node:
            await drive_node(f"{label}: GetBalance (Node)", seconds, "balance", address, metadata, pid=pid)
            await drive_node(f"{label}: Credit (Node)", seconds, "credit", address, metadata, pid=pid)
        if with_h2load:
            await h2load_get_balance(label, address, pid, seconds, token)
    finally:
        for channel in channels:
            await channel.close()


async def warm_up(address: str, url: str, token: str) -> None:
    """Credit from 64 clients for two seconds, unmeasured, then ANALYZE and CHECKPOINT
    (`points_bench.warm_up`): each points process measured with its statements prepared and planned
    on tables that hold rows."""
    metadata = call_metadata(token)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)

        async def credit(i: int, n: int) -> None:
            await stub.Credit(points_bench.credit_request(i, n), metadata=metadata, timeout=30)

        await points_bench.warm_up(url, credit)


async def h2load_get_balance(label: str, address: str, pid: int, seconds: float, token: str) -> None:
    """GetBalance from h2load (nghttp2's HTTP/2 load generator, C): 8 connections x 8 streams = 64
    calls in flight, the same member each time. Its client costs a fraction of grpcio's, so more of
    the machine's two cores is left to the server. h2load cannot read gRPC's status (an error is an
    HTTP 200 whose trailers say so), so every answer's message is counted instead: a call that
    failed answers no message, and the data received must be one message per call."""
    request_file = _framed_request(pb.GetBalanceRequest(member_id="bench-1"))
    answer = await _one_balance(address, token)
    cpu_before = points_bench.cpu_seconds(pid)
    run = await asyncio.to_thread(
        subprocess.run,
        [
            "h2load",
            *("-D", str(int(seconds)), "-c", "8", "-m", "8", "-t", "1"),
            *("-d", str(request_file)),
            *("-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"authorization: Bearer {token}"),
            f"http://{address}/kizuna.points.v1.PointsService/GetBalance",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    cpu = points_bench.cpu_seconds(pid) - cpu_before
    await asyncio.to_thread(request_file.unlink)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", run.stdout).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", run.stdout).group(1))  # type: ignore[union-attr]
    data = int(re.search(r"\((\d+)\) data", run.stdout).group(1))  # type: ignore[union-attr]
    answered = data // (5 + answer) if answer else 0
    per_call = cpu / done * 1000 if done else float("nan")
    print(
        f"{label + ': GetBalance (h2load)':<34} {rate:8.0f} ops/s  answered {answered}/{done}  "
        f"server CPU {cpu / seconds:4.2f} cores, {per_call:5.2f} ms/call  ({load()} after)",
        flush=True,
    )


def _framed_request(message: Any) -> Path:
    """A file holding one gRPC message as it goes on the wire: uncompressed flag, length, message."""
    body = message.SerializeToString()
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as request_file:
        request_file.write(b"\0" + len(body).to_bytes(4, "big") + body)
    return Path(request_file.name)


async def _one_balance(address: str, token: str) -> int:
    """One GetBalance through grpcio: the size of its answer's message (the call must succeed)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)
        answer = await stub.GetBalance(
            pb.GetBalanceRequest(member_id="bench-1"), metadata=call_metadata(token), timeout=30
        )
    return int(answer.ByteSize())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", default="floor-aio,floor-aio2,floor-sync,floor-kit,points,points2")
    parser.add_argument("--no-h2load", action="store_true", help="no h2load phase (Debian nghttp2-client)")
    parser.add_argument("--no-node", action="store_true", help="no Node phases (bench/grpc_load.mjs)")
    parser.add_argument("--baseline", metavar="REV", help="also floor-kit and points (and the kit) as of REV")
    args = parser.parse_args()
    servers = args.servers.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="grpc-floor-bench-"))
    baseline = None
    if args.baseline:
        baseline = export_baseline(args.baseline, workdir / "baseline", "points", "bench")
        servers += [f"{kind}@{args.baseline}" for kind in ("floor-kit", "points") if kind in servers]
    name, url = await create_database("grpc_floor")
    nats_server = NatsServer(free_port(), workdir / "nats").start()
    issuer = TestIssuer().start()
    # `points2`: the same service from two worker processes (`KIZUNA_WORKERS=2`), same database.
    pointses = {
        kind: ServiceProcess(
            "points",
            {
                "NATS_URL": nats_server.url,
                "KIZUNA_ISSUER": issuer.issuer,
                "DATABASE_URL": url,
                "KIZUNA_DATA_DIR": str(workdir / kind),
                "LOG_LEVEL": "ERROR",
                "LOG_FORMAT": "text",
                "EXPIRY_INTERVAL_SECONDS": "3600",
                "KIZUNA_WORKERS": "2" if kind == "points2" else "1",
                **_sources(baseline if "@" in kind else None, ("points",)),
            },
            free_port(),
            free_port(),
            workdir / f"{kind}.log",
        )
        for kind in servers
        if kind.startswith("points")
    }
    floors = {
        kind: FloorServer(
            kind.removeprefix("floor-").partition("@")[0].rstrip("2"),
            2 if kind.endswith("2") else 1,
            issuer.issuer,
            baseline if "@" in kind else None,
        )
        for kind in servers
        if kind.startswith("floor-")
    }
    try:
        for floor in floors.values():
            floor.start()
        for service in pointses.values():
            service.start(timeout=60)
        if pointses:
            await add_wallets(url, 1000, available=1200)
            token = issuer.service_token("shop", "points:credit points:spend points:read")
            for service in pointses.values():
                await warm_up(service.grpc_address, url, token)
        clients = {
            "with_h2load": shutil.which("h2load") is not None and not args.no_h2load,
            "with_node": not node_client_missing() and not args.no_node,
        }
        print(f"{CLIENTS} concurrent clients, {args.seconds:.0f}s per phase; {load()} at the start", flush=True)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}", flush=True)
            if pointses:
                await settle(url)  # analyzed as autovacuum would, on the rows the last round added
            # Every other round in the opposite order: the first server of a round measured up to
            # 20% slower than the one after it, whichever it was (bench/README.md).
            for kind in servers if round_ % 2 else servers[::-1]:
                # Minted per server: a round outlasts a test token's lifetime.
                token = issuer.service_token("shop", "points:credit points:spend points:read")
                if kind in pointses:
                    service = pointses[kind]
                    assert service.process is not None
                    await measure(kind, service.grpc_address, service.process.pid, args.seconds, token, **clients)
                else:
                    floor = floors[kind]
                    assert floor.process is not None
                    await measure(kind, floor.address, floor.process.pid, args.seconds, token, **clients)
                await asyncio.sleep(1)
    finally:
        for floor in floors.values():
            floor.stop()
        for service in pointses.values():
            service.stop()
        issuer.stop()
        nats_server.stop()
        await drop_database(name)
        if sys.exc_info()[0] is None:  # a failed run keeps its servers' logs
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
