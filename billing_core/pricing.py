"""The price catalog: global prices, tenant overrides, and prices in force at a moment."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from . import money
from .commands import UsageItem
from .db import UnitOfWork
from .errors import PriceNotFound
from .tables import prices

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
    item: UsageItem
    price: Price
    cost: Decimal


def _in_force(at: datetime):
    return and_(prices.c.effective_from <= at, or_(prices.c.effective_to.is_(None), prices.c.effective_to > at))


def _visible_to(tenant_id: str):
    return or_(prices.c.tenant_id == tenant_id, prices.c.tenant_id.is_(None))


def _winning(rows: Iterable) -> dict[CatalogKey, Price]:
    """Per catalog key, the tenant's override if it has one, else the global price; among rows of
    the same level the one that started last wins, so a new price supersedes without rewriting the old."""
    chosen: dict[CatalogKey, Price] = {}
    for row in rows:
        price = Price(**row._mapping)
        current = chosen.get(price.key)
        if current is None or _rank(price) > _rank(current):
            chosen[price.key] = price
    return chosen


def _rank(price: Price) -> tuple[bool, datetime]:
    return (price.tenant_id is not None, price.effective_from)


def prices_in_force(uow: UnitOfWork, tenant_id: str, keys: Iterable[CatalogKey], at: datetime) -> dict[CatalogKey, Price]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = uow.connection.execute(
        select(prices).where(
            _visible_to(tenant_id),
            tuple_(prices.c.category, prices.c.provider, prices.c.model, prices.c.unit).in_(wanted),
            _in_force(at),
        )
    )
    return _winning(rows)


def list_prices(uow: UnitOfWork, tenant_id: str, at: datetime, *, category: str | None = None,
                provider: str | None = None, model: str | None = None, unit: str | None = None) -> list[Price]:
    """The tenant's effective catalog at `at`, optionally filtered; overrides replace global rows."""
    query = select(prices).where(_visible_to(tenant_id), _in_force(at))
    for column, value in (("category", category), ("provider", provider), ("model", model), ("unit", unit)):
        if value is not None:
            query = query.where(prices.c[column] == value)
    found = _winning(uow.connection.execute(query))
    return [found[key] for key in sorted(found)]


def find_price(uow: UnitOfWork, tenant_id: str, key: CatalogKey, at: datetime) -> Price:
    price = prices_in_force(uow, tenant_id, [key], at).get(key)
    if price is None:
        category, provider, model, unit = key
        raise PriceNotFound(
            f"no price for {category}/{provider}/{model}/{unit}",
            {"category": category, "provider": provider, "model": model, "unit": unit},
        )
    return price


def price_items(uow: UnitOfWork, tenant_id: str, items: Sequence[UsageItem], at: datetime) -> list[PricedItem]:
    """Price every item at `at`; the first item without a price raises PriceNotFound naming its index."""
    keys = [(i.category, i.provider, i.model, i.unit) for i in items]
    found = prices_in_force(uow, tenant_id, keys, at)
    priced = []
    for index, (item, key) in enumerate(zip(items, keys, strict=True)):
        price = found.get(key)
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
