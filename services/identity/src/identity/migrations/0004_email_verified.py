"""identity: when the member proved they own their current email address.

Revision ID: identity_0004
Revises: identity_0003
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "identity_0004"
down_revision = "identity_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_member") as batch:
        batch.add_column(sa.Column("email_verified_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_member") as batch:
        batch.drop_column("email_verified_at")
