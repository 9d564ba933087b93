"""travel: catalogue, nightly inventory and bookings.

Revision ID: travel_0002
Revises: travel_0001
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "travel_0002"
down_revision = "travel_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "travel_hotel",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("city", sa.String(40), nullable=False, index=True),
        sa.Column("city_name", sa.String(80), nullable=False),
        sa.Column("area", sa.String(120), nullable=False),
        sa.Column("address", sa.String(300), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
    )
    op.create_table(
        "travel_room_type",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("hotel_id", sa.String(64), sa.ForeignKey("travel_hotel.id"), nullable=False, index=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("max_guests", sa.Integer(), nullable=False),
        sa.Column("rooms", sa.Integer(), nullable=False),
        sa.Column("base_rate_minor", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
    )
    op.create_table(
        "travel_rate_plan",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("hotel_id", sa.String(64), sa.ForeignKey("travel_hotel.id"), nullable=False, index=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("price_bp", sa.Integer(), nullable=False),
        sa.Column("refundable", sa.Boolean(), nullable=False),
        sa.Column("free_cancel_days", sa.Integer(), nullable=False),
        sa.Column("penalty_bp", sa.Integer(), nullable=False),
        sa.Column("breakfast", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "travel_inventory",
        sa.Column("room_type_id", sa.String(80), sa.ForeignKey("travel_room_type.id"), primary_key=True),
        sa.Column("night", sa.Date(), primary_key=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("sold", sa.Integer(), nullable=False),
        sa.Column("rate_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("held >= 0 AND sold >= 0 AND held + sold <= total", name="ck_travel_inventory_no_oversell"),
    )
    op.create_table(
        "travel_booking",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("member_id", sa.String(64), nullable=False, index=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("hotel_id", sa.String(64), nullable=False),
        sa.Column("room_type_id", sa.String(80), nullable=False),
        sa.Column("rate_plan_id", sa.String(80), nullable=False),
        sa.Column("check_in", sa.Date(), nullable=False),
        sa.Column("check_out", sa.Date(), nullable=False),
        sa.Column("guests", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("points_used", sa.BigInteger(), nullable=False),
        sa.Column("card_amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("refundable", sa.Boolean(), nullable=False),
        sa.Column("free_cancel_days", sa.Integer(), nullable=False),
        sa.Column("penalty_bp", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("step", sa.String(30), nullable=False),
        sa.Column("failure_reason", sa.String(500), nullable=False),
        sa.Column("points_reservation_id", sa.String(80), nullable=False),
        sa.Column("points_captured", sa.Boolean(), nullable=False),
        sa.Column("card_authorization_id", sa.String(80), nullable=False),
        sa.Column("card_capture_id", sa.String(80), nullable=False),
        sa.Column("penalty_minor", sa.BigInteger(), nullable=False),
        sa.Column("card_refund_minor", sa.BigInteger(), nullable=False),
        sa.Column("points_refund", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False, index=True),
        sa.UniqueConstraint("member_id", "idempotency_key", name="uq_travel_booking_member_key"),
    )


def downgrade() -> None:
    op.drop_table("travel_booking")
    op.drop_table("travel_inventory")
    op.drop_table("travel_rate_plan")
    op.drop_table("travel_room_type")
    op.drop_table("travel_hotel")
