"""A gRPC port already served is refused to a second server: gRPC's default SO_REUSEPORT would
let two processes share one port and split its calls; only a supervisor's workers share a port."""

from __future__ import annotations

import pytest
from kizuna.kit.rpc import GrpcServer


async def test_a_second_server_cannot_bind_a_served_grpc_port() -> None:
    first, second = GrpcServer([]), GrpcServer([])
    port = first.bind("127.0.0.1", 0)
    await first.start()
    try:
        with pytest.raises(OSError, match=f"gRPC port {port} on 127.0.0.1 is busy"):
            second.bind("127.0.0.1", port)
    finally:
        await first.stop(0)
        await second.stop(0)


async def test_workers_of_one_supervisor_may_share_it() -> None:
    first, second = GrpcServer([], reuse_port=True), GrpcServer([], reuse_port=True)
    port = first.bind("127.0.0.1", 0)
    await first.start()
    try:
        assert second.bind("127.0.0.1", port) == port
    finally:
        await first.stop(0)
        await second.stop(0)
