"""Usage history: filtered pages of usage events and the summary of the whole filtered range."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from billing_core import money
from billing_core.cursors import newest_first, next_cursor
from billing_core.db import UnitOfWork
from billing_core.ledger.model import UsageEventStatus
from billing_core.usage.events import UsageEvent, event_from_row
from billing_core.usage.tables import usage_events


@dataclass(frozen=True)
class UsageFilter:
    start: datetime | None = None  # of the usage's occurrence (occurredAt)
    end: datetime | None = None  # exclusive
    feature_key: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Summary:
    total_events: int
    total_cost: Decimal  # charged events only
    by_feature: dict[str, tuple[int, Decimal]]
    by_status: dict[str, tuple[int, Decimal]]


def _conditions(tenant_id: str, filters: UsageFilter) -> list:
    conditions = [usage_events.c.tenant_id == tenant_id]
    if filters.start is not None:
        conditions.append(usage_events.c.occurred_at >= filters.start)
    if filters.end is not None:
        conditions.append(usage_events.c.occurred_at < filters.end)
    if filters.feature_key is not None:
        conditions.append(usage_events.c.feature_key == filters.feature_key)
    if filters.status is not None:
        conditions.append(usage_events.c.status == filters.status)
    return conditions


def list_usage_events(uow: UnitOfWork, tenant_id: str, filters: UsageFilter, *, limit: int,
                      cursor: str | None = None) -> tuple[list[UsageEvent], str | None]:
    """One page of events, newest first, and the cursor of the next page (None on the last)."""
    query = select(usage_events).where(*_conditions(tenant_id, filters))
    rows = uow.connection.execute(newest_first(query, usage_events, cursor, limit)).all()
    return [event_from_row(r) for r in rows[:limit]], next_cursor(rows, limit)


def summarize_usage(uow: UnitOfWork, tenant_id: str, filters: UsageFilter) -> Summary:
    """Counts and costs over the whole filtered range (not a page), by feature and by status."""
    rows = uow.connection.execute(
        select(usage_events.c.feature_key, usage_events.c.status, func.count(),
               func.coalesce(func.sum(usage_events.c.total_cost), 0))
        .where(*_conditions(tenant_id, filters))
        .group_by(usage_events.c.feature_key, usage_events.c.status)
    ).all()
    by_feature: dict[str, tuple[int, Decimal]] = {}
    by_status: dict[str, tuple[int, Decimal]] = {}
    for feature_key, status, count, cost in rows:
        # a feature's cost is what it was billed; pending and rejected costs show under by_status
        billed = cost if status == UsageEventStatus.CHARGED else Decimal(0)
        for bucket, name, amount in ((by_feature, feature_key, billed), (by_status, status, cost)):
            events, total_cost = bucket.get(name, (0, Decimal(0)))
            bucket[name] = (events + count, money.add(total_cost, amount))
    return Summary(
        total_events=sum(count for count, _ in by_status.values()),
        # what was billed: charged events only; pending and rejected costs show under by_status
        total_cost=by_status.get(UsageEventStatus.CHARGED, (0, Decimal(0)))[1],
        by_feature=by_feature,
        by_status=by_status,
    )
