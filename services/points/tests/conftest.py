"""Fixtures: points running in this process on a fresh database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from kizuna.kit.testing import TestIssuer, reading_metrics
from kizuna.points.v1 import points_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from points.service import service

from .pointskit import Points, points_settings, reset_streams


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def points(
    nats_url: str, database_url: str, test_issuer: TestIssuer, settings_overrides: dict[str, Any]
) -> AsyncIterator[Points]:
    """Points on a fresh database; after the test, the ledger's audit must pass."""
    await reset_streams(nats_url, "POINTS", "SHOP", "TRAVEL", "FINTECH", "IDENTITY", "DEADLETTER")
    settings = points_settings(nats_url, database_url, test_issuer.issuer, **settings_overrides)
    async with service.running(settings) as runtime:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            p = Points(runtime, points_pb2_grpc.PointsServiceStub(channel), test_issuer)
            yield p
            report = await p.audit()
            assert report.ok, report.problems


@pytest.fixture
def metric_reader(points: Points) -> Iterator[InMemoryMetricReader]:
    """What the meters of points (running in this process) record during the test."""
    with reading_metrics() as reader:
        yield reader
