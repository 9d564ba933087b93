"""partner's tables: partner companies, their stores, members' point cards, till transactions."""

from __future__ import annotations

from datetime import datetime

from kizuna.kit.db import UTCDateTime
from sqlalchemy import BigInteger, Column, Integer, String, UniqueConstraint
from sqlmodel import Field, SQLModel

APPLIED, APPROVED, SUSPENDED = "applied", "approved", "suspended"


class Partner(SQLModel, table=True):
    """A company outside the ecosystem whose stores give and take Kizuna points. Its contract
    (earn rate, return window) is data; its tills authenticate with its own credentials."""

    __tablename__ = "partner_partner"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    contact_email: str = Field(sa_column=Column(String(320), nullable=False))
    status: str = Field(sa_column=Column(String(20), nullable=False))
    # Points per 100 of money paid, in basis points of it (100 = 1%, the ecosystem's base rate;
    # more is the partner's own bonus, which it pays for).
    earn_rate_bp: int = Field(default=100, sa_column=Column(Integer, nullable=False))
    return_window_days: int = Field(default=14, sa_column=Column(Integer, nullable=False))
    secret_hash: str = Field(default="", sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Store(SQLModel, table=True):
    __tablename__ = "partner_store"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    partner_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Card(SQLModel, table=True):
    """A member's point card: its number, the secret its codes come from, and the member's own
    grant (their tokens) that lets a till spend their points while the card's code is shown."""

    __tablename__ = "partner_card"

    number: str = Field(sa_column=Column(String(12), primary_key=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, unique=True))
    secret_hex: str = Field(sa_column=Column(String(64), nullable=False))
    access_token: str = Field(default="", sa_column=Column(String(4000), nullable=False))
    refresh_token: str = Field(default="", sa_column=Column(String(4000), nullable=False))
    access_expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class CodeUse(SQLModel, table=True):
    """A code, once taken by a till, is spent: a replay, or the same code at another store, is refused."""

    __tablename__ = "partner_code_use"

    card_number: str = Field(sa_column=Column(String(12), primary_key=True))
    counter: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    sale_id: str = Field(sa_column=Column(String(40), nullable=False))
    used_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Sale(SQLModel, table=True):
    """One till transaction: an earn (money paid, points to earn) or a spend (points paid).
    Idempotent per store, terminal and receipt: a till's retry returns the first result."""

    __tablename__ = "partner_sale"
    __table_args__ = (UniqueConstraint("store_id", "terminal", "receipt", "kind", name="uq_partner_sale_receipt"),)

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    kind: str = Field(sa_column=Column(String(10), nullable=False))
    partner_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    store_id: str = Field(sa_column=Column(String(40), nullable=False))
    terminal: str = Field(sa_column=Column(String(64), nullable=False))
    receipt: str = Field(sa_column=Column(String(64), nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    amount_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(default="JPY", sa_column=Column(String(3), nullable=False))
    points: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reservation_id: str = Field(default="", sa_column=Column(String(64), nullable=False))
    returned_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    returned_points: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # Points the ledger credited (net of what it took back) for an earn, as points reported it.
    issued_points: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    status: str = Field(sa_column=Column(String(20), nullable=False))
    label: str = Field(default="", sa_column=Column(String(300), nullable=False))
    completes_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Return(SQLModel, table=True):
    __tablename__ = "partner_return"
    __table_args__ = (UniqueConstraint("sale_id", "return_receipt", name="uq_partner_return_receipt"),)

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    sale_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    return_receipt: str = Field(sa_column=Column(String(64), nullable=False))
    amount_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    points: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
