"""Binding quotes: a quote's unit prices hold for charges and reservations that name it until it expires."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, text

from billing_core import money
from billing_core.catalog import (
    CURRENCY,
    CatalogKey,
    Price,
    PricedItem,
    PricedItemLike,
    TenantPrices,
    clock_and_catalog,
    price_items,
)
from billing_core.catalog.models import GRADUATED, Terms, terms_from_json, terms_to_json
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound, QuoteExpired
from billing_core.lifecycle.tables import quotes


@dataclass(frozen=True)
class Quote:
    id: uuid.UUID
    tenant_id: str
    lines: list[dict[str, Any]]
    total_cost: Decimal
    currency: str
    expires_at: datetime
    created_at: datetime


class QuotedPrices:
    """Prices as a quote fixed them — every model's terms as scaled then, and for graduated items the
    place in the month's tiers the quote priced from; an item the quote did not cover is priced from
    the catalog."""

    def __init__(self, quote: Quote, catalog: TenantPrices):
        self.catalog = catalog
        self._quoted: dict[CatalogKey, Price] = {}
        for line in quote.lines:
            key = (line["category"], line["provider"], line["model"], line["unit"])
            if key in self._quoted:
                continue  # a later line of the same item follows the first from where it ended
            # quotes made before pricing models kept only a unit price
            terms = terms_from_json(line["terms"]) if "terms" in line else Terms(
                unit_price=money.to_decimal(line["unitPrice"]))
            self._quoted[key] = Price(
                id=uuid.UUID(line["priceId"]), tenant_id=quote.tenant_id, category=key[0], provider=key[1],
                model=key[2], unit=key[3], unit_price=terms.unit_price, currency=quote.currency,
                description=f"quote {quote.id}", effective_from=quote.created_at, effective_to=quote.expires_at,
                created_at=quote.created_at, terms=terms,
                multiplier=None if line.get("multiplier") is None else Decimal(line["multiplier"]),
                quoted_position=Decimal(line["tierStart"]) if terms.pricing_model == GRADUATED else None)

    def price_at(self, key: CatalogKey, at: datetime) -> Price | None:
        return self._quoted.get(key) or self.catalog.price_at(key, at)


def create_quote(uow: UnitOfWork, tenant_id: str, items: Sequence[PricedItemLike],
                 ttl_seconds: int) -> tuple[Quote, list[PricedItem]]:
    """Price the items now and keep their unit prices for `ttl_seconds`; commits."""
    now, catalog = clock_and_catalog(uow, tenant_id)
    priced = price_items(uow, tenant_id, items, now, catalog)
    quote = Quote(
        id=uuid.uuid4(), tenant_id=tenant_id,
        lines=[_line(p) for p in priced],
        total_cost=money.total(p.cost for p in priced), currency=CURRENCY,
        expires_at=now + timedelta(seconds=ttl_seconds), created_at=now)
    uow.connection.execute(insert(quotes).values(**vars(quote)))
    uow.commit()
    return quote, priced


def _line(p: PricedItem) -> dict[str, Any]:
    line = {"category": p.item.category, "provider": p.item.provider, "model": p.item.model, "unit": p.item.unit,
            "quantity": money.format_decimal(p.item.quantity),
            "unitPrice": None if p.price.unit_price is None else money.format_decimal(p.price.unit_price),
            "priceId": str(p.price.id)}
    if not p.price.terms.is_plain or p.price.multiplier is not None:
        line["terms"] = terms_to_json(p.price.terms)
        line["multiplier"] = None if p.price.multiplier is None else money.format_decimal(p.price.multiplier)
    if p.tier_start is not None:
        line["tierStart"] = money.format_decimal(p.tier_start)
    return line


def load_quotes(uow: UnitOfWork, tenant_id: str, quote_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Quote]:
    wanted = list(set(quote_ids))
    if not wanted:
        return {}
    rows = uow.connection.execute(select(quotes).where(quotes.c.tenant_id == tenant_id, quotes.c.id.in_(wanted)))
    return {r.id: Quote(**r._mapping) for r in rows}


def binding_prices(found: dict[uuid.UUID, Quote], quote_id: uuid.UUID, at: datetime,
                   catalog: TenantPrices) -> QuotedPrices:
    """The prices of quote `quote_id` for a charge or hold made at `at`: NotFound for an unknown
    quote (or another tenant's), QuoteExpired after its expiry."""
    quote = found.get(quote_id)
    if quote is None:
        raise NotFound(f"quote {quote_id} not found", {"field": "quoteId"})
    if at >= quote.expires_at:
        raise QuoteExpired("the quote expired; request a new one",
                           {"field": "quoteId", "quoteId": str(quote_id), "expiresAt": quote.expires_at.isoformat()})
    return QuotedPrices(quote, catalog)


def purge_expired(uow: UnitOfWork, older_than_days: int = 7) -> int:
    """Delete quotes expired this long ago that no charge or hold names; commits. Cross-tenant
    housekeeping over the expiry index, in two steps (as Citus needs): the tenants with such quotes,
    read without locks, then each tenant's quotes deleted by a statement filtered on that tenant."""
    tenants = uow.connection.execute(text("""
        SELECT DISTINCT tenant_id FROM quotes /* citus:operator-scan expiry-candidates */
        WHERE expires_at < now() - make_interval(days => :days)
    """), {"days": older_than_days}).scalars().all()
    deleted = 0
    for tenant_id in tenants:
        deleted += uow.connection.execute(text("""
            DELETE FROM quotes q WHERE q.tenant_id = :t AND q.expires_at < now() - make_interval(days => :days)
              AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.tenant_id = q.tenant_id AND e.quote_id = q.id)
              AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.tenant_id = q.tenant_id AND r.quote_id = q.id)
        """), {"t": tenant_id, "days": older_than_days}).rowcount
    uow.commit()
    return deleted
