"""Recurring allocations: a named grant a tenant gets once per period (the UTC calendar month),
expiring at the period's end unless told otherwise.

Once per (tenant, name, period) is kept by allocation_grants' primary key: the beat job at 00:05
UTC on the 1st, a second run of it, and the allocation's creation (which grants the current period)
may all try; the first insert wins and the others wait for it and then add nothing. The grant is an
ordinary credit grant (source `allocation`), so the wallet's grants, the ledger and the invoice show
it like any other."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field
from sqlalchemy import text

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.fields import PositiveAmount, Strict, TenantId
from billing_core.ledger.book import WalletBook

AllocationName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
SCAN_PAGE = 200


class AllocationRequest(Strict):
    amount: PositiveAmount
    kind: Literal["promotional", "paid"] = "promotional"
    period: Literal["month"] = "month"
    expiresAtPeriodEnd: bool = True
    tenantId: TenantId | None = None


@dataclass(frozen=True)
class Allocation:
    tenant_id: str
    name: str
    amount: Decimal
    kind: str
    period: str
    expires_at_period_end: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AllocationView:
    allocation: Allocation
    last_period_granted: datetime | None


def period_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding `at`: [start, end)."""
    at = at.astimezone(timezone.utc)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _allocation(row) -> Allocation:  # noqa: ANN001
    return _allocation_values(dict(row._mapping))


def grant_period(uow: UnitOfWork, allocation: Allocation, at: datetime) -> bool:
    """Grant the allocation for the period holding `at` unless it was granted for it (no commit).
    True when this call granted it."""
    start, end = period_bounds(at)
    label = start.strftime("%Y-%m")
    book = WalletBook.open(uow, allocation.tenant_id)  # concurrent grants of one wallet wait here
    _, grant = book.add_grant(
        allocation.amount, kind=allocation.kind, source="allocation",
        expires_at=end if allocation.expires_at_period_end else None,
        grant_reference=f"allocation:{allocation.name}:{label}", reference=f"allocation:{allocation.name}:{label}",
        description=f"Allocation {allocation.name} for {label}", idempotency_key=f"allocation:{allocation.name}:{label}",
        created_by="allocation")
    claimed = uow.connection.execute(text("""
        INSERT INTO allocation_grants (tenant_id, name, period_start, grant_id, amount)
        VALUES (:t, :name, :start, :grant, :amount)
        ON CONFLICT DO NOTHING RETURNING grant_id
    """), {"t": allocation.tenant_id, "name": allocation.name, "start": start, "grant": grant.id,
           "amount": allocation.amount}).first()
    if claimed is None:
        return False  # the book's grant is never written
    book.flush()
    return True


def put_allocation(uow: UnitOfWork, tenant_id: str, name: str, command: AllocationRequest) -> Allocation:
    """Create or change the tenant's allocation and grant the current period if it was not yet
    granted (a change applies from the next period); commit. The transaction's time is a parameter: no
    now() in DO UPDATE SET (Citus)."""
    now = uow.now()
    row = uow.connection.execute(text("""
        INSERT INTO allocations AS a (tenant_id, name, amount, kind, period, expires_at_period_end)
        VALUES (:t, :name, :amount, :kind, :period, :expires)
        ON CONFLICT (tenant_id, name) DO UPDATE SET amount = EXCLUDED.amount, kind = EXCLUDED.kind,
            period = EXCLUDED.period, expires_at_period_end = EXCLUDED.expires_at_period_end, updated_at = :now
        RETURNING *
    """), {"t": tenant_id, "name": name, "amount": command.amount, "kind": command.kind, "period": command.period,
           "expires": command.expiresAtPeriodEnd, "now": now}).one()
    allocation = _allocation(row)
    grant_period(uow, allocation, now)
    uow.commit()
    return allocation


def list_allocations(uow: UnitOfWork, tenant_id: str, name: str | None = None) -> list[AllocationView]:
    rows = uow.connection.execute(text("""
        SELECT a.*, (SELECT max(period_start) FROM allocation_grants g
                     WHERE g.tenant_id = a.tenant_id AND g.name = a.name) AS last_period_granted
        FROM allocations a WHERE a.tenant_id = :t AND (CAST(:name AS text) IS NULL OR a.name = :name)
        ORDER BY a.name
    """), {"t": tenant_id, "name": name}).all()
    views = []
    for row in rows:
        values = dict(row._mapping)
        last = values.pop("last_period_granted")
        views.append(AllocationView(_allocation_values(values), last))
    return views


def _allocation_values(values: dict) -> Allocation:
    values["amount"] = money.normalize(values["amount"])
    return Allocation(**values)


def delete_allocation(uow: UnitOfWork, tenant_id: str, name: str) -> bool:
    """Stop the allocation from the next period on (what it granted stays, to expire as granted); commit."""
    deleted = uow.connection.execute(text(
        "DELETE FROM allocations WHERE tenant_id = :t AND name = :name RETURNING name"),
        {"t": tenant_id, "name": name}).first()
    uow.commit()
    return deleted is not None


def grant_due(new_uow: Callable[[], UnitOfWork], at: datetime | None = None) -> int:
    """The beat job: grant every allocation for the current period (or the one holding `at`), one
    wallet per transaction so one failure does not hold back the others. Returns how many it granted."""
    granted = 0
    after = ("", "")
    while True:
        with new_uow() as uow:
            now = at or uow.now()
            start, _ = period_bounds(now)
            rows = uow.connection.execute(text("""
                SELECT a.* FROM allocations a /* citus:operator-scan allocation-candidates */
                WHERE (a.tenant_id, a.name) > (:after_t, :after_n)
                  AND NOT EXISTS (SELECT 1 FROM allocation_grants g
                                  WHERE g.tenant_id = a.tenant_id AND g.name = a.name AND g.period_start = :start)
                ORDER BY a.tenant_id, a.name LIMIT :limit
            """), {"after_t": after[0], "after_n": after[1], "start": start, "limit": SCAN_PAGE}).all()
        if not rows:
            return granted
        for row in rows:
            with new_uow() as uow:
                if grant_period(uow, _allocation(row), now):
                    granted += 1
                uow.commit()
        after = (rows[-1].tenant_id, rows[-1].name)
