"""points: the ledger (wallets, entries, postings, lots, reservations, holds, idempotency, earning).

Revision ID: points_0002
Revises: points_0001
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "points_0002"
down_revision = "points_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "points_entry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("source_service", sa.String(length=100), nullable=False),
        sa.Column("source_ref", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("entry_id"),
    )
    op.create_index("ix_points_entry_created", "points_entry", ["created_at"], unique=False)
    op.create_index("ix_points_entry_member", "points_entry", ["member_id", "id"], unique=False)
    op.create_index("ix_points_entry_source", "points_entry", ["source_service", "source_ref"], unique=False)
    op.create_table(
        "points_hold",
        sa.Column("reservation_pk", sa.Integer(), nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("reservation_pk", "lot_id"),
    )
    op.create_table(
        "points_idempotency",
        sa.Column("caller", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("caller", "key"),
    )
    op.create_table(
        "points_lot",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("entry_pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rolling", sa.Boolean(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("clawed_back", sa.BigInteger(), nullable=False),
        sa.Column("source_service", sa.String(length=100), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_points_lot_entry_pk"), "points_lot", ["entry_pk"], unique=False)
    op.create_index(op.f("ix_points_lot_expires_at"), "points_lot", ["expires_at"], unique=False)
    op.create_index(op.f("ix_points_lot_member_id"), "points_lot", ["member_id"], unique=False)
    op.create_table(
        "points_pending_earn",
        sa.Column("source_service", sa.String(length=100), nullable=False),
        sa.Column("source_ref", sa.String(length=200), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("purchase_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("regular", sa.BigInteger(), nullable=False),
        sa.Column("bonus", sa.BigInteger(), nullable=False),
        sa.Column("bonus_expires_at", UTCDateTime(), nullable=True),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source_service", "source_ref"),
    )
    op.create_index(op.f("ix_points_pending_earn_member_id"), "points_pending_earn", ["member_id"], unique=False)
    op.create_table(
        "points_posting",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_pk", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_points_posting_account", "points_posting", ["account"], unique=False)
    op.create_index(op.f("ix_points_posting_entry_pk"), "points_posting", ["entry_pk"], unique=False)
    op.create_table(
        "points_reservation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("caller", sa.String(length=100), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source_service", sa.String(length=100), nullable=False),
        sa.Column("source_ref", sa.String(length=200), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("capture_entry_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("capture_entry_id"),
        sa.UniqueConstraint("reservation_id"),
    )
    op.create_index(op.f("ix_points_reservation_member_id"), "points_reservation", ["member_id"], unique=False)
    op.create_index("ix_points_reservation_open", "points_reservation", ["status", "expires_at"], unique=False)
    op.create_table(
        "points_service_use",
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("service", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "month", "service"),
    )
    op.create_table(
        "points_wallet",
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("debt", sa.BigInteger(), nullable=False),
        sa.Column("earn_month", sa.String(length=7), nullable=False),
        sa.Column("earned_this_month", sa.BigInteger(), nullable=False),
        sa.Column("last_earned_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("member_id"),
    )


def downgrade() -> None:
    op.drop_table("points_wallet")
    op.drop_table("points_service_use")
    op.drop_table("points_reservation")
    op.drop_table("points_posting")
    op.drop_table("points_pending_earn")
    op.drop_table("points_lot")
    op.drop_table("points_idempotency")
    op.drop_table("points_hold")
    op.drop_table("points_entry")
