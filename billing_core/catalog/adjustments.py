"""Tenant multipliers of the global prices: 0.9 is 10% off the list, 1.25 a reseller's markup.

The most specific adjustment in force at the event's time applies (see Adjustment.specificity) to
every price of every model (unit price, package price, each tier's price); a tenant's own price row
wins over any multiplier. The scaled price is exact (Decimal) and recorded on the charged item."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from billing_core.catalog.dated import put_dated
from billing_core.catalog.prices import Adjustment
from billing_core.catalog.tables import price_adjustments
from billing_core.db import UnitOfWork

SCOPE = ("category", "provider", "model", "unit")


def put_adjustment(uow: UnitOfWork, tenant_id: str, *, multiplier: Decimal,
                   scope: tuple[str | None, str | None, str | None, str | None],
                   effective_from: datetime | None) -> Adjustment:
    """A new multiplier for the tenant's scope from `effective_from` (default now); commits."""
    c = price_adjustments.c
    conditions = [c.tenant_id == tenant_id] + [
        c[name].is_(None) if value is None else c[name] == value for name, value in zip(SCOPE, scope, strict=True)]
    row, _ = put_dated(uow, price_adjustments, conditions,
                       {"tenant_id": tenant_id, "multiplier": multiplier, **dict(zip(SCOPE, scope, strict=True))},
                       lambda current: current.multiplier == multiplier, effective_from)
    return Adjustment(**row._mapping)


def list_adjustments(uow: UnitOfWork, tenant_id: str) -> list[Adjustment]:
    """Every adjustment of the tenant, past, current and future, by scope and start."""
    c = price_adjustments.c
    rows = uow.connection.execute(select(price_adjustments).where(c.tenant_id == tenant_id).order_by(
        c.category.nulls_first(), c.provider.nulls_first(), c.model.nulls_first(), c.unit.nulls_first(),
        c.effective_from))
    return [Adjustment(**r._mapping) for r in rows]
