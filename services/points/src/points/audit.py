"""The ledger's invariants, checked from the stored rows, and the settlement report."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from kizuna.kit.db import one_moment
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import Select

from points.ledger import LIMITED_TIME
from points.models import Entry, Hold, Lot, Posting, Reservation, Wallet


@dataclass
class AuditReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    issued: int = 0
    clawed_back: int = 0
    redeemed: int = 0
    expired: int = 0
    outstanding: int = 0
    entries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def audit(session: AsyncSession) -> AuditReport:
    """Every entry sums to zero; every balance row equals the sum of its postings (and of its lots
    and holds, its limited-time and rolling points those of its lots); no balance is negative;
    issued - clawed back - redeemed - expired = outstanding.

    Call it on a session that has not queried yet (`one_moment`; another is refused): on PostgreSQL
    every query then reads one snapshot (REPEATABLE READ), so a credit committing between two of
    them cannot look like a balance that does not match its postings."""
    await one_moment(session)
    problems: list[str] = []
    unbalanced = (
        await session.exec(
            select(Posting.entry_pk, func.sum(Posting.amount))
            .group_by(col(Posting.entry_pk))
            .having(func.sum(Posting.amount) != 0)
        )
    ).all()
    problems += [f"entry #{pk} sums to {total}, not 0" for pk, total in unbalanced]
    member_sums = (
        await session.exec(
            select(Entry.id, Entry.amount, func.sum(Posting.amount))
            .join(Posting, col(Posting.entry_pk) == Entry.id)
            .where(col(Posting.account).like("member:%"))
            .group_by(col(Entry.id), col(Entry.amount))
        )
    ).all()
    problems += [f"entry #{pk} says {amount} but moves {moved}" for pk, amount, moved in member_sums if amount != moved]
    balances = dict(
        (await session.exec(select(Posting.account, func.sum(Posting.amount)).group_by(col(Posting.account)))).all()
    )
    balances = {account: int(total) for account, total in balances.items()}
    lots = await _by_member(session, select(Lot.member_id, func.sum(Lot.remaining)))
    # The wallet's split of its points, kept beside the balance: from the lots.
    limited = await _by_member(session, select(Lot.member_id, func.sum(Lot.remaining)).where(Lot.kind == LIMITED_TIME))
    rolling = await _by_member(
        session, select(Lot.member_id, func.sum(Lot.remaining)).where(col(Lot.rolling).is_(True))
    )
    holds = await _by_member(
        session,
        select(Reservation.member_id, func.sum(Hold.amount))
        .join(Reservation, col(Reservation.id) == Hold.reservation_pk)
        .where(Reservation.status == "open"),
    )
    outstanding = 0
    for wallet in (await session.exec(select(Wallet))).all():
        m = wallet.member_id
        for name, stored, posted in (
            ("available", wallet.available, balances.get(f"member:{m}:available", 0)),
            ("held", wallet.held, balances.get(f"member:{m}:held", 0)),
            ("debt", wallet.debt, -balances.get(f"member:{m}:debt", 0)),
        ):
            if stored != posted:
                problems.append(f"{m} {name} is {stored} but its postings sum to {posted}")
            if stored < 0:
                problems.append(f"{m} {name} is negative: {stored}")
        if wallet.available != lots[m]:
            problems.append(f"{m} available is {wallet.available} but its lots hold {lots[m]}")
        if wallet.limited_time != limited[m]:
            problems.append(f"{m} limited-time points are {wallet.limited_time} but its lots hold {limited[m]}")
        if wallet.rolling_points != rolling[m]:
            problems.append(f"{m} rolling points are {wallet.rolling_points} but its rolling lots hold {rolling[m]}")
        if wallet.held != holds[m]:
            problems.append(f"{m} held is {wallet.held} but its open reservations hold {holds[m]}")
        outstanding += wallet.available + wallet.held - wallet.debt
    if (await session.exec(select(func.count()).select_from(Lot).where(col(Lot.remaining) < 0))).one():
        problems.append("a lot has negative remaining points")
    by_kind = dict(
        (
            await session.exec(
                select(Entry.kind, func.sum(Posting.amount))
                .join(Posting, col(Posting.entry_pk) == Entry.id)
                .where(col(Posting.account).like("issued:%"))
                .group_by(col(Entry.kind))
            )
        ).all()
    )
    issued = -int(by_kind.get("credit", 0) or 0)
    clawed_back = int(by_kind.get("clawback", 0) or 0)
    redeemed = sum(v for a, v in balances.items() if a.startswith("redeemed:"))
    expired = balances.get("expired", 0)
    if issued - clawed_back - redeemed - expired != outstanding:
        problems.append(
            f"issued {issued} - clawed back {clawed_back} - redeemed {redeemed} - expired {expired} "
            f"!= outstanding {outstanding}"
        )
    entries = (await session.exec(select(func.count()).select_from(Entry))).one()
    return AuditReport(not problems, problems, issued, clawed_back, redeemed, expired, outstanding, int(entries))


async def _by_member(session: AsyncSession, query: Select[str, int]) -> defaultdict[str, int]:
    """`query`'s (member, sum) grouped by member; 0 for a member it does not name."""
    rows = (await session.exec(query.group_by(query.selected_columns[0]))).all()
    return defaultdict(int, {member: int(total) for member, total in rows})


async def settlement(session: AsyncSession, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per service, over [start, end): points issued (net of clawbacks) and redeemed (net of refunds)."""
    rows = (
        await session.exec(
            select(Posting.account, Entry.kind, func.sum(Posting.amount))
            .join(Entry, col(Entry.id) == Posting.entry_pk)
            .where(
                col(Entry.created_at) >= start,
                col(Entry.created_at) < end,
                col(Posting.account).like("issued:%") | col(Posting.account).like("redeemed:%"),
            )
            .group_by(col(Posting.account), col(Entry.kind))
        )
    ).all()
    report: dict[str, dict[str, Any]] = {}
    for account, kind, total in rows:
        side, _, service = account.partition(":")
        line = report.setdefault(
            service, {"service": service, "issued": 0, "clawed_back": 0, "redeemed": 0, "refunded": 0}
        )
        total = int(total)
        if side == "issued":
            line["issued" if kind == "credit" else "clawed_back"] += abs(total)
        else:
            line["redeemed" if kind == "spend" else "refunded"] += abs(total)
    for line in report.values():
        line["net_issued"] = line["issued"] - line["clawed_back"]
        line["net_redeemed"] = line["redeemed"] - line["refunded"]
    return sorted(report.values(), key=lambda line: line["service"])
