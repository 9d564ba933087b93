"""Random sequences of ledger operations keep every invariant (the audit), on both engines."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kizuna.kit import migrations
from kizuna.kit.db import Database
from kizuna.kit.errors import DomainError
from kizuna.points.v1 import points_pb2 as pb
from points import audit, crediting, grpc_api, rewards, spending, wallets
from points.balances import get_balance
from points.bounds import Limits
from points.expiry import run_expiry
from points.idempotency import Ledger
from points.ledger import LIMITED_TIME, REGULAR, Campaign, Clock, EarnRules
from points.service import service
from points.wallets import Member

pytestmark = pytest.mark.long(60)

MEMBERS = ["a", "b"]
LIMITS = Limits(max_credit_points=10**6, max_purchase_minor=10**10, daily_budget=lambda service: 10**12)
_migrated: set[str] = set()

operation = st.one_of(
    st.tuples(st.just("credit"), st.sampled_from(MEMBERS), st.integers(1, 100), st.booleans()),
    st.tuples(st.just("earn"), st.sampled_from(MEMBERS), st.integers(1, 30_000)),
    st.tuples(st.just("reserve"), st.sampled_from(MEMBERS), st.integers(1, 120), st.integers(1, 3)),
    st.tuples(st.just("capture"), st.integers(0, 9), st.integers(0, 60)),
    st.tuples(st.just("void"), st.integers(0, 9)),
    st.tuples(st.just("refund"), st.integers(0, 9), st.integers(0, 60)),
    st.tuples(st.just("clawback"), st.integers(0, 9), st.integers(0, 80)),
    st.tuples(st.just("advance"), st.integers(1, 40)),
    st.tuples(st.just("expire")),
)


def responding(to_message: Any, operation: Any, **arguments: Any) -> Any:
    """A ledger effect: the domain operation, its result translated to the contract's response."""

    async def effect(session: Any, wallet: Any, now: Any) -> Any:
        return to_message(await operation(session, wallet, now, **arguments))

    return effect


def effect_of(name: str, request: Any) -> Any:
    if name == "capture":
        return partial(grpc_api.capture_effect, caller="shop", request=grpc_api.capture_args(request))
    if name == "void":
        args = spending.VoidArgs(request.reservation_id, request.idempotency_key)
        return partial(grpc_api.void_effect, caller="shop", request=args)
    return partial(grpc_api.refund_effect, caller="shop", request=grpc_api.refund_args(request))


async def run(database_url: str, ops: list[tuple[Any, ...]]) -> None:
    if database_url not in _migrated:
        await asyncio.to_thread(migrations.upgrade, database_url, service.migrations_dir)
        _migrated.add(database_url)
    db = Database(database_url)
    clock = Clock()
    ledger = Ledger(db, None, clock)
    start = clock.now()
    # Small caps so that random purchases reach them; a campaign whose limited-time points expire.
    campaign = Campaign("test", "*", start, start + timedelta(days=10), start + timedelta(days=15), 100, 3)
    rules = EarnRules(cap_per_transaction=150, cap_per_month=400, campaigns=(campaign,))
    members = {m: f"{m}-{uuid.uuid4().hex[:8]}" for m in MEMBERS}
    reservations: list[str] = []
    credits: list[str] = []
    try:
        async with db.transaction() as session:
            for member in members.values():
                await wallets.register_member(session, member, clock.now())
        for op in ops:
            name = op[0]
            try:
                if name == "credit":
                    member, amount, limited = members[op[1]], op[2], op[3]
                    expires = clock.now() + timedelta(days=20) if limited else None

                    async def effect(
                        s: Any, w: Any, now: Any, m: str = member, a: int = amount, e: Any = expires
                    ) -> pb.CreditResponse:
                        done = await crediting.credit(
                            s,
                            w,
                            now,
                            member_id=m,
                            amount=a,
                            kind=LIMITED_TIME if e else REGULAR,
                            reason="p",
                            source_service="shop",
                            source_ref="",
                            expires_at=e,
                            key="",
                            regular_expiry_months=1,
                            limits=LIMITS,
                        )
                        return grpc_api.credit_response(done)

                    done = await ledger.execute(
                        caller="shop",
                        key=uuid.uuid4().hex,
                        operation="credit",
                        request=pb.CreditRequest(amount=amount),
                        member=Member(member),
                        effect=effect,
                        response_type=pb.CreditResponse,
                    )
                    credits.append(done.entry_id)
                elif name == "earn":
                    earn_request = pb.EarnRequest(member_id=members[op[1]], idempotency_key=uuid.uuid4().hex)
                    earn_request.purchase.amount_minor, earn_request.purchase.currency = op[2], "JPY"
                    earned = await ledger.execute(
                        caller="shop",
                        key=earn_request.idempotency_key,
                        operation="earn",
                        request=earn_request,
                        member=Member(earn_request.member_id),
                        response_type=pb.EarnResponse,
                        effect=responding(
                            grpc_api.earn_response,
                            rewards.earn,
                            member_id=earn_request.member_id,
                            amount_minor=op[2],
                            currency="JPY",
                            service="shop",
                            source_ref="",
                            key=earn_request.idempotency_key,
                            rules=rules,
                            regular_expiry_months=1,
                            limits=LIMITS,
                        ),
                    )
                    credits += [e for e in (earned.entry_id, earned.bonus_entry_id) if e]
                elif name == "reserve":
                    reserve_request = pb.ReserveRequest(
                        member_id=members[op[1]],
                        amount=op[2],
                        ttl_seconds=op[3] * 86400,
                        idempotency_key=uuid.uuid4().hex,
                    )
                    held = await ledger.execute(
                        caller="shop",
                        key=reserve_request.idempotency_key,
                        operation="reserve",
                        request=reserve_request,
                        member=Member(reserve_request.member_id),
                        response_type=pb.ReserveResponse,
                        effect=responding(
                            grpc_api.reserve_response,
                            spending.reserve,
                            caller="shop",
                            request=spending.ReserveArgs(
                                reserve_request.member_id,
                                reserve_request.amount,
                                reserve_request.ttl_seconds,
                                "",
                                "",
                                "",
                                reserve_request.idempotency_key,
                            ),
                            default_ttl=60,
                            max_ttl=10**6,
                        ),
                    )
                    reservations.append(held.reservation_id)
                elif name in ("capture", "void", "refund") and reservations:
                    rid = reservations[op[1] % len(reservations)]
                    request_cls, response = {
                        "capture": (pb.CaptureRequest, pb.CaptureResponse),
                        "void": (pb.VoidRequest, pb.VoidResponse),
                        "refund": (pb.RefundRequest, pb.RefundResponse),
                    }[name]
                    settle_request = request_cls(reservation_id=rid, idempotency_key=uuid.uuid4().hex)
                    if name != "void":
                        settle_request.amount = op[2]
                    await ledger.execute(
                        caller="shop",
                        key=settle_request.idempotency_key,
                        operation=name,
                        request=settle_request,
                        member=Member(reservation_id=rid),
                        response_type=response,
                        effect=effect_of(name, settle_request),
                    )
                elif name == "clawback" and credits:
                    clawback_request = pb.ClawbackRequest(
                        credit_entry_id=credits[op[1] % len(credits)], amount=op[2], idempotency_key=uuid.uuid4().hex
                    )
                    owner = await ledger.member_of_credit(clawback_request.credit_entry_id, "", "")
                    await ledger.execute(
                        caller="shop",
                        key=clawback_request.idempotency_key,
                        operation="clawback",
                        request=clawback_request,
                        member=Member(owner or ""),
                        response_type=pb.ClawbackResponse,
                        effect=partial(
                            grpc_api.clawback_effect, caller="shop", request=grpc_api.clawback_args(clawback_request)
                        ),
                    )
                elif name == "advance":
                    clock.advance(timedelta(days=op[1]))
                elif name == "expire":
                    await run_expiry(db, clock.now())
            except DomainError:
                pass  # a refused operation must leave the ledger as it was; the audit checks that
            async with db.sessions() as session:
                report = await audit.audit(session)
            assert report.ok, (op, report.problems)
            for member in members.values():
                balance = await get_balance(db, member, clock.now())
                assert min(balance.total, balance.pending, balance.debt) >= 0
    finally:
        await db.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=20))
def test_random_operations_keep_every_invariant(database_url: str, ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(run(database_url, ops))
