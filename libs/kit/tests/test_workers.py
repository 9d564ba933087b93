"""KIZUNA_WORKERS=N: a supervisor and N worker processes serving one service on shared ports."""

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
from kizuna.identity.v1 import identity_pb2, identity_pb2_grpc
from kizuna.kit.testing import NatsServer, end_process, reset_streams, spawn

from .demo.process import demo_env, wait_for_ports


def _demo_env(tmp_path: Path, nats_url: str, ports_file: Path, workers: int) -> dict[str, str]:
    return demo_env(
        tmp_path, nats_url, ports_file, KIZUNA_WORKERS=str(workers), SHUTDOWN_GRACE_SECONDS="8", LOG_FORMAT="text"
    )


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _established_on(port: int) -> dict[int, int]:
    """Established connections accepted on `port` (IPv4 loopback), by socket inode."""
    found: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                found[int(fields[9])] = local_port
    return found


SLOW_CALLS = 16


def _exited(pid: int) -> bool:
    """Whether the process has ended (gone, or a zombie whose sockets are closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _holders(pids: set[int], port: int) -> dict[int, int]:
    """How many of the connections accepted on `port` each process holds."""
    inodes = _established_on(port)
    counts = {}
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                held += 1
        counts[pid] = held
    return counts


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_two_workers_share_the_ports_drain_on_sigterm_and_a_killed_one_is_replaced(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    asyncio.run(reset_streams(nats_server.url, "DEMO"))
    ports_file = tmp_path / "ports.json"
    log_path = tmp_path / "demo.log"
    log = log_path.open("w")
    proc = spawn(
        [sys.executable, "-m", "demo.service"],
        env=_demo_env(tmp_path, nats_server.url, ports_file, 2),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ports = wait_for_ports(ports_file, proc, log_path)
        http_port, grpc_port = ports["http"], ports["grpc"]
        # Port 0 became one real port for both: the supervisor reported it once both were ready.
        assert http_port != 0 and grpc_port != 0
        workers = _children(proc.pid)
        assert len(workers) == 2, log_path.read_text()

        # Both workers accept HTTP connections on the one port (16 connections, each its own).
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) for _ in range(16)]
        try:
            for client in clients:
                assert client.get("/readyz").status_code == 200
            held = _holders(workers, http_port)
            assert sum(held.values()) == 16
            assert all(count > 0 for count in held.values()), held
        finally:
            for client in clients:
                client.close()

        # A worker killed outright is replaced; the service keeps answering meanwhile and after.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        # Until it has exited, the kernel may still hand it a new connection, which its death then
        # resets (each worker listens on its own SO_REUSEPORT socket); from then on, new ones go to
        # the other worker.
        deadline = time.monotonic() + 10
        while not _exited(killed):
            assert time.monotonic() < deadline, f"worker {killed} still runs after SIGKILL"
            time.sleep(0.01)
        deadline = time.monotonic() + 60
        while True:
            current = _children(proc.pid)
            if len(current) == 2 and killed not in current:
                break
            assert time.monotonic() < deadline, log_path.read_text()
            with httpx.Client(timeout=10) as fresh:
                assert fresh.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            time.sleep(0.2)
        workers = current
        deadline = time.monotonic() + 60
        while "worker ready" not in log_path.read_text().split("worker exited; starting a new one", 1)[-1]:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)

        async def scenario() -> tuple[list[str], dict[int, int], int | None]:
            # Slow calls over sixteen connections (a channel each, not gRPC's shared subchannels):
            # both workers hold some when SIGTERM comes. The kernel spreads connections over the two
            # at random: with eight, all went to one worker about once in 128 runs.
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(SLOW_CALLS)
            ]
            try:
                calls = [
                    asyncio.ensure_future(
                        identity_pb2_grpc.IdentityServiceStub(channel).GetMember(
                            identity_pb2.GetMemberRequest(member_id=f"slow:4:{i}"), timeout=30
                        )
                    )
                    for i, channel in enumerate(channels)
                ]
                deadline = time.monotonic() + 3
                held = _holders(workers, grpc_port)
                while sum(held.values()) < SLOW_CALLS and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    held = _holders(workers, grpc_port)
                proc.send_signal(signal.SIGTERM)
                replies = await asyncio.gather(*calls)
                code = await asyncio.to_thread(proc.wait, 30)
            finally:
                for channel in channels:
                    await channel.close()
            return [r.member.member_id for r in replies], held, code

        ids, held, code = asyncio.run(scenario())
        assert all(count > 0 for count in held.values()), held
        # Every in-flight call on either worker finished; the supervisor exited 0 after both.
        assert sorted(ids) == sorted(f"slow:4:{i}" for i in range(SLOW_CALLS))
        assert code == 0, log_path.read_text()
        assert not any(_alive(pid) for pid in workers)
        assert _port_is_free(http_port)
    finally:
        end_process(proc)
        log.close()


def test_workers_refuse_a_busy_port_naming_it(tmp_path: Path, nats_server: NatsServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**_demo_env(tmp_path, nats_server.url, tmp_path / "ports.json", 2), "HTTP_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "demo.service"], env=env, capture_output=True, text=True, timeout=90
        )
    assert result.returncode != 0
    assert f"http port {port} on 127.0.0.1 is already in use" in result.stderr


def test_a_worker_that_cannot_start_stops_the_service_with_its_exit_code(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # Three stream replicas on a one-server NATS: every worker would fail alike at start, so the
    # first failure ends the service instead of a restart loop.
    env = {**_demo_env(tmp_path, nats_server.url, tmp_path / "ports.json", 2), "STREAM_REPLICAS": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "demo.service"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "worker failed to start; stopping" in result.stdout + result.stderr
    assert not (tmp_path / "ports.json").exists()
