"""The price catalog: global prices, tenant overrides, and prices in force at a moment."""
from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from . import money
from .db import UnitOfWork
from .errors import PriceNotFound, ValidationFailed
from .tables import catalog_revision, prices

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
    unit_price: Decimal
    currency: str
    description: str | None
    effective_from: datetime
    effective_to: datetime | None
    created_at: datetime

    @property
    def key(self) -> CatalogKey:
        return (self.category, self.provider, self.model, self.unit)


@dataclass(frozen=True)
class PricedItem:
    item: Any  # a UsageItem, or an item of a stored usage event
    price: Price
    cost: Decimal


class TenantPrices:
    """The catalog as one tenant sees it: global rows and its overrides, every effective period."""

    def __init__(self, rows: Iterable[Price]):
        self._rows: dict[CatalogKey, list[Price]] = {}
        for price in rows:
            self._rows.setdefault(price.key, []).append(price)

    def price_at(self, key: CatalogKey, at: datetime) -> Price | None:
        """The tenant's override if it has one in force, else the global price; among rows of the
        same level the one that started last wins, so a new price supersedes without rewriting the old."""
        best = None
        for price in self._rows.get(key, ()):
            if price.effective_from <= at and (price.effective_to is None or price.effective_to > at):
                if best is None or _rank(price) > _rank(best):
                    best = price
        return best

    def keys(self) -> list[CatalogKey]:
        return sorted(self._rows)


def _rank(price: Price) -> tuple[bool, datetime]:
    return (price.tenant_id is not None, price.effective_from)


class Catalog:
    """A per-process cache of price rows, valid for one catalog revision.

    The revision moves in the same transaction as any change to prices (a trigger), and is read once
    per use, so a change is seen by the next request or batch after it commits, in every process.
    """

    def __init__(self, max_tenants: int = 10_000):
        self._lock = threading.Lock()
        self._version: tuple[str, int] | None = None
        self._global: list[Price] | None = None
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
            global_rows = [Price(**r._mapping) for r in uow.connection.execute(
                select(prices).where(prices.c.tenant_id.is_(None)))]
        overrides = [Price(**r._mapping) for r in uow.connection.execute(
            select(prices).where(prices.c.tenant_id == tenant_id))]
        tenant_prices = TenantPrices([*global_rows, *overrides])
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


class PricedItemLike(Protocol):
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal


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
    price = CATALOG.for_tenant(uow, tenant_id).price_at(key, at)
    if price is None:
        category, provider, model, unit = key
        raise PriceNotFound(
            f"no price for {category}/{provider}/{model}/{unit}",
            {"category": category, "provider": provider, "model": model, "unit": unit},
        )
    return price


def price_items(uow: UnitOfWork, tenant_id: str, items: Sequence[PricedItemLike], at: datetime,
                catalog: TenantPrices | None = None) -> list[PricedItem]:
    """Price every item at `at`; the first item without a price raises PriceNotFound naming its index."""
    catalog = catalog or CATALOG.for_tenant(uow, tenant_id)
    priced = []
    for index, item in enumerate(items):
        key = (item.category, item.provider, item.model, item.unit)
        price = catalog.price_at(key, at)
        if price is None:
            raise PriceNotFound(
                f"item {index}: no price for {'/'.join(key)}",
                {"index": index, "field": f"items[{index}]", "category": item.category,
                 "provider": item.provider, "model": item.model, "unit": item.unit},
            )
        priced.append(PricedItem(item, price, money.multiply(item.quantity, price.unit_price)))
    return priced


def set_price(uow: UnitOfWork, *, tenant_id: str | None, key: CatalogKey, unit_price: Decimal,
              description: str | None = None, effective_from: datetime = CATALOG_START) -> None:
    """Add a catalog row; an identical key and start is left as it is (loading is repeatable)."""
    category, provider, model, unit = key
    uow.connection.execute(
        insert(prices).values(
            id=uuid.uuid4(), tenant_id=tenant_id, category=category, provider=provider, model=model,
            unit=unit, unit_price=unit_price, currency=CURRENCY, description=description,
            effective_from=effective_from,
        ).on_conflict_do_nothing()
    )


def load_default_catalog(uow: UnitOfWork) -> None:
    for category, provider, model, unit, unit_price, description in DEFAULT_CATALOG:
        set_price(uow, tenant_id=None, key=(category, provider, model, unit),
                  unit_price=Decimal(unit_price), description=description)


def put_price(uow: UnitOfWork, *, tenant_id: str | None, key: CatalogKey, unit_price: Decimal,
              effective_from: datetime | None, description: str | None) -> Price:
    """A new price for `key` (a tenant's override, or global with no tenant) from `effective_from`
    (default now); the row in force until then is closed at that moment, never edited otherwise.
    Charges are priced at their event's time, so a price cannot start in the past. The same price
    again (with no start, or the same start) changes nothing. Commits."""
    category, provider, model, unit = key
    now = uow.now()
    start = effective_from or now
    same_key = [prices.c.category == category, prices.c.provider == provider, prices.c.model == model,
                prices.c.unit == unit,
                prices.c.tenant_id.is_(None) if tenant_id is None else prices.c.tenant_id == tenant_id]
    # the open rows of this key, locked: two changes of one price run one after the other
    open_rows = [Price(**r._mapping) for r in uow.connection.execute(
        select(prices).where(*same_key, prices.c.effective_to.is_(None)).with_for_update())]
    for current in open_rows:
        # PUT is idempotent: the price already set this way is answered as it is
        if current.unit_price == unit_price and (effective_from is None or current.effective_from == start):
            uow.rollback()
            return current
    if start < now:
        raise ValidationFailed("effectiveFrom", "must not be in the past")
    for current in open_rows:
        if current.effective_from >= start:
            raise ValidationFailed("effectiveFrom", "must be after the start of the latest price of this item "
                                   f"({current.effective_from.isoformat()})")
    if open_rows:
        uow.connection.execute(prices.update().where(*same_key, prices.c.effective_to.is_(None))
                               .values(effective_to=start))
    row = uow.connection.execute(
        insert(prices).values(id=uuid.uuid4(), tenant_id=tenant_id, category=category, provider=provider,
                              model=model, unit=unit, unit_price=unit_price, currency=CURRENCY,
                              description=description or (open_rows[0].description if open_rows else None),
                              effective_from=start).returning(*prices.c)).one()
    uow.commit()
    return Price(**row._mapping)
