"""The rolling expiry kept once per member (points_wallet.rolling_expires_at): a credit no longer
rewrites the member's lots, yet every rolling lot follows the latest credit, lapses together, and a
lapsed expiry stays lapsed for the points it took; and the migration that moves the data there."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from kizuna.kit import migrations
from kizuna.kit.db import Database
from kizuna.points.v1 import points_pb2 as pb
from points import ledger
from points.expiry import run_expiry
from points.service import service
from sqlalchemy import text

from .pointskit import Points, key
from .test_points_api import status_of

DAY = timedelta(days=1)


async def _lots(points: Points, member: str) -> list[tuple[bool, datetime]]:
    async with points.runtime.db.sessions() as session:
        conn = await session.connection()
        rows = await conn.execute(
            text("SELECT rolling, expires_at FROM points_lot WHERE member_id = :m ORDER BY id"), {"m": member}
        )
        return [(bool(r[0]), r[1]) for r in rows]


async def test_a_credit_moves_the_rolling_expiry_once_not_every_lot(points: Points) -> None:
    await points.register("m")
    start = points.clock.now()
    for _ in range(5):
        await points.credit("m", 10)
        points.clock.advance(30 * DAY)
    before = await _lots(points, "m")
    await points.credit("m", 1)
    after = await _lots(points, "m")
    # The earlier lots' rows are not rewritten by the credit...
    assert after[:5] == before
    assert len({at for _, at in before}) == 5
    # ...yet all of them expire with the latest credit's rolling expiry, together.
    last = ledger.add_months(points.clock.now(), 12)
    balance = await points.balance("m")
    assert balance.expiring_soon.amount == 51
    assert abs(balance.expiring_soon.expires_at.ToDatetime(tzinfo=UTC) - last) < timedelta(seconds=5)
    points.clock.advance(last - points.clock.now() - DAY)
    assert (await points.balance("m")).total == 51  # the first lot's own date (start + 12 months) is long past
    assert start + 365 * DAY < points.clock.now()
    points.clock.advance(2 * DAY)
    assert await run_expiry(points.runtime.db, points.clock.now()) == 1
    balance = await points.balance("m")
    assert (balance.total, balance.regular) == (0, 0)
    expired = [e.amount for e in (await points.entries("m")).entries if e.kind == pb.ENTRY_KIND_EXPIRY]
    assert sorted(expired) == [-10] * 5 + [-1]


async def test_a_lapsed_rolling_expiry_stays_lapsed_for_the_points_it_took(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    spent = await points.spend("m", 40)
    points.clock.advance(400 * DAY)  # 12 months without earning: the 60 left expire
    assert (await points.balance("m")).total == 0
    await points.credit("m", 10)  # a new rolling expiry, for the new points only
    balance = await points.balance("m")
    assert (balance.total, balance.expiring_soon.amount) == (10, 10)
    # The 40 spent came from a lot that expired meanwhile: a refund does not bring them back.
    refund = await points.stub.Refund(
        pb.RefundRequest(capture_entry_id=spent.entry_id, idempotency_key=key()), metadata=points.auth()
    )
    assert (refund.refunded, refund.expired_not_returned) == (0, 40)
    assert (await points.balance("m")).total == 10
    # A hold on the new points, then a timed-out release, returns them with the new expiry.
    held = await points.reserve("m", 10, ttl=60)
    points.clock.advance(61 * timedelta(seconds=1))
    capture = pb.CaptureRequest(reservation_id=held.reservation_id, idempotency_key=key())
    assert await status_of(points.stub.Capture(capture, metadata=points.auth())) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await points.balance("m")).total == 10


async def test_the_migration_keeps_each_lots_expiry(database_url: str, tmp_path: Path) -> None:
    versions = service.migrations_dir
    await asyncio.to_thread(migrations.upgrade, database_url, versions, "points_0007")
    now = datetime.now(UTC).replace(microsecond=0)
    lapsed, rolling, fixed = now - 10 * DAY, now + 200 * DAY, now + 30 * DAY
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            conn = await session.connection()
            await conn.execute(
                text(
                    "INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month,"
                    " earned_this_month, created_at) VALUES ('a', 'active', 6, 0, 0, '2026-01', 0, :now),"
                    " ('b', 'active', 0, 0, 0, '2026-01', 0, :now)"
                ),
                {"now": now},
            )
            for lot_id, is_rolling, at in (
                (1, True, rolling),
                (2, True, rolling),
                (3, True, lapsed),
                (4, False, fixed),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO points_lot (id, member_id, entry_pk, kind, rolling, amount, remaining,"
                        " clawed_back, expired, source_service, expires_at, created_at)"
                        " VALUES (:id, 'a', :id, 'regular', :rolling, 1, 1, 0, 0, 'shop', :at, :now)"
                    ),
                    {"id": lot_id, "rolling": is_rolling, "at": at, "now": now},
                )
    finally:
        await db.dispose()
    await asyncio.to_thread(migrations.upgrade, database_url, versions)
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            conn = await session.connection()
            wallets = {
                r[0]: r[1] for r in await conn.execute(text("SELECT member_id, rolling_expires_at FROM points_wallet"))
            }
            lots = [
                (r[0], bool(r[1])) for r in await conn.execute(text("SELECT id, rolling FROM points_lot ORDER BY id"))
            ]
    finally:
        await db.dispose()
    stamp = wallets["a"] if isinstance(wallets["a"], datetime) else datetime.fromisoformat(str(wallets["a"]))
    assert stamp.replace(tzinfo=UTC) == rolling
    assert wallets["b"] is None  # no rolling lots: set by the first credit
    # The lot that had lapsed before the last credit keeps its own date as a fixed one.
    assert lots == [(1, True), (2, True), (3, False), (4, False)]


async def test_reserve_takes_lots_in_spend_order_beyond_the_first_it_reads(points: Points) -> None:
    await points.register("m")
    now = points.clock.now()
    for n in range(12):
        await points.credit("m", 5)  # regular, rolling
        await points.credit("m", 5, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + (30 - n) * DAY)
    # 24 lots: the 12 limited-time lots (60 points, the soonest to expire first) are spent first.
    held = await points.reserve("m", 70)
    balance = await points.balance("m")
    assert (balance.total, balance.limited_time, balance.regular, balance.pending) == (50, 0, 50, 70)
    await points.capture(held.reservation_id)
    # More than the member has: refused with what they have, nothing held.
    call = points.stub.Reserve(
        pb.ReserveRequest(member_id="m", amount=51, idempotency_key=key()), metadata=points.auth(member="m")
    )
    try:
        await call
        raise AssertionError("a reserve above the balance was accepted")
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.details() == "insufficient points: 51 requested, 50 available"
    assert (await points.balance("m")).pending == 0
    # Expiring soonest first among limited-time lots: after 20 days, nothing limited is left to expire.
    points.clock.advance(40 * DAY)
    assert (await points.balance("m")).total == 50
