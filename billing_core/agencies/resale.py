"""A sub-account's prices: its agency's prices (as LAD charges the agency, overrides and multipliers
included) scaled by the agency's resale price book. The sub-account sees these and nothing of the
level above: no agency price, no multiplier (provider costs are recorded on its items, as on every
tenant's, for the operator's margins only)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select

from billing_core.agencies.tables import agency_members, resale_multipliers
from billing_core.catalog.prices import CatalogKey, Price, ProviderCost, TenantPrices

Scope = tuple[str | None, str | None, str | None, str | None]


@dataclass(frozen=True)
class ResaleMultiplier:
    sub_account_id: str | None
    scope: Scope
    multiplier: Decimal

    def covers(self, key: CatalogKey) -> bool:
        return all(s is None or s == k for s, k in zip(self.scope, key, strict=True))

    @property
    def specificity(self) -> tuple[int, bool, tuple[bool, ...]]:
        """More catalog fields named wins; then one sub-account's row over every sub-account's; then
        category before provider before model before unit."""
        named = tuple(s is not None for s in self.scope)
        return (sum(named), self.sub_account_id is not None, named)


def best_multiplier(multipliers: Iterable[ResaleMultiplier], key: CatalogKey) -> Decimal | None:
    found = max((m for m in multipliers if m.covers(key)), key=lambda m: m.specificity, default=None)
    return None if found is None else found.multiplier


def every_sub_account(agency_id: str) -> str:
    """The owner of an agency's explicit resale rows for all its sub-accounts (`*` is in no tenant id)."""
    return f"{agency_id}:*"


class ResalePrices(TenantPrices):
    """Explicit resale rows first (the sub-account's own, then the agency's for every sub-account; any
    pricing model, effective-dated like any price), else the agency's price times the book's multiplier."""

    def __init__(self, agency: TenantPrices, multipliers: Iterable[ResaleMultiplier], rows: Iterable[Price] = (),
                 sub_account_id: str | None = None):
        super().__init__(rows)
        self.agency = agency
        self.multipliers = list(multipliers)
        self.sub_account_id = sub_account_id

    def price_at(self, key: CatalogKey, at: datetime) -> Price | None:
        explicit = [p for p in self._rows.get(key, ())
                    if p.effective_from <= at and (p.effective_to is None or p.effective_to > at)]
        if explicit:
            return max(explicit, key=lambda p: (p.tenant_id == self.sub_account_id, p.effective_from))
        price = self.agency.price_at(key, at)
        if price is None:
            return None
        multiplier = best_multiplier(self.multipliers, key)
        if multiplier is None:  # no book for it: resold at the agency's price
            return replace(price, multiplier=None)
        terms = price.terms.scaled(multiplier)
        return replace(price, terms=terms, unit_price=terms.unit_price, multiplier=None)

    def cost_at(self, key: CatalogKey, at: datetime) -> ProviderCost | None:
        # stored on the sub-account's items for the operator's margins; no tenant's answer carries them
        return self.agency.cost_at(key, at)

    def keys(self) -> list[CatalogKey]:
        return sorted({*self.agency.keys(), *self._rows})


def agency_for_prices(connection: Any, tenant_id: str) -> str | None:
    """The agency whose prices a sub-account resells, or None for any other tenant (its membership:
    one primary-key read, on a catalog cache miss only)."""
    return connection.execute(select(agency_members.c.agency_id).where(
        agency_members.c.tenant_id == tenant_id)).scalar_one_or_none()


def load_rows(connection: Any, agency_id: str, sub_account_id: str) -> list[Price]:
    """The explicit resale rows that apply to a sub-account: its own and its agency's for every one."""
    from billing_core.catalog.tables import prices

    return [Price.from_row(r) for r in connection.execute(select(prices).where(
        prices.c.tenant_id.in_([sub_account_id, every_sub_account(agency_id)])))]


def load_multipliers(connection: Any, agency_id: str, sub_account_id: str | None) -> list[ResaleMultiplier]:
    """The agency's book as it applies to one sub-account (its own rows and every sub-account's), or
    the rows for every sub-account when `sub_account_id` is None."""
    c = resale_multipliers.c
    which = c.sub_account_id.is_(None) if sub_account_id is None else or_(
        c.sub_account_id.is_(None), c.sub_account_id == sub_account_id)
    return [ResaleMultiplier(r.sub_account_id, (r.category, r.provider, r.model, r.unit), r.multiplier)
            for r in connection.execute(select(resale_multipliers).where(c.tenant_id == agency_id, which))]
