"""identity: when a rotated refresh token used its one grace-period reuse.

Revision ID: identity_0005
Revises: identity_0004
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "identity_0005"
down_revision = "identity_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_refresh_token") as batch:
        batch.add_column(sa.Column("grace_used_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_refresh_token") as batch:
        batch.drop_column("grace_used_at")
