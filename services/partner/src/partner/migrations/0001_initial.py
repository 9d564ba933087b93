"""partner: first revision (the kit's outbox, inbox and web sessions; partners, stores, cards,
code uses, till sales and returns).

Revision ID: partner_0001
Revises:
"""

from alembic import op
from kizuna.kit.migrations import create_kit_tables, drop_kit_tables
from kizuna.kit.oidc_client import create_web_session_table, drop_web_session_table
from partner import models  # noqa: F401  (registers the tables in SQLModel.metadata)
from sqlalchemy import MetaData
from sqlmodel import SQLModel

revision = "partner_0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables as this first revision created them (a copy, so later model changes need revisions).
_TABLES = ["partner_partner", "partner_store", "partner_card", "partner_code_use", "partner_sale", "partner_return"]


def _metadata() -> MetaData:
    metadata = MetaData()
    for name in _TABLES:
        SQLModel.metadata.tables[name].to_metadata(metadata)
    return metadata


def upgrade() -> None:
    create_kit_tables()
    create_web_session_table()
    _metadata().create_all(op.get_bind())


def downgrade() -> None:
    _metadata().drop_all(op.get_bind())
    drop_web_session_table()
    drop_kit_tables()
