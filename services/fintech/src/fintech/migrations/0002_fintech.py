"""fintech: money ledger, cards, authorizations, statements, bank payments, funds, idempotency.

Revision ID: fintech_0002
Revises: fintech_0001
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "fintech_0002"
down_revision = "fintech_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fintech_account",
        sa.Column("account_id", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("floor_minor", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "fintech_authorization",
        sa.Column("authorization_id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("merchant_id", sa.String(length=100), nullable=False),
        sa.Column("merchant_name", sa.String(length=200), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("decline_reason", sa.String(length=30), nullable=False),
        sa.Column("fraud_rule", sa.String(length=60), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("authorization_id"),
    )
    op.create_index("ix_fintech_auth_card", "fintech_authorization", ["card_id", "status"], unique=False)
    op.create_table(
        "fintech_card",
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("pan_token", sa.String(length=64), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credit_limit_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("last_closed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("card_id"),
        sa.UniqueConstraint("pan_token"),
    )
    op.create_index("ix_fintech_card_member", "fintech_card", ["member_id"], unique=False)
    op.create_table(
        "fintech_card_txn",
        sa.Column("txn_id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("authorization_id", sa.String(length=40), nullable=False),
        sa.Column("purchase_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("statement_id", sa.String(length=40), nullable=True),
        sa.Column("posted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("txn_id"),
    )
    op.create_index("ix_fintech_card_txn_card", "fintech_card_txn", ["card_id", "posted_at"], unique=False)
    op.create_table(
        "fintech_entry",
        sa.Column("entry_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("ref", sa.String(length=120), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id"),
    )
    op.create_table(
        "fintech_fund",
        sa.Column("fund_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("base_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("volatility_bp", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("fund_id"),
    )
    op.create_table(
        "fintech_holding",
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("fund_id", sa.String(length=40), nullable=False),
        sa.Column("units_micro", sa.BigInteger(), nullable=False),
        sa.Column("cost_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "fund_id"),
    )
    op.create_table(
        "fintech_idempotency",
        sa.Column("scope", sa.String(length=160), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_table(
        "fintech_points_payment",
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("target_id", sa.String(length=40), nullable=False),
        sa.Column("bank_minor", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reservation_id", sa.String(length=60), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("failure", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("payment_id"),
    )
    op.create_table(
        "fintech_posting",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=120), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fintech_posting_account", "fintech_posting", ["account_id", "id"], unique=False)
    op.create_index(op.f("ix_fintech_posting_entry_id"), "fintech_posting", ["entry_id"], unique=False)
    op.create_table(
        "fintech_statement",
        sa.Column("statement_id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=100), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("closing_at", UTCDateTime(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("paid_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.PrimaryKeyConstraint("statement_id"),
    )
    op.create_index("ix_fintech_statement_card", "fintech_statement", ["card_id", "closing_at"], unique=False)


def downgrade() -> None:
    op.drop_table("fintech_statement")
    op.drop_table("fintech_posting")
    op.drop_table("fintech_points_payment")
    op.drop_table("fintech_idempotency")
    op.drop_table("fintech_holding")
    op.drop_table("fintech_fund")
    op.drop_table("fintech_entry")
    op.drop_table("fintech_card_txn")
    op.drop_table("fintech_card")
    op.drop_table("fintech_authorization")
    op.drop_table("fintech_account")
