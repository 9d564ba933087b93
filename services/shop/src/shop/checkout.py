"""Checkout as a saga with compensation, its state persisted so that a crash is recoverable.

    started ──reserve points──authorize card──▶ authorized ──take stock + create order──▶ completed
       └──────────── any failure ───────────▶ compensating ──void card, void points──▶ failed

Remote steps use idempotency keys derived from the checkout id, so a retry (or the recovery job)
never holds twice. Taking the stock and creating the order happen in one local transaction with
conditional updates (`stock >= qty`), so stock is never oversold and never left decremented by a
failed checkout. The job `recover_stuck` finishes checkouts whose holds are all in place and
compensates the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kizuna.kit import idempotency
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.payments import PaymentsClient
from kizuna.kit.points import PointsClient
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from shop import catalogue
from shop.cart import lines as cart_lines
from shop.models import CartItem, Checkout, Order, OrderLine, Product, new_id
from shop.order_events import publish_order
from shop.pricing import PricedLine, merchant_payout, quote
from shop.settings import Settings

log = logging.getLogger("shop.checkout")

STARTED, AUTHORIZED, COMPLETED, COMPENSATING, FAILED = "started", "authorized", "completed", "compensating", "failed"


class CardDeclined(FailedPrecondition):
    code = "card_declined"


class OutOfStock(FailedPrecondition):
    code = "out_of_stock"


def _remembered(checkout: Checkout) -> DomainError:
    """The error a failed checkout ended with, raised again for a retry with its key."""
    remembered = {"error": checkout.error_code, "message": checkout.error_message or "checkout failed"}
    return idempotency.refusal(remembered, known=(CardDeclined, OutOfStock))


def _request(merchant_id: str, points: int) -> dict[str, Any]:
    """What a checkout asks for, without its key (its idempotency fingerprint)."""
    return {"merchant_id": merchant_id, "points": points}


@dataclass
class CheckoutSaga:
    db: Database
    points: PointsClient
    payments: PaymentsClient
    settings: Settings
    clock: Clock

    # ---- the happy path, step by step ------------------------------------------------------------

    async def checkout(
        self, *, member_id: str, member_token: str, merchant_id: str | None, points: int, idempotency_key: str
    ) -> Checkout:
        """Pay for the cart's products of one merchant with `points` and the card; returns the checkout."""
        key = idempotency.check_key(idempotency_key)
        if points < 0:
            raise InvalidArgument(f"points must not be negative (got {points})")
        previous = await self._previous(member_id, key, merchant_id, points)
        if previous is not None:
            return previous
        checkout = await self._begin(member_id, merchant_id, points, key)
        if checkout.state != STARTED:  # a concurrent request with the same key won the insert
            return await self._replay(checkout, merchant_id, points)
        try:
            await self._hold(checkout, member_token)
            return await self._finish(checkout)
        except DomainError as exc:
            await self._compensate(checkout, exc)
            raise

    async def _previous(self, member_id: str, key: str, merchant_id: str | None, points: int) -> Checkout | None:
        async with self.db.sessions() as session:
            found = (
                await session.exec(
                    select(Checkout).where(Checkout.member_id == member_id, Checkout.idempotency_key == key)
                )
            ).first()
        return None if found is None else await self._replay(found, merchant_id, points)

    async def _replay(self, found: Checkout, merchant_id: str | None, points: int) -> Checkout:
        idempotency.ensure_same(
            found.request_fingerprint, _request(merchant_id or found.merchant_id, points), found.idempotency_key
        )
        # Compensating: it failed and its holds are being released; a retry gets the failure, not a 200.
        if found.state in (FAILED, COMPENSATING):
            raise _remembered(found)
        return found

    async def _begin(self, member_id: str, merchant_id: str | None, points: int, key: str) -> Checkout:
        """Validate the cart and record the saga (no remote effect yet): bad input changes nothing."""
        now = self.clock.now()
        async with self.db.sessions() as session:
            in_cart = await cart_lines(session, member_id)
            merchants = sorted({line.merchant.id for line in in_cart})
            if merchant_id is None:
                if len(merchants) > 1:
                    raise InvalidArgument(
                        f"the cart holds products of several merchants {merchants}; "
                        "choose merchant_id (each merchant is one order)"
                    )
                merchant_id = merchants[0] if merchants else ""
            chosen = [line for line in in_cart if line.merchant.id == merchant_id]
            if not chosen:
                raise FailedPrecondition(
                    "the cart has no products to check out" + (f" from merchant {merchant_id}" if merchant_id else "")
                )
            merchant = chosen[0].merchant
            if merchant.status != catalogue.ACTIVE:
                raise FailedPrecondition(f"merchant {merchant.id} is not active; its products cannot be bought")
            for line in chosen:
                if not line.product.active:
                    raise FailedPrecondition(f"product {line.product.id} is no longer on sale")
                if line.item.quantity > line.product.stock:
                    raise OutOfStock(f"only {line.product.stock} of {line.product.title!r} left")
            rules = await catalogue.campaign_rules(session, merchant.id, now)
        priced = [
            PricedLine(
                line.product.id, line.product.title, line.item.quantity, line.product.price_minor, line.product.currency
            )
            for line in chosen
        ]
        balance = await self.points.balance(member_id) if points > 0 else None
        q = quote(
            priced, points=points, balance=balance, commission_bp=self.settings.commission_bp, campaigns=rules, at=now
        )
        checkout = Checkout(
            id=new_id("chk"),
            member_id=member_id,
            merchant_id=merchant.id,
            idempotency_key=key,
            request_fingerprint=idempotency.fingerprint(_request(merchant.id, points)),
            order_id=new_id("ord"),
            state=STARTED,
            lines=[
                {
                    "product_id": ln.product_id,
                    "title": ln.title,
                    "quantity": ln.quantity,
                    "unit_price_minor": ln.unit_price_minor,
                }
                for ln in q.lines
            ],
            total_minor=q.total_minor,
            currency=q.currency,
            points=q.points,
            card_minor=q.card_minor,
            commission_minor=q.commission_minor,
            bonus_points=q.bonus_points,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.transaction() as session:
                session.add(checkout)
        except IntegrityError:
            async with self.db.sessions() as session:
                found = (
                    await session.exec(
                        select(Checkout).where(Checkout.member_id == member_id, Checkout.idempotency_key == key)
                    )
                ).first()
            if found is None:
                raise
            return found
        return checkout

    async def _hold(self, checkout: Checkout, member_token: str) -> None:
        """Reserve the points, then authorize the card for the rest; each hold is recorded at once."""
        merchant_name = await self._merchant_name(checkout.merchant_id)
        if checkout.points > 0 and checkout.reservation_id is None:
            checkout.reservation_id = await self.points.reserve(
                member_id=checkout.member_id,
                amount=checkout.points,
                member_token=member_token,
                ttl_seconds=self.settings.points_hold_seconds,
                reason=f"Order {checkout.order_id} at {merchant_name}",
                ref=checkout.order_id,
                key=f"{checkout.id}:reserve",
            )
            await self._save(checkout, reservation_id=checkout.reservation_id)
        if checkout.card_minor > 0 and checkout.authorization_id is None:
            auth = await self.payments.authorize(
                member_id=checkout.member_id,
                amount_minor=checkout.card_minor,
                currency=checkout.currency,
                merchant_id=checkout.merchant_id,
                merchant_name=merchant_name,
                key=f"{checkout.id}:authorize",
                member_token=member_token,
            )
            if not auth.approved:
                raise CardDeclined(f"the card was declined ({auth.decline_reason})")
            checkout.authorization_id = auth.authorization_id
            await self._save(checkout, authorization_id=auth.authorization_id)
        checkout.state = AUTHORIZED
        await self._save(checkout, state=AUTHORIZED)

    async def _finish(self, checkout: Checkout) -> Checkout:
        """Take the stock and create the paid order, in one transaction; OutOfStock rolls it all back."""
        now = self.clock.now()
        async with self.db.transaction() as session:
            claimed = await session.exec(
                update(Checkout)
                .where(col(Checkout.id) == checkout.id, col(Checkout.state) == AUTHORIZED)
                .values(state=COMPLETED, updated_at=now)
            )
            if claimed.rowcount != 1:
                raise FailedPrecondition(f"checkout {checkout.id} is being handled elsewhere")
            merchant = await catalogue.get_merchant(session, checkout.merchant_id)
            if merchant.status != catalogue.ACTIVE:
                raise FailedPrecondition(f"merchant {merchant.id} is not active; its products cannot be bought")
            for line in checkout.lines:
                # The conditional update is the stock check: it cannot go below zero, whatever the
                # concurrency (PostgreSQL re-checks the predicate on the locked row; SQLite serializes).
                taken = await session.exec(
                    update(Product)
                    .where(
                        col(Product.id) == line["product_id"],
                        col(Product.active).is_(True),
                        col(Product.stock) >= line["quantity"],
                    )
                    .values(stock=col(Product.stock) - line["quantity"])
                )
                if taken.rowcount != 1:
                    raise OutOfStock(f"{line['title']!r} sold out before the order could be placed")
            order = Order(
                id=checkout.order_id,
                checkout_id=checkout.id,
                member_id=checkout.member_id,
                merchant_id=checkout.merchant_id,
                status="paid",
                total_minor=checkout.total_minor,
                currency=checkout.currency,
                points_used=checkout.points,
                card_minor=checkout.card_minor,
                commission_minor=checkout.commission_minor,
                bonus_points=checkout.bonus_points,
                merchant_payout_minor=merchant_payout(
                    checkout.total_minor, checkout.commission_minor, checkout.bonus_points
                ),
                reservation_id=checkout.reservation_id,
                authorization_id=checkout.authorization_id,
                created_at=now,
                updated_at=now,
                ship_by=now + timedelta(days=self.settings.ship_by_days),
            )
            session.add(order)
            await session.flush()
            for line in checkout.lines:
                session.add(OrderLine(order_id=order.id, **line))
            await session.exec(
                delete(CartItem).where(
                    col(CartItem.member_id) == checkout.member_id,
                    col(CartItem.product_id).in_([line["product_id"] for line in checkout.lines]),
                )
            )
            await publish_order(session, order, "shop.order.paid", now)
        checkout.state = COMPLETED
        return checkout

    # ---- compensation --------------------------------------------------------------------------

    async def _compensate(self, checkout: Checkout, error: DomainError) -> None:
        """Release every hold the checkout took; the checkout ends `failed` with the error remembered.

        If a peer cannot be reached the checkout stays `compensating` and the recovery job retries.
        """
        checkout.error_code, checkout.error_message = error.code, error.message
        await self._save(checkout, state=COMPENSATING, error_code=error.code, error_message=error.message)
        try:
            await self._release(checkout)
        except DomainError:
            log.exception("compensation incomplete; the recovery job will retry", extra={"checkout_id": checkout.id})
            return
        await self._save(checkout, state=FAILED)
        checkout.state = FAILED

    async def _release(self, checkout: Checkout) -> None:
        if checkout.authorization_id:
            await self.payments.void(checkout.authorization_id, f"{checkout.id}:void-card")
        if checkout.reservation_id:
            await self.points.void(checkout.reservation_id, f"{checkout.id}:void-points")

    # ---- recovery ------------------------------------------------------------------------------

    async def recover_stuck(self) -> int:
        """Finish or compensate checkouts that stopped moving (a crash mid-checkout); returns how many."""
        cutoff = self.clock.now() - timedelta(seconds=self.settings.checkout_stuck_seconds)
        async with self.db.sessions() as session:
            stuck = list(
                (
                    await session.exec(
                        select(Checkout)
                        .where(
                            col(Checkout.state).in_([STARTED, AUTHORIZED, COMPENSATING]),
                            col(Checkout.updated_at) < cutoff,
                        )
                        .limit(100)
                    )
                ).all()
            )
        for checkout in stuck:
            try:
                await self._recover(checkout)
            except DomainError:
                log.exception("could not recover checkout", extra={"checkout_id": checkout.id})
        return len(stuck)

    async def _recover(self, checkout: Checkout) -> None:
        if checkout.state == AUTHORIZED:
            try:
                await self._finish(checkout)
                return
            except DomainError as exc:
                await self._compensate(checkout, exc)
                return
        # A hold made but not recorded (a crash between the peer's answer and our save) cannot be
        # looked up again: asking for it means repeating the request, which needs the member's token,
        # and the recovery job acts without one. Points and fintech release such holds at their
        # expiry (points_hold_seconds, fintech's authorization TTL).
        error = FailedPrecondition(
            checkout.error_message or "checkout interrupted before it finished; nothing was charged"
        )
        if checkout.error_code:
            error.code = checkout.error_code
        await self._compensate(checkout, error)

    # ---- storage -------------------------------------------------------------------------------

    async def _save(self, checkout: Checkout, **values: object) -> None:
        async with self.db.transaction() as session:
            await session.exec(
                update(Checkout).where(col(Checkout.id) == checkout.id).values(updated_at=self.clock.now(), **values)
            )

    async def _merchant_name(self, merchant_id: str) -> str:
        async with self.db.sessions() as session:
            try:
                return (await catalogue.get_merchant(session, merchant_id)).name
            except NotFound:
                return merchant_id
