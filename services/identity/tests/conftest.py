from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kizuna.kit.testing import split_from_module

from .identity_support import Idp, identity_settings, reset_streams, running_identity


@pytest.fixture
async def idp(nats_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[Idp]:
    """identity running in this process on a fresh database (SQLite and PostgreSQL)."""
    await reset_streams(nats_url, "IDENTITY")
    async with running_identity(identity_settings(nats_url, database_url, tmp_path)) as idp:
        yield idp


@pytest.fixture
async def idp_sqlite(nats_url: str, tmp_path: Path) -> AsyncIterator[Idp]:
    """identity on SQLite only, for tests where the storage engine does not matter."""
    await reset_streams(nats_url, "IDENTITY")
    url = f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}"
    async with running_identity(identity_settings(nats_url, url, tmp_path)) as idp:
        yield idp


def _by_database(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("database_url", "")) if callspec is not None else ""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A long file whose tests share no module fixture: one xdist unit per database.
    split_from_module(items, "services/identity/tests/test_security.py", _by_database)
