"""Provider costs: what the platform pays OpenAI, Twilio or RunPod per unit, effective-dated like
prices. Each charged item records the unit cost in force at its event's time and its cost on the
actual quantity; an item with no cost in force is uncosted (NULL), never a zero cost."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from billing_core.catalog.dated import put_dated
from billing_core.catalog.prices import CURRENCY, CatalogKey, ProviderCost
from billing_core.catalog.tables import provider_costs
from billing_core.db import UnitOfWork


def put_cost(uow: UnitOfWork, key: CatalogKey, unit_cost: Decimal, effective_from: datetime | None) -> ProviderCost:
    """A new unit cost for a catalog item from `effective_from` (default now); commits."""
    c = provider_costs.c
    category, provider, model, unit = key
    row, _ = put_dated(uow, provider_costs,
                       [c.category == category, c.provider == provider, c.model == model, c.unit == unit],
                       {"category": category, "provider": provider, "model": model, "unit": unit,
                        "unit_cost": unit_cost, "currency": CURRENCY},
                       lambda current: current.unit_cost == unit_cost, effective_from)
    return ProviderCost(**row._mapping)


def list_costs(uow: UnitOfWork, *, category: str | None = None, provider: str | None = None,
               model: str | None = None, unit: str | None = None) -> list[ProviderCost]:
    """Every cost row (history included), optionally filtered, by item and start."""
    c = provider_costs.c
    query = select(provider_costs)
    for column, value in ((c.category, category), (c.provider, provider), (c.model, model), (c.unit, unit)):
        if value is not None:
            query = query.where(column == value)
    rows = uow.connection.execute(query.order_by(c.category, c.provider, c.model, c.unit, c.effective_from))
    return [ProviderCost(**r._mapping) for r in rows]
