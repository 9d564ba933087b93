"""Counters for operators: points issued and redeemed per service. The Grafana dashboard reads them
as `kizuna_points_credited_total` and `kizuna_points_spent_total`.

A ledger change counts only once its transaction commits: the increment is staged on the session
and dropped if the transaction (or the savepoint it was staged in) rolls back, so a rejected
attempt or a retried key race never counts.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import Counter
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

meter = metrics.get_meter("kizuna.points")

points_credited = meter.create_counter(
    "kizuna.points.credited",
    unit="{point}",
    description="Points credited to members, by the service that issued them (attribute service)",
)
points_spent = meter.create_counter(
    "kizuna.points.spent",
    unit="{point}",
    description="Points members spent (captured), by the service where they were redeemed (attribute service)",
)

# Alert on any increase: a service asked for more points in a day than its budget allows.
budget_refused = meter.create_counter(
    "kizuna.points.budget_refused",
    unit="{credit}",
    description="Credits refused: the issuing service's daily credit budget would be breached (attribute service)",
)

# How many calls each group commit carried (points.group_commit), by operation (credit, reserve,
# capture): near 1, calls arrive one at a time; near its most (64), the ledger runs at its limit.
group_size = meter.create_histogram(
    "kizuna.points.group_size",
    unit="{call}",
    description="Ledger calls committed together in one transaction (attribute operation)",
    explicit_bucket_boundaries_advisory=[1, 2, 4, 8, 16, 32, 64],
)

_STAGED = "points_metrics_staged"


def count_on_commit(session: AsyncSession, counter: Counter, points: int, service: str) -> None:
    """Add `points` to `counter` (attribute `service`) when the session's transaction commits."""
    sync = session.sync_session
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    sync.info.setdefault(_STAGED, []).append((transaction, counter, points, service))


@sa_event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    # after_commit also fires when a savepoint is released; only the outermost commit counts.
    if session.in_nested_transaction():
        return
    for _, counter, points, service in session.info.pop(_STAGED, []):
        counter.add(points, {"service": service})


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, rolled_back: SessionTransaction) -> None:
    staged: list[Any] | None = session.info.get(_STAGED)
    if staged:
        session.info[_STAGED] = [item for item in staged if not _inside(item[0], rolled_back)]


def _inside(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False
