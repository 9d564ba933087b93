"""points: a balance is read from the wallet row. The wallet keeps, beside `available`, how many of
those points are in limited-time lots (`limited_time`) and in rolling lots (`rolling_points`),
changed in the same transaction as every lot; partial indexes find a member's live fixed-date lots,
open reservations and pending earnings without reading the rest of their history.

Backfill: both sums from the lots, under the wallets' lock (the ledger's writers lock a wallet
before they change its lots).

Revision ID: points_0009
Revises: points_0008
"""

import sqlalchemy as sa
from alembic import op

revision = "points_0009"
down_revision = "points_0008"
branch_labels = None
depends_on = None


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


def upgrade() -> None:
    op.add_column("points_wallet", sa.Column("limited_time", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("points_wallet", sa.Column("rolling_points", sa.BigInteger(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE points_wallet IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        """
        UPDATE points_wallet SET
          limited_time = coalesce((SELECT sum(l.remaining) FROM points_lot l
            WHERE l.member_id = points_wallet.member_id AND l.kind = 'limited_time' AND l.remaining > 0), 0),
          rolling_points = coalesce((SELECT sum(l.remaining) FROM points_lot l
            WHERE l.member_id = points_wallet.member_id AND l.rolling AND l.remaining > 0), 0)
        """
    )
    _partial("ix_points_lot_live", "points_lot", ["member_id", "rolling", "expires_at"], "remaining > 0")
    _partial("ix_points_reservation_member_open", "points_reservation", ["member_id", "expires_at"], "status = 'open'")
    _partial("ix_points_pending_earn_member_pending", "points_pending_earn", ["member_id"], "status = 'pending'")


def downgrade() -> None:
    op.drop_index("ix_points_pending_earn_member_pending", table_name="points_pending_earn")
    op.drop_index("ix_points_reservation_member_open", table_name="points_reservation")
    op.drop_index("ix_points_lot_live", table_name="points_lot")
    op.drop_column("points_wallet", "rolling_points")
    op.drop_column("points_wallet", "limited_time")
