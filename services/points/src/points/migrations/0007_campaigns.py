"""points: campaigns as data (the admin API and `python -m points seed` create them).

Revision ID: points_0007
Revises: points_0006
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "points_0007"
down_revision = "points_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "points_campaign",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("services", sa.Text(), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("ends_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("points_expire_at", UTCDateTime(), nullable=False),
        sa.Column("multiplier", sa.Float(), nullable=False),
        sa.Column("fixed_bonus", sa.BigInteger(), nullable=False),
        sa.Column("audience", sa.String(20), nullable=False),
        sa.Column("new_member_days", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("points_campaign")
