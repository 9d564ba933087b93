"""The operators' counters (kizuna.points.credited / kizuna.points.spent), read with the SDK's
in-memory reader from the service's own meter provider while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from kizuna.points.v1 import points_pb2 as pb
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from .pointskit import Points, key


@pytest.fixture
def metric_reader(points: Points) -> Iterator[InMemoryMetricReader]:
    provider = metrics.get_meter_provider()
    assert isinstance(provider, MeterProvider), "the kit installs the SDK meter provider when a service starts"
    reader = InMemoryMetricReader()
    provider.add_metric_reader(reader)
    yield reader
    provider.remove_metric_reader(reader)


def counted(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """The counter's value per `service` attribute."""
    values: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                assert metric.unit == "{point}"
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint) and point.attributes is not None, (
                        "a counter's point is a number with attributes"
                    )
                    service = str(point.attributes["service"])
                    values[service] = values.get(service, 0) + int(point.value)
    return values


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
