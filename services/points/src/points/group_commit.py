"""Group commit for Credit on PostgreSQL: the credits that arrive while one transaction is on its way
to the database go together in the next, with set-based statements (the way TigerBeetle batches
transfers). Seven round trips carry a whole group: lock its wallets (in member order), read its
idempotency records and its services' daily budgets, then write the budgets, every entry with its
postings, lot and wallet, the outbox rows and the records, and commit.

Each call keeps its own outcome, as if it had run alone: a first outcome is remembered under its
key (a rejection too, except those `NOT_REMEMBERED`), a retry replays it, and one call's rejection
does not touch the others. A lone call does not wait: a group is whatever queued meanwhile.

What is rare goes through `Ledger.execute` on its own, after the group committed: a wallet with
something due or a lapsed rolling expiry, an unknown or inactive member, a key used twice in one
group. So does the whole group when its transaction loses a race for a key, loses its connection or
is chosen as a deadlock's victim: nothing of it was written, and each call retries on its own. Any
other failure of a group is logged and its calls run alone too, so that a fault of one call (a
broken invariant) fails that call only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kizuna.kit.db import is_disconnect
from kizuna.kit.errors import DomainError, InvalidArgument
from kizuna.kit.events import Outgoing, outgoing, publish_all
from kizuna.kit.groups import GroupQueue
from kizuna.points.v1 import points_pb2 as pb
from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from points.bounds import Budgets, Limits
from points.crediting import check_credit, credited_event, lapsed, plan_credit
from points.idempotency import INSERT_RECORD, Ledger, check_key, record_values, replay, request_hash
from points.journal import PlannedEntry, apply_postings, new_id, post_entries_pg
from points.ledger_metrics import count_on_commit, group_size, points_credited
from points.models import Wallet
from points.wallets import NOT_REMEMBERED, lock_wallets, records_of

tracer = trace.get_tracer("kizuna.points")
log = logging.getLogger("points.group_commit")

# At most this many credits in one transaction: a group's statements stay small, and a lone slow
# group holds few callers.
MAX_GROUP = 64


class Alone:
    """The outcome of a call the group leaves to `Ledger.execute`."""


ALONE = Alone()


@dataclass(eq=False)
class CreditCall:
    """A Credit as the RPC checked it: who calls, as which service, and the request."""

    caller: str
    service: str
    request: pb.CreditRequest
    kind: str | None
    expires_at: datetime | None
    # The RPC's trace context: its event carries it, and the group's span links to it.
    context: Context
    # The group's span (its statements are under it), which the RPC's span links to.
    group_span: trace.SpanContext | None = None


class CreditGroups:
    """Queues Credit calls and commits them in groups, one group in flight at a time."""

    def __init__(self, ledger: Ledger, limits: Limits, regular_expiry_months: int) -> None:
        self.ledger = ledger
        self.limits = limits
        self.months = regular_expiry_months
        self._queue = GroupQueue(self._handle, max_size=MAX_GROUP, name="points-credit-groups")
        self.groups = 0  # transactions committed, for the bench and the tests

    @property
    def queued(self) -> int:
        """Calls waiting for the next group."""
        return self._queue.queued

    async def credit(self, call: CreditCall) -> pb.CreditResponse | None:
        """The call's response (or its rejection, raised); None: run it on its own."""
        outcome = await self._queue.submit(call)
        if call.group_span is not None:
            trace.get_current_span().add_link(call.group_span)
        if isinstance(outcome, DomainError):
            raise outcome
        return None if isinstance(outcome, Alone) else outcome

    async def _handle(self, group: list[CreditCall]) -> list[pb.CreditResponse | DomainError | Alone]:
        try:
            outcomes = await self._commit(group)
        except DBAPIError as exc:
            if not (isinstance(exc, IntegrityError) or is_disconnect(exc) or _deadlock(exc)):
                log.exception("a credit group failed; its %d calls run alone", len(group))
            return [ALONE] * len(group)  # nothing was written: each call alone, replaying a race's winner
        except Exception:
            # A fault of one call (a broken invariant) fails it alone, not the calls beside it.
            log.exception("a credit group failed; its %d calls run alone", len(group))
            return [ALONE] * len(group)
        self.groups += 1
        return [outcomes.get(call, ALONE) for call in group]

    async def _commit(self, group: list[CreditCall]) -> dict[CreditCall, pb.CreditResponse | DomainError]:
        # In the first call's trace, linked to every call's (and each call's span links back to it).
        links = [trace.Link(trace.get_current_span(call.context).get_span_context()) for call in group]
        with tracer.start_as_current_span("points credit group", context=group[0].context, links=links) as span:
            span.set_attribute("kizuna.points.group_size", len(group))
            group_size.record(len(group))
            for call in group:
                call.group_span = span.get_span_context()
            async with self.ledger.db.transaction() as session:
                return await _Group(self, session, self.ledger.clock.now()).run(group)


def _deadlock(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "40P01" or "deadlock detected" in str(exc.orig)


class _Group:
    """One group's transaction: what it read, and what it will write."""

    def __init__(self, groups: CreditGroups, session: AsyncSession, now: datetime) -> None:
        self.groups = groups
        self.session = session
        self.now = now
        self.budgets = Budgets(groups.limits, now)
        self.entries: list[PlannedEntry] = []
        self.events: list[Outgoing] = []
        self.records: list[dict[str, Any]] = []
        self.wallets: dict[str, Wallet] = {}

    async def run(self, group: list[CreditCall]) -> dict[CreditCall, pb.CreditResponse | DomainError]:
        session, now = self.session, self.now
        locked = await lock_wallets(session, [call.request.member_id for call in group], now)
        pairs = list(dict.fromkeys((call.caller, call.request.idempotency_key) for call in group))
        records = await records_of(session, pairs)
        await self.budgets.load(session, {call.service for call in group})
        outcomes: dict[CreditCall, pb.CreditResponse | DomainError] = {}
        seen: set[tuple[str, str]] = set()
        for call in group:
            key = call.request.idempotency_key
            invalid = check_key(key)
            if invalid is not None:
                outcomes[call] = invalid
                continue
            if (call.caller, key) in seen:
                continue  # alone, after this group: it replays the first call's outcome
            seen.add((call.caller, key))
            digest = request_hash("credit", call.request)
            record = records.get((call.caller, key))
            if record is not None:
                outcomes[call] = replay(record, "credit", digest, key, pb.CreditResponse)
                continue
            wallet, due = locked.get(call.request.member_id, (None, False))
            if wallet is None or due or wallet.status != "active" or lapsed(wallet, now):
                continue  # alone: settling, freezing and refusing are the single path's
            try:
                outcomes[call] = self._credit(call, wallet)
            except NOT_REMEMBERED as exc:
                outcomes[call] = exc
                continue
            except DomainError as exc:
                outcomes[call] = exc
            self.records.append(record_values(call.caller, key, "credit", digest, now, outcomes[call]))
        await self.budgets.write(session)
        await post_entries_pg(session, self.entries, list(self.wallets.values()))
        await publish_all(session, self.events)
        if self.records:
            conn = await session.connection()
            await conn.execute(INSERT_RECORD, self.records)
        return outcomes

    def _credit(self, call: CreditCall, wallet: Wallet) -> pb.CreditResponse:
        """The credit's effect in memory, as `crediting.credit` has it; written with the group."""
        request, now = call.request, self.now
        if call.kind is None:
            raise InvalidArgument("kind must be CREDIT_KIND_REGULAR or CREDIT_KIND_LIMITED_TIME")
        check_credit(request.amount, call.kind, call.expires_at, now, self.groups.limits)
        self.budgets.charge(call.service, wallet.member_id, request.amount)
        plan = plan_credit(
            wallet,
            now,
            amount=request.amount,
            kind=call.kind,
            reason=request.reason,
            source_service=call.service,
            expires_at=call.expires_at,
            regular_expiry_months=self.groups.months,
        )
        postings, member_change = apply_postings(wallet, "credit", plan.postings)
        entry_id = new_id("ent")
        self.entries.append(
            PlannedEntry(
                entry_id=entry_id,
                member_id=wallet.member_id,
                kind="credit",
                amount=member_change,
                explanation=plan.explanation,
                source_service=call.service,
                source_ref=request.source_ref,
                created_at=now,
                postings=postings,
                lot=plan.lot,
            )
        )
        self.wallets[wallet.member_id] = wallet
        event = credited_event(
            entry_id,
            wallet,
            now,
            plan,
            reason=request.reason,
            source_service=call.service,
            source_ref=request.source_ref,
            key=request.idempotency_key,
        )
        self.events.append(outgoing("points.ledger.credited", event, member_id=wallet.member_id, context=call.context))
        count_on_commit(self.session, points_credited, request.amount, call.service)
        return pb.CreditResponse(entry_id=entry_id, balance_after=wallet.available)
