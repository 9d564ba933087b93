"""Group commit (PostgreSQL): Credit calls that arrive while a transaction is on its way commit
together in the next one, and each keeps the outcome it would have had alone: replays, rejections
remembered or not, budgets, wallets with something due; a group that loses a key race runs its
calls one by one, and nothing of it is written twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from kizuna.kit.testing import wait_until
from kizuna.points.v1 import points_pb2 as pb
from points import balances, group_commit, journal, spending
from points.group_commit import CreditGroups
from points.idempotency import request_hash
from points.wallets import lock_wallets

from .pointskit import Points, in_one_group, key, outcome, stamp, waiting_on_a_lock


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """PostgreSQL only: SQLite has one writer at a time, and points commits no groups on it."""
    return postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def raw(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own beside the service's, to hold locks and read tables."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        yield conn
    finally:
        await conn.close()


def groups_of(points: Points) -> CreditGroups:
    groups = points.runtime.state["credit_groups"]
    assert isinstance(groups, CreditGroups)
    return groups


def request(member: str, amount: int, idem: str, **fields: Any) -> pb.CreditRequest:
    fields.setdefault("kind", pb.CREDIT_KIND_REGULAR)
    return pb.CreditRequest(member_id=member, amount=amount, reason="group", idempotency_key=idem, **fields)


@pytest.mark.parametrize("settings_overrides", [{"credit_budget_per_day_by_service": {"travel": 100}}])
async def test_calls_that_arrive_together_commit_together_each_with_its_own_outcome(
    points: Points, raw: asyncpg.Connection
) -> None:
    await points.register("a", "b", "c", "due")
    now = points.clock.now()
    await points.credit("due", 40, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + timedelta(days=1))
    points.clock.advance(timedelta(days=2))  # its limited-time lot is past its date: "due" has something due
    groups, credit = groups_of(points), points.stub.Credit
    committed = groups.groups
    shop, travel = points.auth("shop"), points.auth("travel")

    # The test holds a's wallet: the first group (one call for a) waits for it while the rest queue.
    twice, clash, invalid, ghost = key(), key(), key(), key()
    yesterday = now - timedelta(days=1)

    def calls() -> dict[str, Awaitable[Any]]:
        return {
            **{f"plain-{i}": credit(request("abc"[i % 3], 10, key()), metadata=shop, timeout=30) for i in range(30)},
            "twice-1": credit(request("a", 7, twice), metadata=shop, timeout=30),
            "twice-2": credit(request("a", 7, twice), metadata=shop, timeout=30),
            "clash-1": credit(request("b", 5, clash), metadata=shop, timeout=30),
            "clash-2": credit(request("b", 6, clash), metadata=shop, timeout=30),
            "no-kind": credit(request("c", 5, invalid, kind=pb.CREDIT_KIND_UNSPECIFIED), metadata=shop, timeout=30),
            "no-key": credit(request("c", 5, ""), metadata=shop, timeout=30),
            "past": credit(request("c", 5, key(), expires_at=stamp(yesterday)), metadata=shop, timeout=30),
            "ghost": credit(request("ghost", 5, ghost), metadata=shop, timeout=30),
            "budget-1": credit(request("a", 60, key()), metadata=travel, timeout=30),
            "budget-2": credit(request("b", 60, key()), metadata=travel, timeout=30),
            "due": credit(request("due", 3, key()), metadata=shop, timeout=30),
        }

    first, results = await in_one_group(
        raw, groups, "a", lambda: credit(request("a", 1, key()), metadata=shop, timeout=30), calls
    )
    assert isinstance(first, pb.CreditResponse)

    # Two groups: the first call's, then every other call's (the ones left to run alone do so after).
    assert groups.groups - committed == 2
    assert all(isinstance(results[f"plain-{i}"], pb.CreditResponse) for i in range(30))
    assert len({results[f"plain-{i}"].entry_id for i in range(30)}) == 30
    assert results["twice-1"] == results["twice-2"]  # the second replays the first
    clashed = [results["clash-1"], results["clash-2"]]  # the same key, another amount: the first wins
    assert sorted(isinstance(r, pb.CreditResponse) for r in clashed) == [False, True], clashed
    assert grpc.StatusCode.ALREADY_EXISTS in clashed
    assert results["no-kind"] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["no-key"] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["past"] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["ghost"] == grpc.StatusCode.NOT_FOUND
    budget = [results["budget-1"], results["budget-2"]]
    assert budget.count(grpc.StatusCode.FAILED_PRECONDITION) == 1, budget
    assert isinstance(results["due"], pb.CreditResponse)

    # Balances: what each member was credited, and nothing twice.
    clash_amount = 5 if isinstance(results["clash-1"], pb.CreditResponse) else 6
    travel_a = 60 if isinstance(results["budget-1"], pb.CreditResponse) else 0
    assert (await points.balance("a")).total == 1 + 10 * 10 + 7 + travel_a
    assert (await points.balance("b")).total == 10 * 10 + clash_amount + (60 - travel_a)
    assert (await points.balance("c")).total == 10 * 10
    assert (await points.balance("due")).total == 3
    # Its expired lot was settled first, alone, as a single call does it.
    history = await raw.fetch("SELECT kind, amount FROM points_entry WHERE member_id = 'due' ORDER BY id")
    assert [(row["kind"], row["amount"]) for row in history] == [("credit", 40), ("expiry", -40), ("credit", 3)]

    # A rejection is remembered under its key; an unknown member's is not, so its retry succeeds.
    retry = await outcome(credit(request("c", 5, invalid, kind=pb.CREDIT_KIND_UNSPECIFIED), metadata=shop))
    assert retry == grpc.StatusCode.INVALID_ARGUMENT
    await points.register("ghost")
    assert isinstance(await credit(request("ghost", 5, ghost), metadata=shop, timeout=30), pb.CreditResponse)

    # One event per credit, in the outbox with its entry.
    credited = await raw.fetchval("SELECT count(*) FROM kit_outbox WHERE subject = 'points.ledger.credited'")
    entries = await raw.fetchval("SELECT count(*) FROM points_entry WHERE kind = 'credit'")
    assert (
        credited == entries == 1 + 1 + 30 + 1 + 1 + 1 + 1 + 1
    )  # due's first, a's, plain, twice, clash, budget, due, ghost


async def test_a_group_that_loses_a_key_race_runs_each_call_alone_and_writes_nothing_twice(
    points: Points, raw: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await points.register("a", "b")
    await points.credit("a", 100)
    groups, shop = groups_of(points), points.auth("shop")
    raced = request("a", 5, key())
    # Another process took the same key first and has not committed: the group's record waits for it.
    winner = pb.CreditResponse(entry_id="ent_the_winner", balance_after=105)
    race = raw.transaction()
    await race.start()
    await raw.execute(
        "INSERT INTO points_idempotency (caller, key, operation, request_hash, response, created_at)"
        " VALUES ('shop', $1, 'credit', $2, $3, now())",
        raced.idempotency_key,
        request_hash("credit", raced),
        winner.SerializeToString(),
    )
    committed = groups.groups
    lone = asyncio.create_task(outcome(points.stub.Credit(raced, metadata=shop, timeout=30)))
    await wait_until(lambda: waiting_on_a_lock(raw, "points_idempotency"))
    other = asyncio.create_task(outcome(points.stub.Credit(request("b", 9, key()), metadata=shop, timeout=30)))
    await wait_until(lambda: groups.queued == 1)
    await race.commit()

    assert await lone == winner  # the group rolled back; alone, the call replays the winner's outcome
    assert isinstance(await other, pb.CreditResponse)
    assert groups.groups - committed == 1  # only the second call's group committed
    assert (await points.balance("a")).total == 100  # the raced credit was written by nobody here
    assert (await points.balance("b")).total == 9
    assert await raw.fetchval("SELECT count(*) FROM points_entry WHERE member_id = 'a'") == 1
    # A race lost is no fault: nothing is logged as a failed group.
    assert "group failed" not in caplog.text


async def test_balances_asked_together_are_read_together_each_members_own(
    points: Points, raw: asyncpg.Connection
) -> None:
    members = [f"r{i}" for i in range(12)]
    await points.register(*members)
    for i, member in enumerate(members):
        await points.credit(member, 100 + i)
    now = points.clock.now()
    await points.credit("r0", 50, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + timedelta(days=1))
    points.clock.advance(timedelta(days=2))  # r0's limited-time lot expired: its read settles it first
    reads = points.runtime.state["balance_reads"]
    before = reads.groups
    # The test holds the wallets' table: the first read waits for it while the rest queue.
    lock = raw.transaction()
    await lock.start()
    await raw.execute("LOCK TABLE points_wallet IN ACCESS EXCLUSIVE MODE")
    first = asyncio.create_task(points.balance("r1"))
    await wait_until(lambda: waiting_on_a_lock(raw, "points_wallet"))
    asked = [*members, "nobody", "r3"]
    rest = [asyncio.create_task(points.balance(member)) for member in asked]
    await wait_until(lambda: reads.queued == len(asked))
    await lock.rollback()

    assert (await first).total == 101
    got = [(await task).total for task in rest]
    assert got == [100, *(100 + i for i in range(1, 12)), 0, 103]
    assert reads.groups - before == 2  # the first read's, then all the others'
    history = await raw.fetch("SELECT kind, amount FROM points_entry WHERE member_id = 'r0' ORDER BY id")
    assert [(row["kind"], row["amount"]) for row in history] == [("credit", 100), ("credit", 50), ("expiry", -50)]


async def test_a_lone_balance_read_is_planned_once_per_connection_not_on_every_call(points: Points) -> None:
    """A lone caller's read is the one-member statement, whose generic plan PostgreSQL keeps after
    five reads on a connection; the many-member statement is planned for every read (its generic
    plan guesses ten members), which a lone caller would pay alone. The reads run on one connection,
    held between them."""
    await points.register("solo")
    await points.credit("solo", 70)
    for _ in range(60):
        assert (await points.balance("solo")).total == 70
    reads = points.runtime.state["balance_reads"]
    assert isinstance(reads, balances.BalanceReads) and reads.connection.holding
    plans: dict[str, list[tuple[int, int]]] = {"one": [], "many": []}
    query = "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
    for row in await reads.connection.fetch("SELECT pg_prepared_statements", query):
        for name, sql in (("one", balances._BALANCE_SQL), ("many", balances._BALANCES_SQL)):
            if row["statement"] == sql:
                plans[name].append((row["generic_plans"], row["custom_plans"]))
    assert plans["many"] == []
    assert len(plans["one"]) == 1
    ((generic, custom),) = plans["one"]
    assert custom <= 5 and generic >= 55


async def test_a_group_that_fails_otherwise_is_logged_and_its_calls_run_alone(
    points: Points, raw: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await points.register("a", "b")
    groups = groups_of(points)
    real = journal.apply_postings  # The function group_commit imported, before the test replaces it there.

    def broken_for_b(wallet: Any, kind: str, postings: dict[str, int]) -> Any:
        if wallet.member_id == "b":
            raise AssertionError("a fault of b's call")
        return real(wallet, kind, postings)

    monkeypatch.setattr(group_commit, "apply_postings", broken_for_b)
    committed = groups.groups
    assert isinstance(await points.credit("b", 7), pb.CreditResponse)  # alone, through the single path
    assert groups.groups == committed  # its group did not commit: nothing of it was written
    assert isinstance(await points.credit("a", 5), pb.CreditResponse)
    assert groups.groups == committed + 1
    assert [(await points.balance(m)).total for m in ("a", "b")] == [5, 7]
    assert await raw.fetchval("SELECT count(*) FROM points_entry") == 2
    assert "a credit group failed" in caplog.text and "a fault of b's call" in caplog.text


async def test_captures_that_arrive_together_commit_together_each_with_its_own_outcome(
    points: Points, raw: asyncpg.Connection
) -> None:
    await points.register("a", "b", "c")
    for member, amount in (("a", 100), ("b", 100), ("c", 10)):
        await points.credit(member, amount)
    r0, r1, r2 = [(await points.reserve("a", n)).reservation_id for n in (1, 30, 20)]
    r3, r4 = [(await points.reserve("b", n)).reservation_id for n in (50, 10)]
    await points.stub.Void(pb.VoidRequest(reservation_id=r4, idempotency_key=key()), metadata=points.auth())
    r5 = (await points.reserve("c", 5, ttl=1)).reservation_id
    points.clock.advance(timedelta(seconds=5))  # r5 timed out: "c" has something due
    groups, capture = points.runtime.state["capture_groups"], points.stub.Capture
    shop, travel = points.auth("shop"), points.auth("travel")
    committed = groups.groups

    def request(reservation: str, amount: int = 0, idem: str | None = None) -> pb.CaptureRequest:
        return pb.CaptureRequest(reservation_id=reservation, amount=amount, idempotency_key=idem or key())

    k1, too_much = key(), key()

    def calls() -> dict[str, Awaitable[Any]]:
        return {
            "r1": capture(request(r1, idem=k1), metadata=shop, timeout=30),
            "r1-retry": capture(request(r1, idem=k1), metadata=shop, timeout=30),
            "r1-again": capture(request(r1), metadata=shop, timeout=30),
            "r2-part": capture(request(r2, 5), metadata=shop, timeout=30),
            "r3-not-theirs": capture(request(r3), metadata=travel, timeout=30),
            "r3-too-much": capture(request(r3, 60, too_much), metadata=shop, timeout=30),
            "r3": capture(request(r3), metadata=shop, timeout=30),
            "r4-voided": capture(request(r4), metadata=shop, timeout=30),
            "unknown": capture(request("rsv_unknown"), metadata=shop, timeout=30),
            "r5-timed-out": capture(request(r5), metadata=shop, timeout=30),
        }

    first, results = await in_one_group(
        raw, groups, "a", lambda: capture(request(r0), metadata=shop, timeout=30), calls
    )
    assert isinstance(first, pb.CaptureResponse)
    assert groups.groups - committed == 2
    assert results["r1"] == results["r1-retry"] and results["r1"].captured == 30
    assert results["r1-again"] == grpc.StatusCode.FAILED_PRECONDITION  # already captured
    assert (results["r2-part"].captured, results["r2-part"].returned) == (5, 15)
    assert results["r3-not-theirs"] == grpc.StatusCode.PERMISSION_DENIED
    assert results["r3-too-much"] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["r3"].captured == 50 and results["r3"].balance_after == 50
    assert results["r4-voided"] == grpc.StatusCode.FAILED_PRECONDITION
    assert results["unknown"] == grpc.StatusCode.NOT_FOUND
    assert results["r5-timed-out"] == grpc.StatusCode.FAILED_PRECONDITION
    for member, total, pending in (("a", 64, 0), ("b", 50, 0), ("c", 10, 0)):
        balance = await points.balance(member)
        assert (balance.total, balance.pending) == (total, pending), member
    # A rejection is remembered under its key: the same call again gets the same answer.
    again = await outcome(capture(request(r3, 60, too_much), metadata=shop, timeout=30))
    assert again == grpc.StatusCode.INVALID_ARGUMENT
    spends = await raw.fetch("SELECT amount FROM points_entry WHERE kind = 'spend' ORDER BY id")
    assert sorted(row["amount"] for row in spends) == sorted([-1, -30, -5, -50])
    captured = await raw.fetchval("SELECT count(*) FROM kit_outbox WHERE subject = 'points.ledger.captured'")
    assert captured == 4
    marked = await raw.fetch("SELECT reservation_id, captured FROM points_reservation WHERE status = 'captured'")
    assert {row["reservation_id"]: row["captured"] for row in marked} == {r0: 1, r1: 30, r2: 5, r3: 50}


async def test_reserves_that_arrive_together_commit_together_each_taking_what_the_last_left(
    points: Points, raw: asyncpg.Connection
) -> None:
    await points.register("a", "b", "many")
    now = points.clock.now()
    await points.credit("a", 50)
    await points.credit("a", 20, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + timedelta(days=30))
    await points.credit("b", 10)
    for _ in range(20):
        await points.credit("many", 1)
    groups, reserve = points.runtime.state["reserve_groups"], points.stub.Reserve

    def call(member: str, amount: int, idem: str | None = None, ttl: int = 0) -> Awaitable[Any]:
        request = pb.ReserveRequest(
            member_id=member, amount=amount, ttl_seconds=ttl, reason="group", idempotency_key=idem or key()
        )
        reply: Awaitable[Any] = reserve(request, metadata=points.auth("shop", member=member), timeout=30)
        return reply

    committed = groups.groups
    twice, short = key(), key()

    def calls() -> dict[str, Awaitable[Any]]:
        return {
            "a-25": call("a", 25, twice),
            "a-25-retry": call("a", 25, twice),
            "a-30": call("a", 30),
            "a-20-short": call("a", 20, short),  # 15 left after the two before it
            "a-bad-ttl": call("a", 1, ttl=10**9),
            "b-6": call("b", 6),
            "many-18": call("many", 18),  # more than the sixteen lots a group reads: alone
        }

    first, results = await in_one_group(raw, groups, "b", lambda: call("b", 4), calls)
    assert isinstance(first, pb.ReserveResponse)
    assert groups.groups - committed == 2
    assert results["a-25"] == results["a-25-retry"]
    assert results["a-25"].balance_after == 45 and results["a-30"].balance_after == 15
    assert results["a-20-short"] == grpc.StatusCode.FAILED_PRECONDITION
    assert results["a-bad-ttl"] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["b-6"].balance_after == 0
    assert results["many-18"].balance_after == 2
    for member, total, pending in (("a", 15, 55), ("b", 0, 10), ("many", 2, 18)):
        balance = await points.balance(member)
        assert (balance.total, balance.pending) == (total, pending), member
    # The limited-time lot went first: a's first 25 took its 20 and 5 regular points.
    held = await raw.fetch(
        """SELECT r.amount, l.kind, h.amount AS took FROM points_hold h
        JOIN points_reservation r ON r.id = h.reservation_pk JOIN points_lot l ON l.id = h.lot_id
        WHERE r.member_id = 'a' ORDER BY r.id, h.seq"""
    )
    assert [(row["amount"], row["kind"], row["took"]) for row in held] == [
        (25, "limited_time", 20),
        (25, "regular", 5),
        (30, "regular", 30),
    ]
    # A remembered rejection: the same call again gets the same answer, even with points back.
    await points.credit("a", 100)
    assert await outcome(call("a", 20, short)) == grpc.StatusCode.FAILED_PRECONDITION
    events = await raw.fetchval("SELECT count(*) FROM kit_outbox WHERE subject = 'points.ledger.reserved'")
    assert events == 5  # b's two, a's two, many's


async def test_a_reserve_groups_lots_read_in_one_statement_are_each_members_own_first_lots(points: Points) -> None:
    """The group's one read gives each member the lots the single path reads for them, in spend
    order: limited-time lots by expiry, then fixed-date regular lots by expiry, then rolling lots;
    spent and expired lots left out, and at most sixteen."""
    await points.register("mixed", "rolling-only", "crowded", "empty")
    now = points.clock.now()
    for days in (40, 10, 20):
        await points.credit("mixed", days, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + timedelta(days=days))
        await points.credit("mixed", 100 + days, expires_at=now + timedelta(days=days))
    await points.credit("mixed", 7)
    await points.credit("mixed", 8)
    await points.spend("mixed", 10 + 3)  # the limited-time lot of 10 points, then 3 of the next
    await points.credit("mixed", 3, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + timedelta(minutes=10))
    await points.credit("rolling-only", 5)
    for _ in range(20):
        await points.credit("crowded", 1)
    later = now + timedelta(minutes=11)  # the 10-minute limited-time lot has expired by then
    async with points.runtime.db.transaction() as session:
        locked = await lock_wallets(session, ["mixed", "rolling-only", "crowded", "empty"], later)
        wallets = [wallet for wallet, _ in locked.values()]
        together = await spending.first_live_lots_of(session, wallets, later)
        alone = {wallet.member_id: await spending.first_live_lots(session, wallet, later) for wallet in wallets}
    assert {member: [tuple(row)[1:] for row in rows] for member, rows in together.items()} == {
        member: [tuple(row) for row in rows] for member, rows in alone.items()
    }
    mixed = [(row.kind, row.rolling, row.remaining) for row in together["mixed"]]
    assert mixed == [
        ("limited_time", False, 17),
        ("limited_time", False, 40),
        ("regular", False, 110),
        ("regular", False, 120),
        ("regular", False, 140),
        ("regular", True, 7),
        ("regular", True, 8),
    ]
    assert [row.remaining for row in together["rolling-only"]] == [5]
    assert len(together["crowded"]) == spending.FIRST_LOTS
    assert together["empty"] == []


async def test_calls_whose_pooled_connections_died_run_again_on_live_ones(
    points: Points, raw: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A failover ends every pooled connection's server process: a group's statements on the dead
    connection (the driver's own error) send its calls alone, and each runs again until it finds a
    live connection, rather than failing. The balance reads' held connection dies too, and the next
    read runs on a fresh one."""
    await points.register("a", "b", "c")
    await asyncio.gather(*(points.credit(member, 10) for member in ("a", "b", "c") * 4))
    reads = points.runtime.state["balance_reads"]
    assert isinstance(reads, balances.BalanceReads)
    assert (await points.balance("a")).total == 40
    ((read_on,),) = await reads.connection.fetch("SELECT", "SELECT pg_backend_pid()")
    async with contextlib.AsyncExitStack() as held:  # several pooled connections, then all idle
        for _ in range(4):
            conn = await held.enter_async_context(points.runtime.db.engine.connect())
            await conn.exec_driver_sql("SELECT 1")
    ended = await raw.fetch(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state = 'idle'"
    )
    assert len(ended) >= 4, "the pool held several connections"
    assert read_on in {row["pid"] for row in ended}, "the held connection was ended too"

    answers = await asyncio.gather(*(points.credit(member, 5) for member in ("a", "b", "c")))
    assert [answer.balance_after for answer in answers] == [45, 45, 45]
    assert [(await points.balance(member)).total for member in ("a", "b", "c")] == [45, 45, 45]
    assert "group failed" not in caplog.text
