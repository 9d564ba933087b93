"""The earning contract in any order: random permutations and duplications of each purchase's
events (paid, completed, partial refunds, cancel) for many members leave exactly the ledger the
natural order leaves, and the audit passes. Also with two points processes consuming at once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kizuna.common.v1 import common_pb2
from kizuna.kit import migrations
from kizuna.kit.db import Database
from kizuna.kit.testing import TestIssuer, wait_until
from kizuna.points.v1 import earning_pb2 as contract
from kizuna.points.v1 import points_pb2_grpc
from points import audit, earning, ledger, wallets
from points.balances import get_balance
from points.ledger import Clock
from points.models import Entry
from points.service import service
from sqlmodel import select

from .pointskit import Points, points_settings, reset_streams

pytestmark = pytest.mark.long(95)

SERVICES = ("shop", "travel", "fintech")
_migrated: set[str] = set()


@dataclass(frozen=True)
class Plan:
    """One purchase's life in its natural order."""

    service: str
    ref: str
    member: str
    paid: int
    completed: bool
    refunds: tuple[int, ...]
    cancelled: bool

    def purchase(self, member_id: str, prefix: str = "") -> contract.Purchase:
        money = common_pb2.Money(amount_minor=self.paid, currency="JPY")
        return contract.Purchase(reference=prefix + self.ref, member_id=member_id, paid=money, label=self.ref)

    def events(self, member_id: str, prefix: str = "") -> list[tuple[str, Any]]:
        """(stage, message) in the natural order: paid, completed, the refunds, a cancel."""
        bought = self.purchase(member_id, prefix)
        out: list[tuple[str, Any]] = [("paid", contract.PurchasePaid(purchase=bought))]
        if self.completed:
            out.append(("completed", contract.PurchaseCompleted(purchase=bought)))
        for i, amount in enumerate(self.refunds):
            refunded = common_pb2.Money(amount_minor=amount, currency="JPY")
            out.append(
                ("refunded", contract.PurchaseRefunded(purchase=bought, refund_reference=f"r{i}", refunded=refunded))
            )
        if self.cancelled:
            out.append(("cancelled", contract.PurchaseCancelled(purchase=bought)))
        return out


@st.composite
def plans(draw: Any) -> list[Plan]:
    found = []
    for m in range(draw(st.integers(2, 4))):
        for p in range(draw(st.integers(1, 3))):
            paid = draw(st.integers(100, 60_000))
            refunds = draw(st.lists(st.integers(1, max(paid // 2, 1)), max_size=3))
            found.append(
                Plan(
                    service=draw(st.sampled_from(SERVICES)),
                    ref=f"p{m}-{p}",
                    member=f"m{m}",
                    paid=paid,
                    completed=draw(st.booleans()),
                    refunds=tuple(refunds),
                    cancelled=draw(st.integers(0, 3)) == 0,
                )
            )
    return found


def _settings() -> Any:
    # No multiplier for other services used: across purchases (not within one) the order is free,
    # so which services were "used this month" at a quote would differ between the runs.
    return points_settings("nats://unused", "sqlite://", "https://issuer.invalid", earn_bonus_bp_per_service=0)


async def _apply_all(db: Database, events: Sequence[tuple[Plan, str, Any, str]], clock: Clock) -> None:
    conf = _settings()
    for plan, stage, message, key in events:
        earner = conf.earner(plan.service)
        assert earner is not None
        async with db.transaction() as session:
            await earning.apply(conf, session, clock.now(), earner, stage, message, key)


async def _ledger_of(db: Database, member_id: str, clock: Clock) -> tuple[Any, ...]:
    balance = await get_balance(db, member_id, clock.now())
    async with db.sessions() as session:
        rows = (await session.exec(select(Entry).where(Entry.member_id == member_id))).all()
    net: dict[tuple[str, str], int] = {}
    for entry in rows:
        where = (entry.source_service, entry.source_ref)
        net[where] = net.get(where, 0) + entry.amount
    # Per purchase, by its reference without the run's prefix.
    per_purchase = tuple(sorted(((svc, ref.split("-", 2)[2]), v) for (svc, ref), v in net.items() if v))
    return (balance.total, balance.regular, balance.limited_time, balance.earning, balance.debt, per_purchase)


async def compare(database_url: str, purchases: list[Plan], seed: int) -> None:
    if database_url not in _migrated:
        await asyncio.to_thread(migrations.upgrade, database_url, service.migrations_dir)
        _migrated.add(database_url)
    db = Database(database_url)
    clock = Clock()
    run = uuid.uuid4().hex[:8]
    natural_ids = {p.member: f"{p.member}-n-{run}" for p in purchases}
    shuffled_ids = {p.member: f"{p.member}-s-{run}" for p in purchases}
    try:
        async with db.transaction() as session:
            for member_id in [*natural_ids.values(), *shuffled_ids.values()]:
                await wallets.register_member(session, member_id, clock.now())
        natural = [
            (p, stage, msg, f"n-{run}-{p.ref}-{i}")
            for p in purchases
            for i, (stage, msg) in enumerate(p.events(natural_ids[p.member], f"n-{run}-"))
        ]
        await _apply_all(db, natural, clock)
        # The same events, for other members, shuffled across every purchase, some of them twice.
        rng = random.Random(seed)
        shuffled = [
            (p, stage, msg, f"s-{run}-{p.ref}-{i}")
            for p in purchases
            for i, (stage, msg) in enumerate(p.events(shuffled_ids[p.member], f"s-{run}-"))
        ]
        shuffled += [rng.choice(shuffled) for _ in range(rng.randint(0, len(shuffled)))]
        rng.shuffle(shuffled)
        await _apply_all(db, shuffled, clock)
        for member in natural_ids:
            expected = await _ledger_of(db, natural_ids[member], clock)
            got = await _ledger_of(db, shuffled_ids[member], clock)
            assert got == expected, (member, [(p.ref, s) for p, s, _, _ in shuffled if p.member == member])
        async with db.sessions() as session:
            report = await audit.audit(session)
        assert report.ok, report.problems
    finally:
        await db.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(purchases=plans(), seed=st.integers(0, 2**32))
def test_any_order_and_redelivery_of_purchase_events_leaves_the_natural_ledger(
    database_url: str, purchases: list[Plan], seed: int
) -> None:
    asyncio.run(compare(database_url, purchases, seed))


def expected_points(plan: Plan) -> tuple[int, int]:
    """(granted, pending) a purchase leaves, at 1% and no multiplier."""
    if plan.cancelled:
        return 0, 0
    earned = ledger.currency_units(plan.paid, "JPY") * 100 // 10_000
    refunded = min(sum(plan.refunds), plan.paid)
    left = earned - ledger.proportion(earned, refunded, plan.paid)
    return (left, 0) if plan.completed else (0, left)


async def test_two_points_processes_consuming_at_once_give_the_natural_result(
    nats_url: str, database_url: str, test_issuer: TestIssuer
) -> None:
    await reset_streams(nats_url, "POINTS", "SHOP", "TRAVEL", "FINTECH", "IDENTITY", "DEADLETTER")
    rng = random.Random(14)
    run = uuid.uuid4().hex[:6]
    purchases = [
        Plan(
            service=rng.choice(SERVICES),
            ref=f"q{run}-{i}",
            member=f"two-{run}-{i % 12}",
            paid=rng.randint(100, 60_000),
            completed=rng.random() < 0.7,
            refunds=tuple(rng.randint(1, 20_000) for _ in range(rng.randint(0, 2))),
            cancelled=rng.random() < 0.2,
        )
        for i in range(120)
    ]
    conf = points_settings(nats_url, database_url, test_issuer.issuer, earn_bonus_bp_per_service=0)
    async with service.running(conf) as first, service.running(conf) as second:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as channel:
            points = Points(first, points_pb2_grpc.PointsServiceStub(channel), test_issuer)
            await points.register(*{p.member for p in purchases})
            second.state["clock"] = first.state["clock"]
            events = [(p, stage, msg) for p in purchases for stage, msg in p.events(p.member)]
            events += [rng.choice(events) for _ in range(len(events) // 3)]  # redeliveries, same event id
            rng.shuffle(events)
            ids = {id(msg): f"evt-{uuid.uuid4().hex}" for _, _, msg in events}
            nc = await nats.connect(nats_url)
            try:
                js = nc.jetstream()
                for plan, stage, msg in events:
                    event_id = ids[id(msg)]
                    # A new NATS message id each time gets a repeat past JetStream's de-duplication.
                    headers = {"Nats-Msg-Id": uuid.uuid4().hex, "ce-id": event_id}
                    await js.publish(f"{plan.service}.purchase.{stage}", msg.SerializeToString(), headers=headers)

                async def drained() -> bool:
                    for s in SERVICES:
                        info = await js.consumer_info(s.upper(), f"points-{s}-earn")
                        if info.num_pending or info.num_ack_pending:
                            return False
                    return True

                await wait_until(drained, timeout=120)
            finally:
                await nc.close()
            members = sorted({p.member for p in purchases})
            for member in members:
                granted = sum(expected_points(p)[0] for p in purchases if p.member == member)
                pending = sum(expected_points(p)[1] for p in purchases if p.member == member)
                balance = await points.balance(member)
                assert (balance.total, balance.earning, balance.debt) == (granted, pending, 0), member
            report = await points.audit()
            assert report.ok, report.problems
