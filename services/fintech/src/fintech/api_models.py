"""What fintech's REST API answers: one model per response (`...Public`), read from the domain's
values (`from_attributes`). Money is in integer minor units with its currency; times are UTC."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---- card ---------------------------------------------------------------------------------------


class CardSummaryPublic(Public):
    card_id: str
    last4: str
    status: str
    expires_on: date
    currency: str
    credit_limit_minor: int
    available_minor: int


class IssuedCardPublic(CardSummaryPublic):
    # Shown this once; "" when a retried key answers again.
    card_number: str


class CardLinePublic(Public):
    txn_id: str
    kind: str  # purchase, refund or payment
    description: str
    amount_minor: int  # what the line adds to what is owed (refunds and payments are negative)
    currency: str
    posted_at: datetime
    statement_id: str | None


class CardPublic(CardSummaryPublic):
    owed_minor: int
    held_minor: int
    transactions: list[CardLinePublic]


class CardStatusPublic(Public):
    card_id: str
    status: str


# ---- statements and payments --------------------------------------------------------------------


class StatementLinePublic(Public):
    txn_id: str
    kind: str
    description: str
    amount_minor: int
    posted_at: datetime


class StatementPaymentPublic(Public):
    txn_id: str
    description: str
    amount_minor: int
    posted_at: datetime


class StatementPublic(Public):
    statement_id: str
    period_start: datetime
    closing_at: datetime
    due_on: date
    total_minor: int
    paid_minor: int
    due_minor: int
    currency: str
    status: str
    lines: list[StatementLinePublic]
    payments: list[StatementPaymentPublic]


class PaymentPublic(Public):
    payment_id: str
    status: str
    purpose: str
    target_id: str
    bank_minor: int
    points: int
    currency: str
    failure: str


# ---- bank ---------------------------------------------------------------------------------------


class MovementPublic(Public):
    entry_id: str
    kind: str
    memo: str
    amount_minor: int  # positive money in, negative money out
    currency: str
    at: datetime


class BankAccountPublic(Public):
    member_id: str
    balance_minor: int
    currency: str
    history: list[MovementPublic]


class TopUpPublic(Public):
    entry_id: str
    amount_minor: int
    currency: str
    balance_minor: int


class TransferPublic(Public):
    transfer_id: str
    amount_minor: int
    currency: str
    balance_minor: int


# ---- securities ---------------------------------------------------------------------------------


class FundPublic(Public):
    fund_id: str
    name: str
    currency: str
    price_minor: int
    price_date: date


class HoldingPublic(Public):
    fund_id: str
    name: str
    units_micro: int
    price_minor: int
    value_minor: int
    cost_minor: int
    gain_minor: int


class HoldingsPublic(Public):
    holdings: list[HoldingPublic]
    total_value_minor: int
    currency: str


class FundSalePublic(Public):
    fund_id: str
    units_micro: int
    price_minor: int
    proceeds_minor: int
    cost_minor: int
    realized_gain_minor: int
    currency: str


# ---- merchant API -------------------------------------------------------------------------------


class AuthorizationPublic(Public):
    authorization_id: str
    status: str
    decline_reason: str
    fraud_rule: str
    available_minor: int
    currency: str
    expires_at: datetime | None


class CapturePublic(Public):
    capture_id: str
    captured_minor: int
    released_minor: int
    currency: str


class VoidPublic(Public):
    released_minor: int
    currency: str


class RefundPublic(Public):
    refund_id: str
    refunded_minor: int
    currency: str
