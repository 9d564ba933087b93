"""The operators' counters (kizuna.points.credited / kizuna.points.spent), read with the SDK's
in-memory reader from the service's own meter provider while it runs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kizuna.kit.testing import counter_values
from kizuna.points.v1 import points_pb2 as pb
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from .pointskit import Points, key


def counted(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """The counter's value per `service` attribute."""
    return counter_values(reader, name, "service", unit="{point}")


async def test_credits_and_captured_spends_are_counted_per_service_once_committed(
    points: Points, metric_reader: InMemoryMetricReader
) -> None:
    await points.register("m")
    await points.credit("m", 70, service="shop")
    # One key raced by parallel calls: one credit commits, the attempts that lost roll back.
    idem = key()
    await asyncio.gather(*(points.credit("m", 30, idem=idem, service="travel") for _ in range(10)))
    refused = pb.CreditRequest(member_id="m", amount=5, idempotency_key=key())  # no kind: refused
    with pytest.raises(grpc.aio.AioRpcError):
        await points.stub.Credit(refused, metadata=points.auth("fintech"))
    assert counted(metric_reader, "kizuna.points.credited") == {"shop": 70, "travel": 30}

    held = await points.reserve("m", 60, service="travel")
    assert counted(metric_reader, "kizuna.points.spent") == {}  # a hold is not a spend
    await points.capture(held.reservation_id, 45, service="travel")
    voided = await points.reserve("m", 10, service="shop")
    await points.stub.Void(
        pb.VoidRequest(reservation_id=voided.reservation_id, idempotency_key=key()), metadata=points.auth()
    )
    assert counted(metric_reader, "kizuna.points.spent") == {"travel": 45}
