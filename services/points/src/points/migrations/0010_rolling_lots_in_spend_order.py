"""points: a member's live rolling lots in spend order (by id) from an index of their own, so that
Reserve reads the first few of them instead of sorting every live lot of the member.

Revision ID: points_0010
Revises: points_0009
"""

import sqlalchemy as sa
from alembic import op

revision = "points_0010"
down_revision = "points_0009"
branch_labels = None
depends_on = None

WHERE = "remaining > 0 AND rolling = true"


def upgrade() -> None:
    op.create_index(
        "ix_points_lot_live_rolling",
        "points_lot",
        ["member_id", "id"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_points_lot_live_rolling", table_name="points_lot")
