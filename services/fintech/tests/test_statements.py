"""The monthly statement closing job, with a frozen clock across month boundaries: what a member
sees on the statement, closing exactly once however many replicas run the job, and purchases
after a closing landing on the next statement."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fintech.statements import close_due_statements
from kizuna.common.v1.common_pb2 import Money
from kizuna.fintech.v1 import fintech_pb2
from kizuna.kit.clock import FrozenClock
from kizuna.kit.db import Database
from kizuna.kit.testing import wait_until

from .fintech_world import FintechClient, new_member

# Dates in a future year: the service's job has already looked at the real clock once when it
# started, and a card opened in the future is never due by the real clock's month.
YEAR = datetime.now(UTC).year + 1


def at(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(YEAR, month, day, hour, minute, second, tzinfo=UTC)


async def purchase(fintech: FintechClient, member: str, amount: int, merchant: str) -> str:
    auth = await fintech.authorize(member, amount, merchant=merchant)
    assert auth.status == fintech_pb2.AUTHORIZATION_STATUS_APPROVED, auth
    return (await fintech.capture(auth.authorization_id)).capture_id


async def statements_of(fintech: FintechClient, member: str) -> list[dict[str, Any]]:
    resp = await fintech.http.get("/api/card/statements", headers=fintech.member_headers(member))
    assert resp.status_code == 200, resp.text
    return sorted(resp.json(), key=lambda s: s["closing_at"])


async def test_the_job_closes_last_month_once_across_replicas_and_later_purchases_wait(
    fintech: FintechClient, database_url: str
) -> None:
    clock = FrozenClock(at(1, 20, 9, 30))
    fintech.runtime.clock = clock
    member = new_member()
    await fintech.apply_card(member)
    coffee = await purchase(fintech, member, 12_000, "cafe")
    clock.set(at(1, 25, 12))
    refund = await fintech.payments.Refund(
        fintech_pb2.RefundRequest(
            capture_id=coffee, amount=Money(amount_minor=2_000, currency="JPY"), idempotency_key="part-refund"
        ),
        metadata=fintech.pay_metadata(None),
        timeout=10,
    )
    clock.set(at(1, 31, 23, 59, 59))
    books = await purchase(fintech, member, 3_500, "books")
    clock.set(at(2, 1, 0, 0, 1))  # one second into February: after the closing
    february = await purchase(fintech, member, 4_000, "taxi")

    # Two replicas (each its own connection pool) run the job at the same moment, then again.
    clock.set(at(2, 3, 6))
    replica_db = Database(database_url)
    replica = dataclasses.replace(fintech.ctx, db=replica_db)
    try:
        closed_at_once = await asyncio.gather(close_due_statements(fintech.ctx), close_due_statements(replica))
        closed_again = [await close_due_statements(fintech.ctx), await close_due_statements(replica)]
    finally:
        await replica_db.dispose()
    assert sorted(closed_at_once) == [0, 1] and closed_again == [0, 0]

    [january] = await statements_of(fintech, member)
    assert datetime.fromisoformat(january["period_start"]) == at(1, 20, 9, 30)
    assert datetime.fromisoformat(january["closing_at"]) == at(2, 1)
    assert date.fromisoformat(january["due_on"]) == date(YEAR, 2, 1) + timedelta(days=27)
    assert [(line["txn_id"], line["amount_minor"]) for line in january["lines"]] == [
        (coffee, 12_000),
        (refund.refund_id, -2_000),
        (books, 3_500),
    ]
    assert (january["total_minor"], january["due_minor"], january["status"]) == (13_500, 13_500, "open")

    # The next month's run bills what was posted after the first closing, and only that.
    clock.set(at(3, 1, 0, 5))
    assert await close_due_statements(fintech.ctx) == 1
    january_again, march = await statements_of(fintech, member)
    assert january_again == january
    assert datetime.fromisoformat(march["period_start"]) == at(2, 1)
    assert datetime.fromisoformat(march["closing_at"]) == at(3, 1)
    assert date.fromisoformat(march["due_on"]) == date(YEAR, 3, 1) + timedelta(days=27)
    assert [(line["txn_id"], line["amount_minor"]) for line in march["lines"]] == [(february, 4_000)]
    assert march["total_minor"] == 4_000


@pytest.mark.parametrize("fintech_overrides", [{"statement_interval_seconds": 0.05}])
async def test_the_running_service_closes_statements_by_itself(fintech: FintechClient) -> None:
    clock = FrozenClock(at(4, 10, 15))
    fintech.runtime.clock = clock
    member = new_member()
    await fintech.apply_card(member)
    april = await purchase(fintech, member, 7_000, "cafe")
    assert await statements_of(fintech, member) == []

    clock.set(at(5, 1, 0, 0, 30))
    [statement] = await wait_until(lambda: statements_of(fintech, member))
    assert datetime.fromisoformat(statement["closing_at"]) == at(5, 1)
    assert [line["txn_id"] for line in statement["lines"]] == [april]
    assert statement["total_minor"] == 7_000
