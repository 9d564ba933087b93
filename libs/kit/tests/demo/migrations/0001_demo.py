"""demo tables

Revision ID: demo_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.migrations import create_kit_tables

revision = "demo_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_kit_tables()
    op.create_table(
        "demo_note", sa.Column("id", sa.Integer, primary_key=True), sa.Column("text", sa.String, nullable=False)
    )
    op.create_table(
        "demo_effect",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("text", sa.String, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("demo_effect")
    op.drop_table("demo_note")
