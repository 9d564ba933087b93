"""identity: account erasure and its per-service progress; back-channel logout deliveries (retried).

Revision ID: identity_0003
Revises: identity_0002
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "identity_0003"
down_revision = "identity_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_member") as batch:
        batch.add_column(sa.Column("erased_at", UTCDateTime(), nullable=True))
    op.create_table(
        "identity_erasure",
        sa.Column("member_id", sa.String(40), primary_key=True),
        # SHA-256 of the unguessable progress link shown once at deletion.
        sa.Column("link_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "identity_erasure_progress",
        sa.Column("member_id", sa.String(40), primary_key=True),
        sa.Column("service", sa.String(100), primary_key=True),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "identity_backchannel_delivery",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("member_id", sa.String(40), nullable=False),
        sa.Column("sid", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("abandoned_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("identity_backchannel_delivery")
    op.drop_table("identity_erasure_progress")
    op.drop_table("identity_erasure")
    with op.batch_alter_table("identity_member") as batch:
        batch.drop_column("erased_at")
