"""points: the rolling expiry is kept once per member (points_wallet.rolling_expires_at) instead of
being rewritten on every regular lot at each credit, so a credit costs the same whatever the
member's history.

A rolling lot (points_lot.rolling) expires at its wallet's rolling_expires_at; its own expires_at
keeps the expiry it had when it was credited. Backfill: each wallet takes the latest expiry of its
rolling lots (every rolling lot not yet expired carries it, since each credit moved them all); a
rolling lot whose expiry is earlier than that had lapsed before the last credit and keeps its own
date as a fixed one.

Revision ID: points_0008
Revises: points_0007
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "points_0008"
down_revision = "points_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("points_wallet", sa.Column("rolling_expires_at", UTCDateTime(), nullable=True))
    op.create_index("ix_points_wallet_rolling_expires_at", "points_wallet", ["rolling_expires_at"])
    op.create_index(
        "ix_points_lot_member_rolling",
        "points_lot",
        ["member_id", "rolling", "expires_at"],
    )
    op.execute(
        """
        UPDATE points_wallet SET rolling_expires_at = (
            SELECT max(l.expires_at) FROM points_lot l
            WHERE l.member_id = points_wallet.member_id AND l.rolling)
        """
    )
    op.execute(
        """
        UPDATE points_lot SET rolling = false
        WHERE rolling AND expires_at < (
            SELECT w.rolling_expires_at FROM points_wallet w WHERE w.member_id = points_lot.member_id)
        """
    )


def downgrade() -> None:
    # Every rolling lot takes its wallet's rolling expiry again.
    op.execute(
        """
        UPDATE points_lot SET expires_at = (
            SELECT w.rolling_expires_at FROM points_wallet w WHERE w.member_id = points_lot.member_id)
        WHERE rolling
        """
    )
    op.drop_index("ix_points_lot_member_rolling", table_name="points_lot")
    op.drop_index("ix_points_wallet_rolling_expires_at", table_name="points_wallet")
    op.drop_column("points_wallet", "rolling_expires_at")
