"""Pricing items: the one function every path that prices goes through (quotes, acceptance of
charges, holds made from items, binding quotes, the charging worker), so they can never disagree."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from billing_core import money
from billing_core.catalog.models import GRADUATED, PACKAGE, Part, rate
from billing_core.catalog.positions import TierPositions, month_of
from billing_core.catalog.prices import CATALOG, CatalogKey, Price, TenantPrices
from billing_core.db import UnitOfWork
from billing_core.errors import PriceNotFound


class PricedItemLike(Protocol):
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal


class Prices(Protocol):
    def price_at(self, key: CatalogKey, at: datetime) -> Price | None: ...


@dataclass(frozen=True)
class PricedItem:
    item: Any  # a UsageItem, or an item of a stored usage event
    price: Price
    cost: Decimal  # what the tenant is charged for it
    billed_quantity: Decimal
    parts: tuple[Part, ...]
    unit_cost: Decimal | None = None  # the provider's, in force at the event's time; None: uncosted
    provider_cost: Decimal | None = None  # actual quantity x unit_cost
    tier_start: Decimal | None = None  # graduated: the month's position before this item
    at: datetime | None = None

    @property
    def key(self) -> CatalogKey:
        return (self.item.category, self.item.provider, self.item.model, self.item.unit)

    @property
    def advance(self) -> tuple[CatalogKey, datetime, Decimal] | None:
        """What charging this item moves the month's tier position by (graduated items only)."""
        if self.price.pricing_model != GRADUATED or self.at is None:
            return None
        return (self.key, self.at, self.billed_quantity)

    def breakdown(self) -> dict[str, Any] | None:
        """How it was priced, as stored on the charged item and shown on quote and charge lines;
        None for quantity x unit price with no multiplier (most items: nothing more to store)."""
        terms = self.price.terms
        if terms.is_plain and self.price.multiplier is None:
            return None
        text = money.format_decimal
        body: dict[str, Any] = {"pricingModel": terms.pricing_model, "billedQuantity": text(self.billed_quantity),
                                "parts": [_part(p) for p in self.parts]}
        if self.price.multiplier is not None:
            body["multiplier"] = text(self.price.multiplier)
        if terms.minimum_quantity is not None:
            body["minimumQuantity"] = text(terms.minimum_quantity)
        if self.tier_start is not None:
            body["tierStart"] = text(self.tier_start)
        return body


def _part(part: Part) -> dict[str, str]:
    body = {"quantity": money.format_decimal(part.quantity), "unitPrice": money.format_decimal(part.unit_price),
            "amount": money.format_decimal(part.amount)}
    if part.package_size is not None:
        body["packageSize"] = money.format_decimal(part.package_size)
    return body


def price_items(uow: UnitOfWork, tenant_id: str, items: Sequence[PricedItemLike], at: datetime,
                prices: Prices | None = None, positions: TierPositions | None = None,
                catalog: TenantPrices | None = None) -> list[PricedItem]:
    """Price every item at `at` (an event's time); the first item without a price raises
    PriceNotFound naming its index. Graduated items start where the month stands in `positions`
    (the charging path's, locked) or, without them, at the committed position; two items of one
    catalog item in one event follow each other. Nothing here moves a position: the charging path
    advances them once the event is charged."""
    if catalog is None:
        catalog = prices if isinstance(prices, TenantPrices) else getattr(prices, "catalog", None)
    catalog = catalog or CATALOG.for_tenant(uow, tenant_id)
    prices = prices or catalog
    found: list[tuple[PricedItemLike, Price]] = []
    for index, item in enumerate(items):
        key = (item.category, item.provider, item.model, item.unit)
        price = prices.price_at(key, at)
        if price is None:
            raise PriceNotFound(
                f"item {index}: no price for {'/'.join(key)}",
                {"index": index, "field": f"items[{index}]", "category": item.category,
                 "provider": item.provider, "model": item.model, "unit": item.unit},
            )
        found.append((item, price))
    graduated = {p.key for _, p in found if p.pricing_model == GRADUATED and p.quoted_position is None}
    if graduated:
        positions = positions or TierPositions(uow, tenant_id, locked=False)
        positions.load((key, month_of(at)) for key in graduated)
    used: dict[CatalogKey, Decimal] = {}  # what earlier items of this event took of the month
    priced = []
    for item, price in found:
        key, start = price.key, None
        if price.pricing_model == GRADUATED:
            base = price.quoted_position if price.quoted_position is not None else positions.position(key, at)  # type: ignore[union-attr]
            start = money.add(base, used.get(key, Decimal(0)))
        rated = rate(price.terms, item.quantity, start or Decimal(0))
        if start is not None:
            used[key] = money.add(used.get(key, Decimal(0)), rated.billed_quantity)
        cost = catalog.cost_at(key, at)
        priced.append(PricedItem(
            item, price, rated.amount, rated.billed_quantity, rated.parts,
            unit_cost=None if cost is None else cost.unit_cost,
            provider_cost=None if cost is None else money.multiply(item.quantity, cost.unit_cost),
            tier_start=start, at=at))
    return priced


def line_breakdown(pricing_model: str, billed_quantity: Decimal, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The breakdown of a quote or charge line: tiers for graduated, packages for package."""
    body: dict[str, Any] = {"pricingModel": pricing_model, "billedQuantity": money.format_decimal(billed_quantity)}
    if pricing_model == GRADUATED:
        body["tiers"] = [{"quantity": p["quantity"], "unitPrice": p["unitPrice"], "amount": p["amount"]}
                         for p in parts]
    elif pricing_model == PACKAGE:
        part = parts[0] if parts else None
        body["packages"] = {"count": part["quantity"] if part else "0",
                            "packageSize": part["packageSize"] if part else None,
                            "packagePrice": part["unitPrice"] if part else None,
                            "amount": part["amount"] if part else "0"}
    return body


def estimate_cost(uow: UnitOfWork, tenant_id: str, items: Sequence[PricedItemLike]) -> Decimal:
    """What the items would cost now, priced as a quote prices them (graduated from where the month
    stands); nothing is written. The entitlement check gates work on this estimate."""
    from billing_core.catalog.prices import clock_and_catalog

    now, catalog = clock_and_catalog(uow, tenant_id)
    return money.total(p.cost for p in price_items(uow, tenant_id, items, now, catalog))
