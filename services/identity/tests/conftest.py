from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
