"""The credit card: applying, authorizations (holds), captures, voids, refunds.

Available credit = limit - what the member owes (the ledger's `card:<id>` balance) - open holds.
An authorization locks the card row first, so concurrent authorizations see each other's holds
and never exceed the limit together.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.common.v1.common_pb2 import Money as MoneyPb
from kizuna.fintech.v1 import events_pb2, fintech_pb2
from kizuna.kit.clock import timestamp
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.events import publish
from kizuna.kit.points import publish_purchase
from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from fintech import fraud, ledger
from fintech.context import Fintech
from fintech.idempotency import run_once
from fintech.models import Authorization, Card, CardTransaction
from fintech.money import Money, positive_money

APPROVED, DECLINED, CAPTURED, VOIDED, EXPIRED = "approved", "declined", "captured", "voided", "expired"
LIMIT, BLOCKED_CARD, FRAUD_RULE, EXPIRED_CARD, CURRENCY = (
    "limit",
    "blocked_card",
    "fraud_rule",
    "expired_card",
    "currency_not_supported",
)


# ---- pure rules ---------------------------------------------------------------------------------


def credit_limit_for(annual_income_minor: int, minimum: int, maximum: int) -> int:
    """A tenth of the declared annual income, rounded down to 10,000, within [minimum, maximum]."""
    if annual_income_minor <= 0:
        raise InvalidArgument("annual_income_minor must be positive")
    return max(minimum, min(maximum, annual_income_minor // 10 // 10_000 * 10_000))


def luhn_check_digit(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 0:
            n *= 2
            n -= 9 if n > 9 else 0
        total += n
    return str((10 - total % 10) % 10)


def new_card_number() -> str:
    """A 16-digit number with a valid Luhn check digit, in a range no real issuer uses."""
    body = "999" + "".join(str(secrets.randbelow(10)) for _ in range(12))
    return body + luhn_check_digit(body)


def card_number_token(key: str, number: str) -> str:
    """The keyed hash that stands in for a card number (lets the merchant API find the card)."""
    digits = "".join(ch for ch in number if ch.isdigit())
    return hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()


def decline_reason_for(card: Card, amount: Money, available_minor: int, fraud_rule: str, today: date) -> str:
    """Why an authorization is declined, or "" to approve it: the card's state and currency first (an
    amount in another currency is not judged by the fraud rules at all), then fraud, then the limit."""
    if card.status == "blocked":
        return BLOCKED_CARD
    if card.expires_on < today:
        return EXPIRED_CARD
    if amount.currency != card.currency:
        return CURRENCY
    if fraud_rule:
        return FRAUD_RULE
    if amount.amount_minor > available_minor:
        return LIMIT
    return ""


# ---- what the card domain answers ----------------------------------------------------------------


@dataclass(frozen=True)
class CardSummary:
    card_id: str
    last4: str
    status: str
    expires_on: date
    currency: str
    credit_limit_minor: int
    available_minor: int


@dataclass(frozen=True)
class IssuedCard(CardSummary):
    # The full number, shown once to whoever applied; "" when a retried key answers again.
    card_number: str


@dataclass(frozen=True)
class AuthorizationDecision:
    authorization_id: str
    status: str  # approved or declined
    decline_reason: str  # "" when approved
    fraud_rule: str  # the fraud rule that declined it, else ""
    available_minor: int  # credit left after this hold
    currency: str
    expires_at: datetime | None  # when an approved hold lapses


@dataclass(frozen=True)
class Captured:
    capture_id: str
    captured_minor: int
    released_minor: int  # what was held and not captured
    currency: str


@dataclass(frozen=True)
class Voided:
    released_minor: int  # 0 when the hold had lapsed already
    currency: str


@dataclass(frozen=True)
class Refunded:
    refund_id: str
    refunded_minor: int
    currency: str


# ---- helpers ------------------------------------------------------------------------------------


def ts(moment: datetime | None) -> Timestamp:
    return Timestamp() if moment is None else timestamp(moment)


def money_pb(amount_minor: int, currency: str) -> MoneyPb:
    return MoneyPb(amount_minor=amount_minor, currency=currency)


def _id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


async def find_card(
    session: AsyncSession, member_id: str, *, lock: bool = False, postgres: bool = False
) -> Card | None:
    """The member's current card (not closed), if any."""
    query = select(Card).where(Card.member_id == member_id, Card.status != "closed")
    if lock and postgres:
        query = query.with_for_update()
    return (await session.exec(query.execution_options(populate_existing=True))).first()


async def require_card(session: AsyncSession, ctx: Fintech, member_id: str, *, lock: bool = False) -> Card:
    card = await find_card(session, member_id, lock=lock, postgres=ctx.postgres)
    if card is None:
        closed = (await session.exec(select(Card.card_id).where(Card.member_id == member_id))).first()
        if closed is not None:
            raise FailedPrecondition(f"the card of member {member_id!r} is closed")
        raise NotFound(f"member {member_id!r} has no card")
    return card


async def lock_card(session: AsyncSession, ctx: Fintech, card_id: str) -> Card:
    query = select(Card).where(Card.card_id == card_id)
    if ctx.postgres:
        query = query.with_for_update()
    card = (await session.exec(query.execution_options(populate_existing=True))).first()
    if card is None:
        raise NotFound(f"unknown card {card_id!r}")
    return card


async def held_minor(session: AsyncSession, card_id: str, now: datetime) -> int:
    query = select(func.coalesce(func.sum(Authorization.amount_minor), 0)).where(
        Authorization.card_id == card_id,
        Authorization.status == APPROVED,
        col(Authorization.expires_at) > now,
    )
    return int((await session.exec(query)).one())


async def available_minor(session: AsyncSession, card: Card, now: datetime) -> int:
    owed = await ledger.balance(session, ledger.card_account(card.card_id))
    return card.credit_limit_minor - owed - await held_minor(session, card.card_id, now)


# ---- applying and managing a card ---------------------------------------------------------------


async def apply(session: AsyncSession, ctx: Fintech, member_id: str, annual_income_minor: int) -> IssuedCard:
    """Issue a card to a member who has none; the full number is returned this once only."""
    limit = credit_limit_for(annual_income_minor, ctx.settings.card_min_limit_minor, ctx.settings.card_max_limit_minor)
    if await find_card(session, member_id, lock=True, postgres=ctx.postgres) is not None:
        raise FailedPrecondition("the member already has a card")
    now = ctx.clock.now()
    number = new_card_number()
    card = Card(
        card_id=_id("card"),
        member_id=member_id,
        pan_token=card_number_token(ctx.card_token_key, number),
        last4=number[-4:],
        expires_on=date(now.year + 5, now.month, 1),
        currency=ctx.settings.currency,
        credit_limit_minor=limit,
        status="active",
        opened_at=now,
        last_closed_at=now,
    )
    session.add(card)
    await session.flush()
    return IssuedCard(**asdict(card_summary(card, limit)), card_number=number)


async def apply_once(ctx: Fintech, member_id: str, annual_income_minor: int, key: str) -> IssuedCard:
    """`apply` under an idempotency key. The full number goes back to this caller only: it is kept
    out of the idempotency record, so a retry of the key gets the card with an empty `card_number`."""
    numbers: list[str] = []

    async def operation(session: AsyncSession) -> CardSummary:
        issued = await apply(session, ctx, member_id, annual_income_minor)
        numbers.append(issued.card_number)
        fields = asdict(issued)
        del fields["card_number"]
        return CardSummary(**fields)

    summary = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:card-apply",
        key=key,
        request={"income": annual_income_minor},
        operation=operation,
        result=CardSummary,
    )
    return IssuedCard(**asdict(summary), card_number=numbers[0] if numbers else "")


def card_summary(card: Card, available: int) -> CardSummary:
    return CardSummary(
        card_id=card.card_id,
        last4=card.last4,
        status=card.status,
        expires_on=card.expires_on,
        currency=card.currency,
        credit_limit_minor=card.credit_limit_minor,
        available_minor=available,
    )


async def set_status(session: AsyncSession, ctx: Fintech, member_id: str, status: str) -> Card:
    """Block (freeze), unblock, or close the member's card. Closing needs nothing owed or held."""
    card = await require_card(session, ctx, member_id, lock=True)
    now = ctx.clock.now()
    if status == "closed":
        owed = await ledger.balance(session, ledger.card_account(card.card_id))
        if owed != 0 or await held_minor(session, card.card_id, now) != 0:
            raise FailedPrecondition("a card can be closed only when nothing is owed or held on it")
    card.status = status
    session.add(card)
    await session.flush()
    return card


# ---- payments -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MerchantRef:
    merchant_id: str
    name: str


async def authorize(
    session: AsyncSession,
    ctx: Fintech,
    *,
    card: Card,
    client_id: str,
    merchant: MerchantRef,
    amount_minor: int,
    currency: str,
) -> AuthorizationDecision:
    """Hold `amount` on `card` (already looked up, not yet locked) or decline with a reason."""
    amount = positive_money(amount_minor, currency)
    if not merchant.merchant_id:
        raise InvalidArgument("merchant.merchant_id is required")
    card = await lock_card(session, ctx, card.card_id)
    if card.status == "closed":
        raise FailedPrecondition("the card is closed")
    now = ctx.clock.now()
    available = await available_minor(session, card, now)
    rules = ctx.fraud_rules
    recent = (
        await session.exec(
            select(Authorization, CardTransaction)
            .join(
                CardTransaction,
                (col(CardTransaction.authorization_id) == col(Authorization.authorization_id))
                & (col(CardTransaction.kind) == "purchase"),
                isouter=True,
            )
            .where(
                Authorization.card_id == card.card_id,
                col(Authorization.created_at) > now - rules.history_window,
            )
        )
    ).all()
    history = [
        fraud.Attempt(
            at=a.created_at,
            amount_minor=a.amount_minor,
            status=a.status,
            client_id=a.client_id,
            refunded_in_full=t is not None and t.refunded_minor >= t.amount_minor,
        )
        for a, t in recent
    ]
    rule = fraud.matching_rule(rules, amount.amount_minor, client_id, history, now)
    reason = decline_reason_for(card, amount, available, rule, now.date())
    auth = Authorization(
        authorization_id=_id("auth"),
        card_id=card.card_id,
        member_id=card.member_id,
        client_id=client_id,
        merchant_id=merchant.merchant_id,
        merchant_name=merchant.name or merchant.merchant_id,
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        status=DECLINED if reason else APPROVED,
        decline_reason=reason,
        fraud_rule=rule if reason == FRAUD_RULE else "",
        created_at=now,
        expires_at=None if reason else now + timedelta(seconds=ctx.settings.authorization_ttl_seconds),
    )
    session.add(auth)
    if reason == FRAUD_RULE:
        await publish(
            session,
            "fintech.authorization.fraud_declined",
            events_pb2.FraudDeclined(
                authorization_id=auth.authorization_id,
                member_id=card.member_id,
                merchant=fintech_pb2.Merchant(merchant_id=merchant.merchant_id, name=auth.merchant_name),
                amount=money_pb(amount.amount_minor, amount.currency),
                rule=rule,
                declined_at=ts(now),
            ),
            member_id=card.member_id,
        )
    await session.flush()
    return AuthorizationDecision(
        authorization_id=auth.authorization_id,
        status=auth.status,
        decline_reason=reason,
        fraud_rule=auth.fraud_rule,
        available_minor=available - (0 if reason else amount.amount_minor),
        currency=card.currency,
        expires_at=auth.expires_at,
    )


async def _lock_authorization(
    session: AsyncSession, ctx: Fintech, client_id: str, authorization_id: str
) -> Authorization:
    query = select(Authorization).where(Authorization.authorization_id == authorization_id)
    if ctx.postgres:
        query = query.with_for_update()
    auth = (await session.exec(query.execution_options(populate_existing=True))).first()
    # Another merchant's authorization is as good as unknown to this caller.
    if auth is None or auth.client_id != client_id:
        raise NotFound(f"unknown authorization {authorization_id!r}")
    return auth


async def capture(
    session: AsyncSession,
    ctx: Fintech,
    *,
    client_id: str,
    authorization_id: str,
    amount_minor: int | None,
    currency: str,
) -> Captured:
    """Charge an approved authorization in full (`amount_minor` None) or in part."""
    auth = await _lock_authorization(session, ctx, client_id, authorization_id)
    now = ctx.clock.now()
    if auth.status != APPROVED:
        raise FailedPrecondition(f"authorization {authorization_id} is {auth.status}, not approved")
    if auth.expires_at is not None and auth.expires_at <= now:
        raise FailedPrecondition(f"authorization {authorization_id} has expired")
    if amount_minor is None:
        amount = Money(auth.amount_minor, auth.currency)
    else:
        amount = positive_money(amount_minor, currency, expected=auth.currency)
        if amount.amount_minor > auth.amount_minor:
            raise InvalidArgument(
                f"capture amount {amount.amount_minor} exceeds the authorized amount {auth.amount_minor}"
            )
    card = await lock_card(session, ctx, auth.card_id)
    purchase_id = _id("pur")
    await ledger.post(
        session,
        kind="card_purchase",
        ref=purchase_id,
        memo=f"{auth.merchant_name}",
        currency=amount.currency,
        postings=ledger.transfer(
            ledger.card_account(card.card_id), ledger.merchant_account(auth.merchant_id), amount.amount_minor
        ),
        now=now,
        postgres=ctx.postgres,
    )
    session.add(
        CardTransaction(
            txn_id=purchase_id,
            card_id=card.card_id,
            member_id=card.member_id,
            kind="purchase",
            authorization_id=auth.authorization_id,
            purchase_id=purchase_id,
            merchant_id=auth.merchant_id,
            description=auth.merchant_name,
            amount_minor=amount.amount_minor,
            currency=amount.currency,
            posted_at=now,
        )
    )
    auth.status = CAPTURED
    session.add(auth)
    await publish(
        session,
        "fintech.card_purchase.posted",
        events_pb2.CardPurchasePosted(
            purchase_id=purchase_id,
            member_id=card.member_id,
            merchant=fintech_pb2.Merchant(merchant_id=auth.merchant_id, name=auth.merchant_name),
            amount=money_pb(amount.amount_minor, amount.currency),
            posted_at=ts(now),
        ),
        member_id=card.member_id,
    )
    # A posted card purchase earns at once: it completes the purchase of the earning contract.
    await publish_purchase(
        session,
        "fintech",
        "completed",
        reference=purchase_id,
        member_id=card.member_id,
        paid_minor=amount.amount_minor,
        currency=amount.currency,
        label=f"card purchase at {auth.merchant_name}"[:200],
        category="card",
        at=now,
    )
    await session.flush()
    return Captured(
        capture_id=purchase_id,
        captured_minor=amount.amount_minor,
        released_minor=auth.amount_minor - amount.amount_minor,
        currency=amount.currency,
    )


async def void(session: AsyncSession, ctx: Fintech, *, client_id: str, authorization_id: str) -> Voided:
    auth = await _lock_authorization(session, ctx, client_id, authorization_id)
    now = ctx.clock.now()
    if auth.status == CAPTURED:
        raise FailedPrecondition(f"authorization {authorization_id} was captured; refund it instead")
    if auth.status == DECLINED:
        raise FailedPrecondition(f"authorization {authorization_id} was declined; it holds nothing")
    released = 0
    if auth.status == APPROVED:
        expired = auth.expires_at is not None and auth.expires_at <= now
        released = 0 if expired else auth.amount_minor
        auth.status = VOIDED
        session.add(auth)
        await session.flush()
    return Voided(released_minor=released, currency=auth.currency)


async def refund(
    session: AsyncSession,
    ctx: Fintech,
    *,
    client_id: str,
    capture_id: str = "",
    authorization_id: str = "",
    amount_minor: int | None,
    currency: str,
) -> Refunded:
    """Return captured money to the card, in full or in part, up to what is left."""
    query = select(CardTransaction).where(CardTransaction.kind == "purchase")
    if capture_id:
        query = query.where(CardTransaction.purchase_id == capture_id)
    elif authorization_id:
        query = query.where(CardTransaction.authorization_id == authorization_id)
    else:
        raise InvalidArgument("refund needs a capture_id or an authorization_id")
    if ctx.postgres:
        query = query.with_for_update()
    purchase = (await session.exec(query.execution_options(populate_existing=True))).first()
    auth = None if purchase is None else await session.get(Authorization, purchase.authorization_id)
    if purchase is None or auth is None or auth.client_id != client_id:
        raise NotFound(f"unknown purchase {capture_id or authorization_id!r}")
    left = purchase.amount_minor - purchase.refunded_minor
    if amount_minor is None:
        amount = Money(left, purchase.currency)
    else:
        amount = positive_money(amount_minor, currency, expected=purchase.currency)
    if left <= 0:
        raise FailedPrecondition(f"purchase {purchase.purchase_id} is already fully refunded")
    if amount.amount_minor > left:
        raise FailedPrecondition(f"refund {amount.amount_minor} exceeds what is left to refund ({left})")
    now = ctx.clock.now()
    refund_id = _id("ref")
    await ledger.post(
        session,
        kind="card_refund",
        ref=refund_id,
        memo=f"refund {purchase.description}",
        currency=amount.currency,
        postings=ledger.transfer(
            ledger.merchant_account(purchase.merchant_id), ledger.card_account(purchase.card_id), amount.amount_minor
        ),
        now=now,
        postgres=ctx.postgres,
    )
    purchase.refunded_minor += amount.amount_minor
    session.add(purchase)
    session.add(
        CardTransaction(
            txn_id=refund_id,
            card_id=purchase.card_id,
            member_id=purchase.member_id,
            kind="refund",
            authorization_id=purchase.authorization_id,
            purchase_id=purchase.purchase_id,
            merchant_id=purchase.merchant_id,
            description=f"Refund: {purchase.description}",
            amount_minor=-amount.amount_minor,
            currency=amount.currency,
            posted_at=now,
        )
    )
    await publish(
        session,
        "fintech.card_purchase.refunded",
        events_pb2.CardPurchaseRefunded(
            refund_id=refund_id,
            purchase_id=purchase.purchase_id,
            member_id=purchase.member_id,
            merchant=fintech_pb2.Merchant(merchant_id=purchase.merchant_id, name=auth.merchant_name),
            amount=money_pb(amount.amount_minor, amount.currency),
            refunded_at=ts(now),
        ),
        member_id=purchase.member_id,
    )
    await publish_purchase(
        session,
        "fintech",
        "refunded",
        reference=purchase.purchase_id,
        member_id=purchase.member_id,
        paid_minor=purchase.amount_minor,
        currency=purchase.currency,
        label=f"card purchase at {auth.merchant_name}"[:200],
        category="card",
        refund_reference=refund_id,
        refunded_minor=amount.amount_minor,
        at=now,
    )
    await session.flush()
    return Refunded(refund_id=refund_id, refunded_minor=amount.amount_minor, currency=amount.currency)


async def transactions(session: AsyncSession, card_id: str, limit: int | None = 50) -> list[CardTransaction]:
    query = (
        select(CardTransaction)
        .where(CardTransaction.card_id == card_id)
        .order_by(col(CardTransaction.posted_at).desc())
        .limit(limit)
    )
    return list((await session.exec(query)).all())


async def card_by_token(session: AsyncSession, token: str) -> Card:
    """The card a number stands for (merchant API). Unknown numbers and closed cards are refused."""
    card = (await session.exec(select(Card).where(Card.pan_token == token))).first()
    if card is None:
        raise NotFound("unknown card number")
    if card.status == "closed":
        raise FailedPrecondition("the card is closed")
    return card


async def expire_holds(session: AsyncSession, now: datetime) -> int:
    """Mark approved authorizations whose hold has lapsed as expired; returns how many.

    Available credit already ignores lapsed holds and capture refuses them; this makes the state
    visible (statements, the merchant API) and keeps the approved set small."""
    result = await session.exec(
        update(Authorization)
        .where(
            col(Authorization.status) == APPROVED,
            col(Authorization.expires_at).is_not(None),
            col(Authorization.expires_at) <= now,
        )
        .values(status=EXPIRED)
    )
    return int(result.rowcount or 0)
