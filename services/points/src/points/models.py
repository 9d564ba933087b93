"""The ledger's tables: member wallets (balance rows and the lock per member), journal entries and
their postings, lots, reservations with their per-lot holds, idempotency records, earn tracking.

Accounts are named by string (`member:<id>:available`, `member:<id>:held`, `member:<id>:debt`,
`issued:<service>`, `redeemed:<service>`, `expired`); postings reference them by name. Member
accounts keep a balance row (the wallet) updated in the same transaction as their postings; the
per-service accounts are summed from postings when needed, so that no single hot row serializes
every credit of a busy service.
"""

from __future__ import annotations

from datetime import datetime

from kizuna.kit.db import UTCDateTime
from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, LargeBinary, String, Text, false, text
from sqlmodel import Field, SQLModel


def account_available(member_id: str) -> str:
    return f"member:{member_id}:available"


def account_held(member_id: str) -> str:
    return f"member:{member_id}:held"


def account_debt(member_id: str) -> str:
    return f"member:{member_id}:debt"


def account_issued(service: str) -> str:
    return f"issued:{service}"


def account_redeemed(service: str) -> str:
    return f"redeemed:{service}"


ACCOUNT_EXPIRED = "expired"


class Wallet(SQLModel, table=True):
    """One row per member: the balances of the member's three accounts, and the row every
    change to the member's points locks first (`SELECT ... FOR UPDATE`)."""

    __tablename__ = "points_wallet"

    member_id: str = Field(sa_column=Column(String(100), primary_key=True))
    status: str = Field(sa_column=Column(String(20), nullable=False))  # active | erased
    available: int = Field(sa_column=Column(BigInteger, nullable=False))
    held: int = Field(sa_column=Column(BigInteger, nullable=False))
    # What the member owes (>= 0); the debt account's balance is its negative.
    debt: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Earn cap bookkeeping: points earned by earn rules in `earn_month` (YYYY-MM).
    earn_month: str = Field(sa_column=Column(String(7), nullable=False))
    earned_this_month: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_earned_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # When the member's rolling lots expire: moved by each credit, once here rather than on every
    # lot; None until the first credit.
    rolling_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # Of `available`, the points in limited-time lots and in rolling lots: changed with every lot's
    # remaining points, in the same transaction, so that a balance is read from this row (the audit
    # checks both against the lots).
    limited_time: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    rolling_points: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


def _partial(name: str, *columns: str, where: str) -> Index:
    """An index of the rows `where` holds only (PostgreSQL and SQLite): lookups of live rows that
    do not grow with a member's history. Queries using it spell `where` with literals, not bind
    parameters, so that a prepared statement's generic plan can use it too."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class Entry(SQLModel, table=True):
    """A journal entry: immutable once written; its postings sum to zero."""

    __tablename__ = "points_entry"
    __table_args__ = (
        Index("ix_points_entry_member", "member_id", "id"),
        Index("ix_points_entry_source", "source_service", "source_ref"),
        Index("ix_points_entry_created", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    entry_id: str = Field(sa_column=Column(String(40), unique=True, nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    # credit | spend | refund | clawback | expiry, and the internal hold | release
    kind: str = Field(sa_column=Column(String(20), nullable=False))
    # The signed change to the member's total + pending - debt.
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    explanation: str = Field(sa_column=Column(Text, nullable=False))
    source_service: str = Field(sa_column=Column(String(100), nullable=False))
    source_ref: str = Field(sa_column=Column(String(200), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Posting(SQLModel, table=True):
    __tablename__ = "points_posting"
    __table_args__ = (Index("ix_points_posting_account", "account"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    entry_pk: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    account: str = Field(sa_column=Column(String(200), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))


class Lot(SQLModel, table=True):
    """The points one credit gave, and how many of them the member still has (`remaining`)."""

    __tablename__ = "points_lot"
    # Due and live lots of one member without reading the rest of their history.
    __table_args__ = (
        Index("ix_points_lot_member_rolling", "member_id", "rolling", "expires_at"),
        _partial("ix_points_lot_live", "member_id", "rolling", "expires_at", where="remaining > 0"),
        # A member's live rolling lots in spend order (they share the wallet's rolling expiry).
        _partial("ix_points_lot_live_rolling", "member_id", "id", where="remaining > 0 AND rolling = true"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    entry_pk: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    kind: str = Field(sa_column=Column(String(20), nullable=False))  # regular | limited_time
    # Regular lots without a fixed date follow the member's rolling expiry
    # (points_wallet.rolling_expires_at, moved on each credit); expires_at then keeps the expiry
    # the lot had when it was credited, and `lot_expiry` gives the one in force.
    rolling: bool = Field(nullable=False)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    remaining: int = Field(sa_column=Column(BigInteger, nullable=False))
    clawed_back: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Points of this lot that expired (a clawback does not take them back again).
    expired: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    source_service: str = Field(sa_column=Column(String(100), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


def lot_expiry(rolling: bool, expires_at: datetime, rolling_expires_at: datetime | None) -> datetime:
    """When a lot expires: its wallet's rolling expiry for a rolling lot, else its own date."""
    return rolling_expires_at if rolling and rolling_expires_at is not None else expires_at


class Reservation(SQLModel, table=True):
    __tablename__ = "points_reservation"
    __table_args__ = (
        Index("ix_points_reservation_open", "status", "expires_at"),
        _partial("ix_points_reservation_member_open", "member_id", "expires_at", where="status = 'open'"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    reservation_id: str = Field(sa_column=Column(String(40), unique=True, nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    caller: str = Field(sa_column=Column(String(100), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(sa_column=Column(String(20), nullable=False))  # open|captured|voided|timed_out
    reason: str = Field(sa_column=Column(Text, nullable=False))
    source_service: str = Field(sa_column=Column(String(100), nullable=False))
    source_ref: str = Field(sa_column=Column(String(200), nullable=False))
    captured: int = Field(sa_column=Column(BigInteger, nullable=False))
    refunded: int = Field(sa_column=Column(BigInteger, nullable=False))  # incl. expired, not returned
    capture_entry_id: str | None = Field(default=None, sa_column=Column(String(40), unique=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Hold(SQLModel, table=True):
    """The part of one lot a reservation holds, and later spent and got back."""

    __tablename__ = "points_hold"

    reservation_pk: int = Field(sa_column=Column(Integer, primary_key=True))
    lot_id: int = Field(sa_column=Column(Integer, primary_key=True))
    seq: int = Field(sa_column=Column(Integer, nullable=False))  # spend order within the reservation
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    captured: int = Field(sa_column=Column(BigInteger, nullable=False))
    refunded: int = Field(sa_column=Column(BigInteger, nullable=False))


class IdempotencyRecord(SQLModel, table=True):
    """The first outcome of a (caller, key): a response to replay, or the error to repeat."""

    __tablename__ = "points_idempotency"

    caller: str = Field(sa_column=Column(String(100), primary_key=True))
    key: str = Field(sa_column=Column(String(200), primary_key=True))
    operation: str = Field(sa_column=Column(String(40), nullable=False))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    response: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    error_code: str | None = Field(default=None, sa_column=Column(String(40)))
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ServiceUse(SQLModel, table=True):
    """The member used `service` in `month` (drives the cross-service multiplier)."""

    __tablename__ = "points_service_use"

    member_id: str = Field(sa_column=Column(String(100), primary_key=True))
    month: str = Field(sa_column=Column(String(7), primary_key=True))
    service: str = Field(sa_column=Column(String(100), primary_key=True))


class PendingEarn(SQLModel, table=True):
    """One purchase of the earning contract, the row its events lock: the facts seen so far
    (completed, cancelled, money refunded) and what it earned (new -> pending -> granted, or
    cancelled). Facts are recorded whatever order the events arrive in; the effect on the ledger
    is then brought to what those facts call for."""

    __tablename__ = "points_pending_earn"
    __table_args__ = (_partial("ix_points_pending_earn_member_pending", "member_id", where="status = 'pending'"),)

    source_service: str = Field(sa_column=Column(String(100), primary_key=True))
    source_ref: str = Field(sa_column=Column(String(200), primary_key=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    purchase_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    regular: int = Field(sa_column=Column(BigInteger, nullable=False))
    bonus: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Regular points the merchant's own campaign adds (funded by the merchant, outside the caps).
    merchant_bonus: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    # What the purchase earned at first (regular + bonus + merchant bonus), the money refunded so
    # far and the points taken back so far: each refund takes back its share of `earned` computed
    # on the cumulative refund, so refunding the whole purchase takes back exactly `earned`.
    earned: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    refunded_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    taken_back: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    bonus_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    explanation: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(sa_column=Column(String(20), nullable=False))  # new|pending|granted|cancelled
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    completed: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    cancelled: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    # What the member reads for the purchase, and its category (from the seller's events).
    label: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    category: str = Field(default="", sa_column=Column(String(60), nullable=False, server_default=""))


class PurchaseRefund(SQLModel, table=True):
    """One refund of a purchase, by its own reference: a refund seen twice counts once."""

    __tablename__ = "points_purchase_refund"

    source_service: str = Field(sa_column=Column(String(100), primary_key=True))
    source_ref: str = Field(sa_column=Column(String(200), primary_key=True))
    refund_ref: str = Field(sa_column=Column(String(200), primary_key=True))
    amount_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class DailyCredit(SQLModel, table=True):
    """Points a service credited on a UTC day, spread over a few rows (shard = a hash of the
    member) so that one busy service does not serialize every credit on one row."""

    __tablename__ = "points_daily_credit"

    service: str = Field(sa_column=Column(String(100), primary_key=True))
    day: str = Field(sa_column=Column(String(10), primary_key=True))
    shard: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    points: int = Field(sa_column=Column(BigInteger, nullable=False))


class CampaignRow(SQLModel, table=True):
    """A campaign created through the admin API (or `python -m points seed`): extra points for
    purchases (kind "earn") or a bonus on joining (kind "welcome"), paid as limited-time points."""

    __tablename__ = "points_campaign"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    name: str = Field(sa_column=Column(String(100), unique=True, nullable=False))
    kind: str = Field(sa_column=Column(String(20), nullable=False))  # earn | welcome
    # JSON list of earner names; ["*"] for every earner.
    services: str = Field(sa_column=Column(Text, nullable=False))
    starts_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    ends_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    points_expire_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # x the service's base rate (e.g. 2.0 doubles it), or 0; and/or a fixed number of points.
    multiplier: float = Field(sa_column=Column(Float, nullable=False))
    fixed_bonus: int = Field(sa_column=Column(BigInteger, nullable=False))
    # all | new_members (joined within new_member_days) | first_use (first purchase at the service)
    audience: str = Field(sa_column=Column(String(20), nullable=False))
    new_member_days: int = Field(sa_column=Column(Integer, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
