"""Pricing: the catalog and its models (unit, package, graduated, minimum quantity), tenant
multipliers, provider costs, the monthly tier positions, and the margins they make.

- catalog: price rows, overrides, multipliers and costs in force at a moment (cached per revision);
- models: the exact arithmetic of each model, and catalog validation;
- items: price_items, used by every path that prices;
- positions: where a tenant's graduated tiers stand in a month (moved only by charging);
- adjustments, costs: their administration;
- margins: revenue, cost and margin from the charged items.
"""
from billing_core.catalog.items import PricedItem, PricedItemLike, price_items
from billing_core.catalog.models import Terms
from billing_core.catalog.positions import TierPositions
from billing_core.catalog.prices import (
    CATALOG,
    CATALOG_START,
    CURRENCY,
    DEFAULT_CATALOG,
    Adjustment,
    Catalog,
    CatalogKey,
    Price,
    ProviderCost,
    TenantPrices,
    clock_and_catalog,
    find_price,
    list_prices,
    load_default_catalog,
    put_price,
    set_price,
)

__all__ = [
    "CATALOG", "CATALOG_START", "CURRENCY", "DEFAULT_CATALOG", "Adjustment", "Catalog", "CatalogKey", "Price",
    "PricedItem", "PricedItemLike", "ProviderCost", "TenantPrices", "Terms", "TierPositions", "clock_and_catalog",
    "find_price", "list_prices", "load_default_catalog", "price_items", "put_price", "set_price",
]
