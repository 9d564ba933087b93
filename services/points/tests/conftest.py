"""Fixtures: points running in this process on a fresh database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from kizuna.kit.testing import TestIssuer, split_from_module
from kizuna.points.v1 import points_pb2_grpc
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


def _by_test(item: pytest.Item) -> str:
    return item.name


def _by_database(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("database_url", "")) if callspec is not None else ""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Long files whose tests share no module fixture: several xdist units, so none bounds the run.
    split_from_module(items, "services/points/tests/test_points_earning_order.py", _by_test)
    split_from_module(items, "services/points/tests/test_points_api.py", _by_database)
    split_from_module(items, "services/points/tests/test_points_events.py", _by_database)
