"""Fintech's tables: the money ledger (accounts, entries, postings), cards and their
authorizations, purchases and refunds, statements, bank transfers, bill payments, funds and
holdings, and idempotency records.

Money is an integer number of minor units with a currency code. Ledger accounts are named by
string (`bank:<member>`, `card:<card id>`, `merchant:<merchant id>`, ...); each keeps a balance
row, locked and updated in the same transaction as the postings that move it.
"""

from __future__ import annotations

from datetime import date, datetime

from kizuna.kit.db import UTCDateTime
from kizuna.kit.idempotency import IdempotencyRecordBase
from sqlalchemy import BigInteger, Column, Date, Index, Integer, String, Text
from sqlmodel import Field, SQLModel


class LedgerAccount(SQLModel, table=True):
    """An account of the money ledger. `balance_minor` is in the account's normal direction
    (debits raise an asset, credits raise a liability); `floor_minor` is the lowest it may go."""

    __tablename__ = "fintech_account"

    account_id: str = Field(sa_column=Column(String(120), primary_key=True))
    kind: str = Field(sa_column=Column(String(10), nullable=False))  # asset | liability
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    balance_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    floor_minor: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class LedgerEntry(SQLModel, table=True):
    """One journal entry: its postings sum to zero. Never updated or deleted."""

    __tablename__ = "fintech_entry"

    entry_id: str = Field(sa_column=Column(String(40), primary_key=True))
    kind: str = Field(sa_column=Column(String(40), nullable=False))
    ref: str = Field(sa_column=Column(String(120), nullable=False))
    memo: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class LedgerPosting(SQLModel, table=True):
    """A signed posting: positive debits, negative credits the account."""

    __tablename__ = "fintech_posting"
    __table_args__ = (Index("ix_fintech_posting_account", "account_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    entry_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    account_id: str = Field(sa_column=Column(String(120), nullable=False))
    amount_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))


class Card(SQLModel, table=True):
    """A member's credit card. The number itself is never stored: only a keyed hash (`pan_token`,
    for the merchant API to find the card) and its last four digits."""

    __tablename__ = "fintech_card"
    __table_args__ = (Index("ix_fintech_card_member", "member_id"),)

    card_id: str = Field(sa_column=Column(String(40), primary_key=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    pan_token: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    last4: str = Field(sa_column=Column(String(4), nullable=False))
    expires_on: date = Field(sa_column=Column(Date, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    credit_limit_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(sa_column=Column(String(10), nullable=False))  # active | blocked | closed
    opened_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_closed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Authorization(SQLModel, table=True):
    """A hold against a card's available credit (or a declined attempt)."""

    __tablename__ = "fintech_authorization"
    __table_args__ = (Index("ix_fintech_auth_card", "card_id", "status"),)

    authorization_id: str = Field(sa_column=Column(String(40), primary_key=True))
    card_id: str = Field(sa_column=Column(String(40), nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    merchant_id: str = Field(sa_column=Column(String(100), nullable=False))
    merchant_name: str = Field(sa_column=Column(String(200), nullable=False))
    amount_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    # approved | declined | captured | voided | expired (the sweeper marks lapsed holds)
    status: str = Field(sa_column=Column(String(10), nullable=False))
    decline_reason: str = Field(default="", sa_column=Column(String(30), nullable=False))
    fraud_rule: str = Field(default="", sa_column=Column(String(60), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class CardTransaction(SQLModel, table=True):
    """A posted line of a card: a purchase (positive) or a refund or payment (negative)."""

    __tablename__ = "fintech_card_txn"
    __table_args__ = (Index("ix_fintech_card_txn_card", "card_id", "posted_at"),)

    txn_id: str = Field(sa_column=Column(String(40), primary_key=True))
    card_id: str = Field(sa_column=Column(String(40), nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    kind: str = Field(sa_column=Column(String(10), nullable=False))  # purchase | refund | payment
    authorization_id: str = Field(default="", sa_column=Column(String(40), nullable=False))
    purchase_id: str = Field(default="", sa_column=Column(String(40), nullable=False))
    merchant_id: str = Field(default="", sa_column=Column(String(100), nullable=False))
    description: str = Field(sa_column=Column(String(200), nullable=False))
    amount_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    refunded_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    statement_id: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    posted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Statement(SQLModel, table=True):
    __tablename__ = "fintech_statement"
    __table_args__ = (Index("ix_fintech_statement_card", "card_id", "closing_at"),)

    statement_id: str = Field(sa_column=Column(String(40), primary_key=True))
    card_id: str = Field(sa_column=Column(String(40), nullable=False))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    period_start: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    closing_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    due_on: date = Field(sa_column=Column(Date, nullable=False))
    total_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    paid_minor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    status: str = Field(sa_column=Column(String(10), nullable=False))  # open | paid


class PointsPayment(SQLModel, table=True):
    """A payment made with bank cash and/or points (a card bill, a fund purchase): the points
    reservation is captured only after the bank part has been taken, voided if it fails."""

    __tablename__ = "fintech_points_payment"

    payment_id: str = Field(sa_column=Column(String(40), primary_key=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False))
    purpose: str = Field(sa_column=Column(String(20), nullable=False))  # card_bill | fund_buy
    target_id: str = Field(sa_column=Column(String(40), nullable=False))
    bank_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    points: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    reservation_id: str = Field(default="", sa_column=Column(String(60), nullable=False))
    # started | bank_taken | completed | voiding | failed (see payments.py)
    status: str = Field(sa_column=Column(String(10), nullable=False))
    failure: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Fund(SQLModel, table=True):
    __tablename__ = "fintech_fund"

    fund_id: str = Field(sa_column=Column(String(40), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    # The price of one unit on the seed date; daily prices move around it deterministically.
    base_price_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    volatility_bp: int = Field(sa_column=Column(Integer, nullable=False))


class Holding(SQLModel, table=True):
    """Units of a fund a member holds, in millionths of a unit."""

    __tablename__ = "fintech_holding"

    member_id: str = Field(sa_column=Column(String(100), primary_key=True))
    fund_id: str = Field(sa_column=Column(String(40), primary_key=True))
    units_micro: int = Field(sa_column=Column(BigInteger, nullable=False))
    cost_minor: int = Field(sa_column=Column(BigInteger, nullable=False))


class IdempotencyRecord(IdempotencyRecordBase, table=True):
    """The first outcome (result or error) of a keyed request, replayed for its retries."""

    __tablename__ = "fintech_idempotency"
