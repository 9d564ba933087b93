"""shop: the kit's web session table (member sign-in for the pages); members' refund requests.

Revision ID: shop_0003
Revises: shop_0002
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime
from kizuna.kit.oidc_client import create_web_session_table, drop_web_session_table

revision = "shop_0003"
down_revision = "shop_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_web_session_table()
    with op.batch_alter_table("shop_order") as batch:
        batch.add_column(sa.Column("refund_requested_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("refund_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("shop_order") as batch:
        batch.drop_column("refund_reason")
        batch.drop_column("refund_requested_at")
    drop_web_session_table()
