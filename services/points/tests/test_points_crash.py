"""Points killed (SIGKILL) while Credit, Reserve and Capture calls are committing in groups on
PostgreSQL: every caller retries with its key until it has an answer, and each credit, reservation
and capture is in the ledger exactly once."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.db import Database
from kizuna.kit.testing import TestIssuer, end_process, wait_until
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc
from points import audit

from .pointskit import waiting_on_a_lock

MEMBERS = 20
CREDITS = 240
PAIRS = 160
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}


async def test_credits_interrupted_by_a_kill_are_each_in_the_ledger_once_after_retries(
    service_process: Any, postgres_url: str, test_issuer: TestIssuer
) -> None:
    conn = await asyncpg.connect(postgres_url)
    points = service_process(
        "points",
        env={"DATABASE_URL": postgres_url, "KIZUNA_ISSUER": test_issuer.issuer, "EXPIRY_INTERVAL_SECONDS": "3600"},
    )
    await conn.execute(
        """INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month, earned_this_month,
        created_at) SELECT 'm' || i, 'active', 0, 0, 0, '2025-01', 0, now() FROM generate_series(1, $1) i""",
        MEMBERS,
    )
    auth = call_metadata(test_issuer.service_token("shop", "points:credit points:read"))
    spend_auth = call_metadata(test_issuer.service_token("shop", "points:spend"))
    requests = [
        pb.CreditRequest(
            member_id=f"m{i % MEMBERS + 1}",
            amount=i + 1,
            kind=pb.CREDIT_KIND_REGULAR,
            reason="crash",
            idempotency_key=f"crash-{i}",
        )
        for i in range(CREDITS)
    ]
    answers: dict[str, pb.CreditResponse] = {}
    queue = list(requests)
    retries = 0
    a_third_answered = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(points.grpc_address) as channel:
            stub = points_pb2_grpc.PointsServiceStub(channel)

            async def caller() -> None:
                nonlocal retries
                while queue:
                    request = queue.pop()
                    while True:  # the same key until there is an answer
                        try:
                            answers[request.idempotency_key] = await stub.Credit(request, metadata=auth, timeout=5)
                            if len(answers) >= CREDITS // 3:
                                a_third_answered.set()
                            break
                        except grpc.aio.AioRpcError as exc:
                            assert exc.code() in RETRYABLE, exc
                            retries += 1
                            await asyncio.sleep(0.05)

            async def kill_in_flight() -> None:
                """SIGKILL points with calls surely in flight, then start it again on the same ports
                (the callers' channel reconnects). A group's answers arrive together, and the
                callers may not have sent their next calls yet: a wallet held by this test keeps
                the next group waiting inside its transaction until after the kill."""
                holder = await asyncpg.connect(postgres_url)
                try:
                    async with holder.transaction():
                        await holder.execute("SELECT 1 FROM points_wallet WHERE member_id = 'm1' FOR UPDATE")
                        await wait_until(lambda: waiting_on_a_lock(conn))
                        assert points.process is not None
                        end_process(points.process, sig=signal.SIGKILL)
                finally:
                    await holder.close()
                points.start()

            async def kill_midway() -> None:
                await a_third_answered.wait()
                await kill_in_flight()

            await asyncio.wait_for(asyncio.gather(kill_midway(), *(caller() for _ in range(16))), timeout=120)
            assert retries > 0  # the kill cut calls short
            # A retry after the answer replays it.
            again = await stub.Credit(requests[0], metadata=auth, timeout=5)
            assert again == answers[requests[0].idempotency_key]

            # Then spending: Reserve and Capture pairs, killed midway again.
            pairs = list(range(PAIRS))
            spent: dict[int, pb.CaptureResponse] = {}
            a_third_spent = asyncio.Event()

            async def answer(call: Any, request: Any, metadata: Any) -> Any:
                nonlocal retries
                while True:  # the same key until there is an answer
                    try:
                        return await call(request, metadata=metadata, timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() in RETRYABLE, exc
                        retries += 1
                        await asyncio.sleep(0.05)

            async def spender() -> None:
                while pairs:
                    i = pairs.pop()
                    member = f"m{i % MEMBERS + 1}"
                    reserve = pb.ReserveRequest(member_id=member, amount=i % 7 + 1, idempotency_key=f"reserve-{i}")
                    member_auth = call_metadata(
                        test_issuer.service_token("shop", "points:spend"), test_issuer.member_token(member)
                    )
                    held = await answer(stub.Reserve, reserve, member_auth)
                    capture = pb.CaptureRequest(reservation_id=held.reservation_id, idempotency_key=f"capture-{i}")
                    spent[i] = await answer(stub.Capture, capture, spend_auth)
                    if len(spent) >= PAIRS // 3:
                        a_third_spent.set()

            async def kill_again() -> None:
                await a_third_spent.wait()
                await kill_in_flight()

            retries_before = retries
            await asyncio.wait_for(asyncio.gather(kill_again(), *(spender() for _ in range(16))), timeout=120)
            assert retries > retries_before  # the second kill cut calls short too

        assert len(answers) == CREDITS
        entries = await conn.fetch("SELECT entry_id, amount FROM points_entry WHERE kind = 'credit'")
        assert sorted(r["entry_id"] for r in entries) == sorted(a.entry_id for a in answers.values())
        assert sum(r["amount"] for r in entries) == sum(r.amount for r in requests)
        events = await conn.fetchval("SELECT count(*) FROM kit_outbox WHERE subject = 'points.ledger.credited'")
        assert events == CREDITS
        # Every pair reserved once and captured once.
        assert len(spent) == PAIRS and all(done.captured == i % 7 + 1 for i, done in spent.items())
        spends = await conn.fetch("SELECT entry_id, amount FROM points_entry WHERE kind = 'spend'")
        assert sorted(r["entry_id"] for r in spends) == sorted(done.entry_id for done in spent.values())
        assert await conn.fetchval("SELECT count(*) FROM points_reservation") == PAIRS
        assert await conn.fetchval("SELECT count(*) FROM points_reservation WHERE status = 'captured'") == PAIRS
        total_spent = sum(i % 7 + 1 for i in range(PAIRS))
        balance = await conn.fetchrow("SELECT sum(available) AS available, sum(held) AS held FROM points_wallet")
        assert (balance["available"], balance["held"]) == (sum(r.amount for r in requests) - total_spent, 0)
        for subject, count in (("points.ledger.reserved", PAIRS), ("points.ledger.captured", PAIRS)):
            assert await conn.fetchval("SELECT count(*) FROM kit_outbox WHERE subject = $1", subject) == count
        db = Database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with db.sessions() as session:
                report = await audit.audit(session)
            assert report.ok, report.problems
        finally:
            await db.dispose()
    finally:
        await conn.close()
