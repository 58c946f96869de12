"""What a tenant spent, day by day, for the portal's usage chart and its table: charged usage only,
costs exact (NUMERIC sums), days in UTC by when the usage happened."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.usage.events import UsageEvent, event_from_row

GROUPINGS = ("feature", "category")


@dataclass(frozen=True)
class DailySpend:
    days: list[date]
    groups: list[str]
    cost: dict[tuple[date, str], Decimal]  # (day, group) -> cost; absent: nothing spent

    def total(self, group: str) -> Decimal:
        return money.total(c for (_, g), c in self.cost.items() if g == group)


def daily_spend(uow: UnitOfWork, tenant_id: str, start: datetime, end: datetime, by: str) -> DailySpend:
    """Cost per UTC day in [start, end) by feature key or by item category."""
    if by == "feature":
        query = """
            SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day, e.feature_key AS grp, sum(e.total_cost) AS cost
            FROM usage_events e
            WHERE e.tenant_id = :t AND e.status = 'charged' AND e.occurred_at >= :start AND e.occurred_at < :end
            GROUP BY 1, 2"""
    elif by == "category":
        query = """
            SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day, i.category AS grp, sum(i.cost) AS cost
            FROM usage_events e
            JOIN usage_event_items i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
            WHERE e.tenant_id = :t AND e.status = 'charged' AND e.occurred_at >= :start AND e.occurred_at < :end
            GROUP BY 1, 2"""
    else:
        raise ValueError(f"by must be one of {GROUPINGS}")
    rows = uow.connection.execute(text(query), {"t": tenant_id, "start": start, "end": end}).all()
    cost = {(r.day, r.grp): money.normalize(r.cost) for r in rows if r.cost is not None}
    days = [d.date() for d in _days(start, end)]
    return DailySpend(days, sorted({g for _, g in cost}), cost)


def _days(start: datetime, end: datetime) -> list[datetime]:
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = []
    while day < end:
        days.append(day)
        day += timedelta(days=1)
    return days


def top_calls(uow: UnitOfWork, tenant_id: str, start: datetime, end: datetime, limit: int = 10) -> list[UsageEvent]:
    """The most expensive charged events in [start, end), dearest first."""
    rows = uow.connection.execute(text("""
        SELECT * FROM usage_events
        WHERE tenant_id = :t AND status = 'charged' AND occurred_at >= :start AND occurred_at < :end
        ORDER BY total_cost DESC, created_at DESC LIMIT :limit"""),
        {"t": tenant_id, "start": start, "end": end, "limit": limit}).all()
    return [event_from_row(r) for r in rows]
