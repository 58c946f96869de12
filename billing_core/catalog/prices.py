"""The price catalog: global prices, tenant overrides, tenant multipliers and provider costs, and
what is in force at a moment. Cached per process for one catalog revision."""
from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from billing_core.catalog.models import Terms, tiers_from_json, tiers_to_json
from billing_core.catalog.revision import bump_catalog_revision
from billing_core.catalog.tables import (
    catalog_corrections,
    catalog_revision,
    price_adjustments,
    prices,
    provider_costs,
)
from billing_core.db import UnitOfWork
from billing_core.errors import PriceNotFound, ValidationFailed

CURRENCY = "USD"
CATALOG_START = datetime(2000, 1, 1, tzinfo=timezone.utc)

CatalogKey = tuple[str, str, str, str]  # category, provider, model, unit

DEFAULT_CATALOG: list[tuple[str, str, str, str, str, str]] = [
    ("stt", "openai", "whisper-1", "second", "0.0001", "OpenAI Whisper STT"),
    ("llm", "openai", "gpt-4", "token", "0.00003", "OpenAI GPT-4 tokens"),
    ("llm_prompt", "openai", "gpt-4", "token", "0.00003", "OpenAI GPT-4 prompt tokens"),
    ("llm_completion", "openai", "gpt-4", "token", "0.00006", "OpenAI GPT-4 completion tokens"),
    ("tts", "openai", "tts-1", "character", "0.000015", "OpenAI TTS-1"),
    ("telephony", "twilio", "voice", "minute", "0.013", "Twilio voice minutes"),
    ("vm_infrastructure", "runpod", "gpu-t4", "second", "0.00011", "RunPod T4 GPU seconds"),
]


@dataclass(frozen=True)
class Price:
    id: uuid.UUID
    tenant_id: str | None
    category: str
    provider: str
    model: str
    unit: str
    unit_price: Decimal | None  # the unit model's price; None for package and graduated
    currency: str
    description: str | None
    effective_from: datetime
    effective_to: datetime | None
    created_at: datetime
    terms: Terms = field(default_factory=Terms)
    multiplier: Decimal | None = None  # the tenant's multiplier, already applied to `terms`
    # a binding quote's graduated price starts where the month stood when it was quoted
    quoted_position: Decimal | None = None
    revision: int = 0  # a catalog correction's rows rank above the rows they correct

    @property
    def rank(self) -> tuple[bool, int, datetime]:
        """A tenant's own price over a global one; then a correction over what it corrects; then the
        one that started last."""
        return (self.tenant_id is not None, self.revision, self.effective_from)

    @property
    def key(self) -> CatalogKey:
        return (self.category, self.provider, self.model, self.unit)

    @property
    def pricing_model(self) -> str:
        return self.terms.pricing_model

    @classmethod
    def from_row(cls, row: Any) -> Price:
        r = row._mapping
        terms = Terms(r["pricing_model"], r["unit_price"], r["package_size"], r["package_price"],
                      r["minimum_quantity"], tiers_from_json(r["tiers"]))
        return cls(id=r["id"], tenant_id=r["tenant_id"], category=r["category"], provider=r["provider"],
                   model=r["model"], unit=r["unit"], unit_price=r["unit_price"], currency=r["currency"],
                   description=r["description"], effective_from=r["effective_from"],
                   effective_to=r["effective_to"], created_at=r["created_at"], terms=terms,
                   revision=int(r.get("revision") or 0))


@dataclass(frozen=True)
class Adjustment:
    id: uuid.UUID
    tenant_id: str
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    multiplier: Decimal
    effective_from: datetime
    effective_to: datetime | None
    created_at: datetime

    @property
    def scope(self) -> tuple[str | None, str | None, str | None, str | None]:
        return (self.category, self.provider, self.model, self.unit)

    def covers(self, key: CatalogKey, at: datetime) -> bool:
        return all(s is None or s == k for s, k in zip(self.scope, key, strict=True)) and \
            self.effective_from <= at and (self.effective_to is None or self.effective_to > at)

    @property
    def specificity(self) -> tuple[int, tuple[bool, ...], datetime]:
        """More fields named wins; then category before provider before model before unit; then
        the one that started last."""
        named = tuple(s is not None for s in self.scope)
        return (sum(named), named, self.effective_from)


@dataclass(frozen=True)
class ProviderCost:
    id: uuid.UUID
    category: str
    provider: str
    model: str
    unit: str
    unit_cost: Decimal
    currency: str
    effective_from: datetime
    effective_to: datetime | None
    created_at: datetime

    @property
    def key(self) -> CatalogKey:
        return (self.category, self.provider, self.model, self.unit)


def _in_force(rows: Iterable[Any], at: datetime) -> Any:
    """Of effective-dated rows, the one in force at `at` that started last."""
    best = None
    for row in rows:
        if row.effective_from <= at and (row.effective_to is None or row.effective_to > at):
            if best is None or row.effective_from > best.effective_from:
                best = row
    return best


class TenantPrices:
    """The catalog as one tenant sees it: global rows and its overrides, its multipliers and the
    provider costs, every effective period."""

    def __init__(self, rows: Iterable[Price], adjustments: Iterable[Adjustment] = (),
                 costs: Iterable[ProviderCost] = ()):
        self._rows: dict[CatalogKey, list[Price]] = {}
        for price in rows:
            self._rows.setdefault(price.key, []).append(price)
        self.adjustments = list(adjustments)
        self._costs: dict[CatalogKey, list[ProviderCost]] = {}
        for cost in costs:
            self._costs.setdefault(cost.key, []).append(cost)

    def price_at(self, key: CatalogKey, at: datetime) -> Price | None:
        """The tenant's override if it has one in force, else the global price scaled by the most
        specific multiplier in force; among rows of the same level the one that started last wins, so
        a new price supersedes without rewriting the old. A tenant's own price is never scaled."""
        best = None
        for price in self._rows.get(key, ()):
            if price.effective_from <= at and (price.effective_to is None or price.effective_to > at):
                if best is None or price.rank > best.rank:
                    best = price
        if best is None or best.tenant_id is not None or not self.adjustments:
            return best
        adjustment = max((a for a in self.adjustments if a.covers(key, at)), key=lambda a: a.specificity,
                         default=None)
        if adjustment is None:
            return best
        terms = best.terms.scaled(adjustment.multiplier)
        return replace(best, terms=terms, unit_price=terms.unit_price, multiplier=adjustment.multiplier)

    def cost_at(self, key: CatalogKey, at: datetime) -> ProviderCost | None:
        return _in_force(self._costs.get(key, ()), at)

    def keys(self) -> list[CatalogKey]:
        return sorted(self._rows)


class Catalog:
    """A per-process cache of price rows, valid for one catalog revision.

    The revision moves in the same transaction as any change to prices (a trigger), and is read once
    per use, so a change is seen by the next request or batch after it commits, in every process.
    """

    def __init__(self, max_tenants: int = 10_000):
        self._lock = threading.Lock()
        self._version: tuple[str, int] | None = None
        self._global: tuple[list[Price], list[ProviderCost]] | None = None
        self._tenants: OrderedDict[str, TenantPrices] = OrderedDict()
        self._max_tenants = max_tenants

    def for_tenant(self, uow: UnitOfWork, tenant_id: str, revision: int | None = None) -> TenantPrices:
        """The tenant's prices; `revision` is the catalog revision the caller just read, if it did."""
        if revision is None:
            revision = uow.connection.execute(select(catalog_revision.c.revision)).scalar_one()
        # revisions count per database: the cache belongs to one database at one revision
        version = (str(uow.connection.engine.url), revision)
        with self._lock:
            if version != self._version:
                self._version, self._global = version, None
                self._tenants.clear()
            cached = self._tenants.get(tenant_id)
            if cached is not None:
                self._tenants.move_to_end(tenant_id)
                return cached
            global_rows = self._global
        if global_rows is None:
            global_rows = ([Price.from_row(r) for r in uow.connection.execute(
                select(prices).where(prices.c.tenant_id.is_(None)))],
                [ProviderCost(**r._mapping) for r in uow.connection.execute(select(provider_costs))])
        tenant_prices: TenantPrices
        # a sub-account resells its agency's prices through the agency's book (agencies/resale.py)
        from billing_core.agencies.resale import ResalePrices, agency_for_prices, load_multipliers, load_rows
        agency = agency_for_prices(uow.connection, tenant_id)
        if agency is not None:
            tenant_prices = ResalePrices(self.for_tenant(uow, agency, revision),
                                         load_multipliers(uow.connection, agency, tenant_id),
                                         load_rows(uow.connection, agency, tenant_id), tenant_id)
        else:
            overrides = [Price.from_row(r) for r in uow.connection.execute(
                select(prices).where(prices.c.tenant_id == tenant_id))]
            adjustments = [Adjustment(**r._mapping) for r in uow.connection.execute(
                select(price_adjustments).where(price_adjustments.c.tenant_id == tenant_id))]
            tenant_prices = TenantPrices([*global_rows[0], *overrides], adjustments, global_rows[1])
        with self._lock:
            if version == self._version:
                self._global = global_rows
                self._tenants[tenant_id] = tenant_prices
                while len(self._tenants) > self._max_tenants:
                    self._tenants.popitem(last=False)
        return tenant_prices


CATALOG = Catalog()


def clock_and_catalog(uow: UnitOfWork, tenant_id: str) -> tuple[datetime, TenantPrices]:
    """The transaction's time and the tenant's prices, in one round trip when the cache is warm."""
    now, revision = uow.connection.execute(select(func.now(), catalog_revision.c.revision)).one()
    return now, CATALOG.for_tenant(uow, tenant_id, revision)


def list_prices(uow: UnitOfWork, tenant_id: str, at: datetime, *, category: str | None = None,
                provider: str | None = None, model: str | None = None, unit: str | None = None) -> list[Price]:
    """The tenant's effective catalog at `at`, optionally filtered; overrides replace global rows."""
    catalog = CATALOG.for_tenant(uow, tenant_id)
    wanted = (category, provider, model, unit)
    found = []
    for key in catalog.keys():
        if all(w is None or w == k for w, k in zip(wanted, key, strict=True)):
            price = catalog.price_at(key, at)
            if price is not None:
                found.append(price)
    return found


def find_price(uow: UnitOfWork, tenant_id: str, key: CatalogKey, at: datetime) -> Price:
    """The price in force for the tenant at `at` (scaled by its multiplier), or PriceNotFound."""
    price = CATALOG.for_tenant(uow, tenant_id).price_at(key, at)
    if price is None:
        category, provider, model, unit = key
        raise PriceNotFound(
            f"no price for {category}/{provider}/{model}/{unit}",
            {"category": category, "provider": provider, "model": model, "unit": unit},
        )
    return price


def _terms_columns(terms: Terms) -> dict[str, Any]:
    return {"pricing_model": terms.pricing_model, "unit_price": terms.unit_price,
            "package_size": terms.package_size, "package_price": terms.package_price,
            "minimum_quantity": terms.minimum_quantity, "tiers": tiers_to_json(terms.tiers)}


def set_price(uow: UnitOfWork, *, tenant_id: str | None, key: CatalogKey, unit_price: Decimal | None = None,
              description: str | None = None, effective_from: datetime = CATALOG_START,
              terms: Terms | None = None) -> None:
    """Add a catalog row; an identical key and start is left as it is (loading is repeatable)."""
    category, provider, model, unit = key
    terms = terms or Terms(unit_price=unit_price)
    uow.connection.execute(
        insert(prices).values(
            id=uuid.uuid4(), tenant_id=tenant_id, category=category, provider=provider, model=model,
            unit=unit, currency=CURRENCY, description=description,
            effective_from=effective_from, **_terms_columns(terms),
        ).on_conflict_do_nothing()
    )
    bump_catalog_revision(uow)


def load_default_catalog(uow: UnitOfWork) -> None:
    """The default global prices (repeatable: a price already in force is left as it is); commits."""
    for category, provider, model, unit, unit_price, description in DEFAULT_CATALOG:
        set_price(uow, tenant_id=None, key=(category, provider, model, unit),
                  unit_price=Decimal(unit_price), description=description)
    uow.commit()


CLOCK_SKEW = timedelta(minutes=1)  # a start this little in the past is "now", not a correction


def put_price(uow: UnitOfWork, *, tenant_id: str | None, key: CatalogKey, terms: Terms,
              effective_from: datetime | None, description: str | None, correction_reason: str | None = None,
              created_by: str | None = None) -> Price:
    """A new price for `key` (a tenant's override, or global with no tenant) from `effective_from`
    (default now); the row in force until then is closed at that moment, never edited otherwise.
    Charges are priced at their event's time, so a price starts in the past only as a catalog
    correction (`correction_reason`): its row ranks above every row of the key in force from its start
    (whatever they started), nothing already charged changes, and a re-rate (POST /rerates) posts the
    differences. The same price again (with no start, or the same start) changes nothing. Commits."""
    category, provider, model, unit = key
    now = uow.now()
    start = effective_from or now
    if correction_reason is not None:
        if start >= now - CLOCK_SKEW:
            raise ValidationFailed("effectiveFrom", "a correction starts in the past")
        return _correct_price(uow, tenant_id=tenant_id, key=key, terms=terms, start=start, description=description,
                              reason=correction_reason, created_by=created_by)
    same_key = [prices.c.category == category, prices.c.provider == provider, prices.c.model == model,
                prices.c.unit == unit,
                prices.c.tenant_id.is_(None) if tenant_id is None else prices.c.tenant_id == tenant_id]
    # the open rows of this key, locked: two changes of one price run one after the other
    open_rows = [Price.from_row(r) for r in uow.connection.execute(
        select(prices).where(*same_key, prices.c.effective_to.is_(None)).with_for_update())]
    for current in open_rows:
        # PUT is idempotent: the price already set this way is answered as it is
        if current.terms == terms and (effective_from is None or current.effective_from == start):
            uow.rollback()
            return current
    if start < now - CLOCK_SKEW:
        raise ValidationFailed("effectiveFrom", "must not be in the past (a correction of past prices names "
                                                "correctionReason)")
    for current in open_rows:
        if current.effective_from >= start:
            raise ValidationFailed("effectiveFrom", "must be after the start of the latest price of this item "
                                   f"({current.effective_from.isoformat()})")
    if open_rows:
        uow.connection.execute(prices.update().where(*same_key, prices.c.effective_to.is_(None))
                               .values(effective_to=start))
    row = uow.connection.execute(
        insert(prices).values(id=uuid.uuid4(), tenant_id=tenant_id, category=category, provider=provider,
                              model=model, unit=unit, currency=CURRENCY,
                              description=description or (open_rows[0].description if open_rows else None),
                              effective_from=start, **_terms_columns(terms)).returning(*prices.c)).one()
    bump_catalog_revision(uow)
    uow.commit()
    return Price.from_row(row)


def _correct_price(uow: UnitOfWork, *, tenant_id: str | None, key: CatalogKey, terms: Terms, start: datetime,
                   description: str | None, reason: str, created_by: str | None) -> Price:
    """A catalog correction: a new open row from `start` (in the past) at a revision above every row
    of the key, so it is the price in force from `start` on; the rows it corrects stay as they were
    (an audit of what was charged), and the correction is recorded with its reason. Commits."""
    category, provider, model, unit = key
    same_key = [prices.c.category == category, prices.c.provider == provider, prices.c.model == model,
                prices.c.unit == unit,
                prices.c.tenant_id.is_(None) if tenant_id is None else prices.c.tenant_id == tenant_id]
    rows = [Price.from_row(r) for r in uow.connection.execute(select(prices).where(*same_key).with_for_update())]
    revision = max((r.revision for r in rows), default=0) + 1
    row = uow.connection.execute(
        insert(prices).values(id=uuid.uuid4(), tenant_id=tenant_id, category=category, provider=provider,
                              model=model, unit=unit, currency=CURRENCY, revision=revision,
                              description=description or (rows[0].description if rows else None),
                              effective_from=start, **_terms_columns(terms)).returning(*prices.c)).one()
    price = Price.from_row(row)
    uow.connection.execute(insert(catalog_corrections).values(
        id=uuid.uuid4(), tenant_id=tenant_id, price_id=price.id, category=category, provider=provider, model=model,
        unit=unit, effective_from=start, reason=reason, created_by=created_by, created_at=func.now()))
    bump_catalog_revision(uow)
    uow.commit()
    return price
