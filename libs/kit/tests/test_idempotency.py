"""The kit's idempotency keys on SQLite and PostgreSQL: the key's bounds, one fingerprint, the first
result replayed, refusals remembered (the service's own error types too), a different request under
the same key refused, and two racing identical requests taking effect once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kizuna.kit.clock import FrozenClock
from kizuna.kit.db import Database
from kizuna.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.idempotency import (
    IdempotencyRecordBase,
    check_key,
    ensure_same,
    fingerprint,
    refusal,
    refusal_of,
    run_once,
)
from sqlalchemy import Column, Integer, String
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession


class KeyRecord(IdempotencyRecordBase, table=True):
    __tablename__ = "test_idempotency"


class Transfer(SQLModel, table=True):
    __tablename__ = "test_transfer"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    account: str = Field(sa_column=Column(String(40), nullable=False))
    amount: int = Field(sa_column=Column(Integer, nullable=False))


M1 = "m1:transfer"


class OverLimit(FailedPrecondition):
    code = "over_limit"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(
            SQLModel.metadata.create_all,
            tables=[SQLModel.metadata.tables["test_idempotency"], SQLModel.metadata.tables["test_transfer"]],
        )
    yield database
    await database.dispose()


def transfer(account: str, amount: int, calls: list[int]) -> Any:
    async def operation(session: AsyncSession) -> dict[str, Any]:
        calls.append(amount)
        session.add(Transfer(account=account, amount=amount))
        await session.flush()
        if amount > 1000:
            raise OverLimit(f"{amount} is over the limit")
        return {"account": account, "amount": amount}

    return operation


async def transfers(db: Database) -> list[tuple[str, int]]:
    async with db.sessions() as session:
        return [(t.account, t.amount) for t in (await session.exec(select(Transfer))).all()]


@pytest.mark.parametrize("key", ["", "x" * 201, "has space", "tab\there", "nul\x00", "日本"])
def test_a_key_outside_the_bounds_is_refused(key: str) -> None:
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        check_key(key)


def test_a_key_within_the_bounds_is_kept_as_given() -> None:
    assert check_key("o1:capture-card") == "o1:capture-card"
    assert check_key("x" * 200) == "x" * 200


def test_one_fingerprint_format_whatever_the_order_of_fields() -> None:
    assert fingerprint({"a": 1, "b": [2, "JPY"]}) == fingerprint({"b": [2, "JPY"], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": "1"})
    assert len(fingerprint({})) == 64
    ensure_same(fingerprint({"a": 1}), {"a": 1}, "k")
    with pytest.raises(AlreadyExists, match="'k' was already used with a different request"):
        ensure_same(fingerprint({"a": 1}), {"a": 2}, "k")


def test_a_remembered_refusal_is_raised_again_as_its_own_type() -> None:
    assert isinstance(refusal(refusal_of(NotFound("no such card"))), NotFound)
    again = refusal(refusal_of(OverLimit("too much")), known=[OverLimit])
    assert type(again) is OverLimit and again.message == "too much"
    # An unknown code is still a refusal, never a success or a server error.
    assert type(refusal({"error": "gone_away", "message": "m"})) is FailedPrecondition


async def test_a_retry_replays_the_first_result_and_a_different_request_is_refused(db: Database) -> None:
    calls: list[int] = []
    clock = FrozenClock()
    first = await run_once(
        db, clock, KeyRecord, scope=M1, key="k1", request={"amount": 5}, operation=transfer("m1", 5, calls)
    )
    again = await run_once(
        db, clock, KeyRecord, scope=M1, key="k1", request={"amount": 5}, operation=transfer("m1", 5, calls)
    )
    assert first == again == {"account": "m1", "amount": 5} and calls == [5]
    with pytest.raises(AlreadyExists):
        await run_once(
            db,
            clock,
            KeyRecord,
            scope=M1,
            key="k1",
            request={"amount": 6},
            operation=transfer("m1", 6, calls),
        )
    # The same key in another scope (another member) is another request.
    await run_once(
        db, clock, KeyRecord, scope="m2:transfer", key="k1", request={"amount": 6}, operation=transfer("m2", 6, calls)
    )
    assert await transfers(db) == [("m1", 5), ("m2", 6)]
    with pytest.raises(InvalidArgument):
        await run_once(db, clock, KeyRecord, scope=M1, key="bad key", request={}, operation=transfer("m1", 1, calls))
    assert calls == [5, 6]


async def test_a_refusal_is_remembered_and_its_writes_are_rolled_back(db: Database) -> None:
    calls: list[int] = []
    clock = FrozenClock()
    for _ in range(2):
        with pytest.raises(OverLimit, match="2000 is over the limit"):
            await run_once(
                db,
                clock,
                KeyRecord,
                scope=M1,
                key="k2",
                request={"amount": 2000},
                operation=transfer("m1", 2000, calls),
                known_errors=[OverLimit],
            )
    assert calls == [2000] and await transfers(db) == []
    async with db.sessions() as session:
        [record] = (await session.exec(select(KeyRecord))).all()
    assert record.outcome == {"error": "over_limit", "message": "2000 is over the limit"}
    assert record.created_at == clock.now()


async def test_racing_identical_requests_take_effect_once(db: Database) -> None:
    calls: list[int] = []
    clock = FrozenClock()

    async def attempt() -> dict[str, Any]:
        return await run_once(
            db,
            clock,
            KeyRecord,
            scope=M1,
            key="k3",
            request={"amount": 7},
            operation=transfer("m1", 7, calls),
        )

    results = await asyncio.gather(*(attempt() for _ in range(5)))
    assert results == [{"account": "m1", "amount": 7}] * 5
    assert await transfers(db) == [("m1", 7)]
