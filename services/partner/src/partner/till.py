"""At the till: earn on a purchase, spend points, take returns. Every call names its store,
terminal and receipt; a till that loses the network and retries gets the first result back and
changes nothing twice.

- Earn: the member's code proves the card is there; the purchase is published through the common
  earning contract (`partner.purchase.paid`), pending until the partner's return window ends, then
  `partner.purchase.completed` grants it. The partner's contract rate above the ecosystem's base
  is its own bonus (`merchant_bonus_points`, which it pays for in settlement).
- Spend: the code again, and the member's own grant from their card: points are held and captured
  at once (the sale is done at the till).
- Returns: part or all of the money (the earning is taken back in proportion, through the
  contract's `refunded`) and of the points spent (returned to the member).
- A code is good for one receipt: a replay, or the same code at another store, is refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, PermissionDenied
from kizuna.kit.idempotency import check_key
from kizuna.kit.points import PointsClient, publish_purchase
from sqlalchemy import ColumnElement, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from partner import cards, codes, partners
from partner.models import Card, CodeUse, Partner, Return, Sale, Store

SERVICE = "partner"
EARN, SPEND = "earn", "spend"
PENDING, GRANTED, COMPLETED, FAILED, RETURNED = "pending", "granted", "completed", "failed", "returned"
BASE_RATE_BP = 100


class CodeRefused(PermissionDenied):
    code = "code_refused"


class TooMany(FailedPrecondition):
    code = "too_many"
    http_status = 429


@dataclass(frozen=True)
class Limits:
    max_amount_minor: int = 10_000_000
    max_points: int = 1_000_000
    per_card_per_minute: int = 5
    per_store_per_minute: int = 120


@dataclass
class Till:
    db: Database
    points: PointsClient
    grants: cards.Grants
    clock: Clock
    limits: Limits

    # ---- earn ---------------------------------------------------------------------------------
    async def earn(
        self,
        partner: Partner,
        *,
        store_id: str,
        terminal: str,
        receipt: str,
        scanned: str,
        amount_minor: int,
        currency: str,
    ) -> Sale:
        _check_ids(terminal, receipt)
        if not 0 < amount_minor <= self.limits.max_amount_minor:
            raise InvalidArgument(f"amount_minor must be between 1 and {self.limits.max_amount_minor:,}")
        if currency != "JPY":
            raise InvalidArgument("partner stores take JPY only")
        now = self.clock.now()
        async with self.db.transaction() as session:
            store = await partners.store_of(session, partner, store_id)
            first = await _sale(session, store.id, terminal, receipt, EARN)
            if first is not None:
                _same(first, amount_minor=amount_minor)
                return first
            card = await self._use_code(session, store, terminal, receipt, scanned, now)
            sale = Sale(
                id=f"sal_{uuid.uuid4().hex[:20]}",
                kind=EARN,
                partner_id=partner.id,
                store_id=store.id,
                terminal=terminal,
                receipt=receipt,
                member_id=card.member_id,
                amount_minor=amount_minor,
                currency=currency,
                status=PENDING,
                label=f"{store.name} ({partner.name})",
                completes_at=now + timedelta(days=partner.return_window_days),
                created_at=now,
            )
            session.add(sale)
            bonus = amount_minor * max(0, partner.earn_rate_bp - BASE_RATE_BP) // 10_000
            await self._publish(session, sale, "paid", bonus=bonus)
        return sale

    # ---- spend --------------------------------------------------------------------------------
    async def spend(
        self, partner: Partner, *, store_id: str, terminal: str, receipt: str, scanned: str, points: int
    ) -> Sale:
        _check_ids(terminal, receipt)
        if not 0 < points <= self.limits.max_points:
            raise InvalidArgument(f"points must be between 1 and {self.limits.max_points:,}")
        now = self.clock.now()
        async with self.db.transaction() as session:
            store = await partners.store_of(session, partner, store_id)
            sale = await _sale(session, store.id, terminal, receipt, SPEND)
            if sale is not None:
                _same(sale, points=points)
                if sale.status == COMPLETED:
                    return sale
                if sale.status == FAILED:
                    raise FailedPrecondition("this payment with points did not go through; start a new receipt")
            else:
                scanned_card = await self._use_code(session, store, terminal, receipt, scanned, now)
                sale = Sale(
                    id=f"sal_{uuid.uuid4().hex[:20]}",
                    kind=SPEND,
                    partner_id=partner.id,
                    store_id=store.id,
                    terminal=terminal,
                    receipt=receipt,
                    member_id=scanned_card.member_id,
                    points=points,
                    status=PENDING,
                    label=f"{store.name} ({partner.name})",
                    completes_at=now,
                    created_at=now,
                )
                session.add(sale)
            card = await cards.of_member(session, sale.member_id)
            if card is None:
                raise CodeRefused("the member revoked this card")
            member_token = await self.grants.access_token(session, card, now)
        reservation = ""
        try:
            reservation = await self.points.reserve(
                member_id=sale.member_id,
                amount=points,
                member_token=member_token,
                reason=sale.label,
                ref=sale.id,
                key=f"{sale.id}:hold",
            )
            await self.points.capture(reservation, key=f"{sale.id}:capture")
        except DomainError as exc:
            if exc.code != "unavailable":
                await self._fail(sale.id, reservation)
            raise
        async with self.db.transaction() as session:
            row = await session.get(Sale, sale.id, with_for_update=True)
            assert row is not None
            row.status, row.reservation_id = COMPLETED, reservation
            session.add(row)
        return row

    # ---- returns ------------------------------------------------------------------------------
    async def take_return(
        self,
        partner: Partner,
        *,
        store_id: str,
        terminal: str,
        receipt: str,
        return_receipt: str,
        amount_minor: int,
        points: int,
    ) -> list[Return]:
        """Return `amount_minor` of the money paid on `receipt` and/or `points` of the points spent."""
        _check_ids(terminal, receipt)
        check_key(return_receipt, "return_receipt")
        if amount_minor < 0 or points < 0 or amount_minor + points == 0:
            raise InvalidArgument("return some money (amount_minor) or points, neither negative")
        if amount_minor > self.limits.max_amount_minor or points > self.limits.max_points:
            raise InvalidArgument("that is more than any till transaction can hold")
        now = self.clock.now()
        async with self.db.sessions() as session:
            store = await partners.store_of(session, partner, store_id)
            earned = await _sale(session, store.id, terminal, receipt, EARN)
            spent = await _sale(session, store.id, terminal, receipt, SPEND)
        if amount_minor and earned is None:
            raise InvalidArgument("no purchase that earned points has this receipt")
        if points and (spent is None or spent.status != COMPLETED):
            raise InvalidArgument("no payment with points has this receipt")
        done: list[Return] = []
        if points and spent is not None:
            done.append(await self._return_points(spent, return_receipt, points, now))
        if amount_minor and earned is not None:
            done.append(await self._return_money(earned, return_receipt, amount_minor, now))
        return done

    async def _return_points(self, sale: Sale, return_receipt: str, points: int, now: datetime) -> Return:
        async with self.db.sessions() as session:
            first = await _return(session, sale.id, return_receipt)
        if first is not None:
            if first.points != points:
                raise AlreadyExists("this return receipt was used for another return")
            return first
        if points > sale.points - sale.returned_points:
            raise InvalidArgument(f"at most {sale.points - sale.returned_points:,} points are left to return")
        await self.points.refund(
            sale.reservation_id,
            key=f"{sale.id}:return:{return_receipt}",
            amount=points,
            reason=f"Return at {sale.label}",
        )
        async with self.db.transaction() as session:
            row = await session.get(Sale, sale.id, with_for_update=True)
            assert row is not None
            first = await _return(session, sale.id, return_receipt)
            if first is not None:
                return first
            record = Return(
                id=f"ret_{uuid.uuid4().hex[:20]}",
                sale_id=sale.id,
                return_receipt=return_receipt,
                points=points,
                created_at=now,
            )
            row.returned_points += points
            session.add_all([row, record])
        return record

    async def _return_money(self, sale: Sale, return_receipt: str, amount_minor: int, now: datetime) -> Return:
        async with self.db.transaction() as session:
            row = await session.get(Sale, sale.id, with_for_update=True)
            assert row is not None
            first = await _return(session, sale.id, return_receipt)
            if first is not None:
                if first.amount_minor != amount_minor:
                    raise AlreadyExists("this return receipt was used for another return")
                return first
            if amount_minor > row.amount_minor - row.returned_minor:
                raise InvalidArgument(f"at most {row.amount_minor - row.returned_minor:,} is left to return")
            record = Return(
                id=f"ret_{uuid.uuid4().hex[:20]}",
                sale_id=row.id,
                return_receipt=return_receipt,
                amount_minor=amount_minor,
                created_at=now,
            )
            row.returned_minor += amount_minor
            if row.returned_minor == row.amount_minor and row.status == PENDING:
                row.status = RETURNED
            session.add_all([row, record])
            await self._publish(session, row, "refunded", refund_reference=return_receipt, refunded_minor=amount_minor)
        return record

    # ---- the return window --------------------------------------------------------------------
    async def grant_due(self, limit: int = 500) -> int:
        """Grant the earnings whose return window has ended (`partner.purchase.completed`)."""
        now = self.clock.now()
        async with self.db.transaction() as session:
            due = (
                await session.exec(
                    select(Sale)
                    .where(col(Sale.kind) == EARN, col(Sale.status) == PENDING, col(Sale.completes_at) <= now)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for sale in due:
                sale.status = GRANTED
                session.add(sale)
                await self._publish(session, sale, "completed")
        return len(due)

    # ---- helpers ------------------------------------------------------------------------------
    async def _use_code(
        self, session: AsyncSession, store: Store, terminal: str, receipt: str, scanned: str, now: datetime
    ) -> Card:
        parsed = codes.parse(scanned)
        if parsed is None:
            raise CodeRefused("that is not a Kizuna card code; ask the member to show it again")
        number, code = parsed
        card = await session.get(Card, number, with_for_update=True)
        counter = (
            None if card is None else codes.matching_counter(bytes.fromhex(card.secret_hex), code, now.timestamp())
        )
        if card is None or counter is None:
            raise CodeRefused("this code is not valid (expired or revoked); ask the member to show a new one")
        this_receipt = f"{store.id}/{terminal}/{receipt}"
        used = await session.get(CodeUse, (number, counter))
        if used is not None:
            if used.sale_id != this_receipt:
                raise CodeRefused("this code was used already; ask the member to show a new one")
            return card
        minute_ago = now - timedelta(minutes=1)
        per_card = await _count(session, col(Sale.member_id) == card.member_id, minute_ago)
        if per_card >= self.limits.per_card_per_minute:
            raise TooMany("too many transactions with this card just now; try again in a minute")
        per_store = await _count(session, col(Sale.store_id) == store.id, minute_ago)
        if per_store >= self.limits.per_store_per_minute:
            raise TooMany("too many transactions at this store just now; try again in a minute")
        session.add(CodeUse(card_number=number, counter=counter, sale_id=this_receipt, used_at=now))
        return card

    async def _fail(self, sale_id: str, reservation: str) -> None:
        if reservation:
            await self.points.void(reservation, key=f"{sale_id}:void")
        async with self.db.transaction() as session:
            row = await session.get(Sale, sale_id, with_for_update=True)
            if row is not None and row.status == PENDING:
                row.status = FAILED
                session.add(row)

    async def _publish(
        self,
        session: AsyncSession,
        sale: Sale,
        stage: str,
        *,
        bonus: int = 0,
        refund_reference: str = "",
        refunded_minor: int = 0,
    ) -> None:
        await publish_purchase(
            session,
            SERVICE,
            stage,
            reference=sale.id,
            member_id=sale.member_id,
            paid_minor=sale.amount_minor,
            currency=sale.currency,
            label=sale.label,
            category="partner",
            merchant_bonus_points=bonus,
            refund_reference=refund_reference,
            refunded_minor=refunded_minor,
            at=self.clock.now(),
        )


def _check_ids(terminal: str, receipt: str) -> None:
    check_key(terminal, "terminal")
    check_key(receipt, "receipt")
    if len(terminal) > 64 or len(receipt) > 64:
        raise InvalidArgument("terminal and receipt are at most 64 characters")


def _same(sale: Sale, *, amount_minor: int | None = None, points: int | None = None) -> None:
    if (amount_minor is not None and sale.amount_minor != amount_minor) or (
        points is not None and sale.points != points
    ):
        raise AlreadyExists("this receipt was already used for another transaction")


async def _sale(session: AsyncSession, store_id: str, terminal: str, receipt: str, kind: str) -> Sale | None:
    return (
        await session.exec(
            select(Sale).where(
                col(Sale.store_id) == store_id,
                col(Sale.terminal) == terminal,
                col(Sale.receipt) == receipt,
                col(Sale.kind) == kind,
            )
        )
    ).first()


async def _return(session: AsyncSession, sale_id: str, return_receipt: str) -> Return | None:
    return (
        await session.exec(
            select(Return).where(col(Return.sale_id) == sale_id, col(Return.return_receipt) == return_receipt)
        )
    ).first()


async def _count(session: AsyncSession, condition: ColumnElement[bool], since: datetime) -> int:
    total = await session.exec(select(func.count()).select_from(Sale).where(condition, col(Sale.created_at) >= since))
    return int(total.one())
