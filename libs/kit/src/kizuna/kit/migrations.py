"""Alembic migrations per service, with one shared environment in the kit.

A service keeps only its revision files (`<package>/migrations/*.py`); the kit supplies `env.py`,
so there is one way to migrate. The first revision of every service calls `create_kit_tables()`.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from kizuna.kit.db import UTCDateTime

_SCRIPT_LOCATION = Path(__file__).parent / "alembic"


def alembic_config(database_url: str, versions_dir: Path) -> Config:
    """An Alembic config for one service's database and revisions."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPT_LOCATION))
    cfg.set_main_option("version_locations", str(versions_dir))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, versions_dir: Path, revision: str = "head") -> None:
    """Bring the database to `revision` (blocking; run it in a thread from async code)."""
    command.upgrade(alembic_config(database_url, versions_dir), revision)


def create_kit_tables() -> None:
    """Create the outbox and inbox tables the kit's event path needs (call from a first revision)."""
    op.create_table(
        "kit_outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_kit_outbox_sent_at", "kit_outbox", ["sent_at"])
    op.create_table(
        "kit_inbox",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )


def drop_kit_tables() -> None:
    op.drop_table("kit_inbox")
    op.drop_index("ix_kit_outbox_sent_at", "kit_outbox")
    op.drop_table("kit_outbox")
