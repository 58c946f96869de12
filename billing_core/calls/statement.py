"""A statement per call: everything the ledger holds about one call (its `externalReferenceId`) in one
place — its holds with their extensions, the charges that settled them or were made for it, their
items grouped by component (category), and the ledger entries those made. A read only.

Invariant: `ledger_total` is the sum of the call's ledger entries (holds move no money; a debit is
negative, a refund positive), so `total_cost == -ledger_total` when nothing was refunded.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.corrections.events import standing_on
from billing_core.errors import NotFound
from billing_core.ledger.model import EntryType, Hold, LedgerEntry, UsageEventStatus
from billing_core.ledger.tables import ledger_entries
from billing_core.lifecycle.tables import reservations
from billing_core.usage.tables import usage_event_items, usage_events


@dataclass(frozen=True)
class CallEvent:
    id: uuid.UUID
    feature_key: str
    status: str
    total_cost: Decimal | None
    reservation_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True)
class CallItem:
    usage_event_id: uuid.UUID
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    billed_quantity: Decimal
    unit_price: Decimal | None
    cost: Decimal
    burst_multiplier: Decimal | None
    provider_cost: Decimal | None


@dataclass(frozen=True)
class Component:
    """One category's items of the call's charged events, added up."""
    category: str
    quantity: Decimal
    billed_quantity: Decimal
    cost: Decimal
    burst: bool
    provider_cost: Decimal | None  # None when an item has no provider cost on record


@dataclass(frozen=True)
class CallStatement:
    external_reference_id: str
    holds: list[Hold]
    events: list[CallEvent]
    items: list[CallItem]
    components: list[Component]
    entries: list[LedgerEntry]
    total_cost: Decimal  # what the call's charged events cost
    ledger_total: Decimal  # the sum of the call's ledger entries
    provider_cost: Decimal | None  # for the operator; None when an item is uncosted
    # what voids, amends and re-rates credited back (positive) or debited: the charges as corrected are
    # total_cost - corrections (a re-rate's share is posted in its tenant's one entry, not among these)
    corrections: Decimal = Decimal(0)

    @property
    def net_cost(self) -> Decimal:
        return money.subtract(self.total_cost, self.corrections)

    @property
    def margin(self) -> Decimal | None:
        return None if self.provider_cost is None else money.subtract(self.total_cost, self.provider_cost)


def call_statement(connection: Connection, tenant_id: str, external_reference_id: str) -> CallStatement:
    """The statement of the tenant's call `external_reference_id`: its holds (by reference), the
    charges naming the reference or settling one of those holds, and every ledger entry of those
    holds and charges (holds and extensions, settlements and debits, refunds). Another tenant's
    reference, or one with neither holds nor charges, is NotFound."""
    holds = [Hold(**r._mapping) for r in connection.execute(
        select(reservations).where(reservations.c.tenant_id == tenant_id,
                                   reservations.c.external_reference_id == external_reference_id)
        .order_by(reservations.c.created_at, reservations.c.id))]
    hold_ids = [h.id for h in holds]
    e = usage_events.c
    conditions = [e.external_reference_id == external_reference_id]
    if hold_ids:
        conditions.append(e.reservation_id.in_(hold_ids))
    events = [CallEvent(r.id, r.feature_key, r.status, r.total_cost, r.reservation_id, r.created_at)
              for r in connection.execute(
                  select(e.id, e.feature_key, e.status, e.total_cost, e.reservation_id, e.created_at)
                  .where(e.tenant_id == tenant_id, or_(*conditions)).order_by(e.seq))]
    if not holds and not events:
        raise NotFound(f"call {external_reference_id} not found")
    charged = [ev.id for ev in events if ev.status == UsageEventStatus.CHARGED]
    items = _items(connection, tenant_id, charged)
    entries = _entries(connection, tenant_id, hold_ids, [ev.id for ev in events])
    costed = [i.provider_cost for i in items]
    corrected = money.total(money.subtract(ev.total_cost or Decimal(0), standing_on(
        connection, tenant_id, ev.id, ev.total_cost or Decimal(0)).priced)
        for ev in events if ev.status == UsageEventStatus.CHARGED)
    return CallStatement(
        external_reference_id=external_reference_id, holds=holds, events=events, items=items,
        components=_components(items), entries=entries,
        total_cost=money.total(ev.total_cost or Decimal(0) for ev in events if ev.status == UsageEventStatus.CHARGED),
        ledger_total=money.total(en.amount for en in entries),
        provider_cost=None if any(c is None for c in costed) else money.total(c for c in costed if c is not None),
        corrections=corrected)


def _items(connection: Connection, tenant_id: str, event_ids: list[uuid.UUID]) -> list[CallItem]:
    if not event_ids:
        return []
    i = usage_event_items.c
    found = []
    for r in connection.execute(select(i.usage_event_id, i.category, i.provider, i.model, i.unit, i.quantity,
                                       i.unit_price, i.cost, i.pricing, i.provider_cost)
                                .where(i.tenant_id == tenant_id, i.usage_event_id.in_(event_ids))
                                .order_by(i.usage_event_id, i.position)):
        pricing: dict[str, Any] = r.pricing or {}
        billed = money.to_decimal(pricing["billedQuantity"]) if "billedQuantity" in pricing else r.quantity
        multiplier = money.to_decimal(pricing["burstMultiplier"]) if "burstMultiplier" in pricing else None
        found.append(CallItem(r.usage_event_id, r.category, r.provider, r.model, r.unit, r.quantity, billed,
                              r.unit_price, r.cost or Decimal(0), multiplier, r.provider_cost))
    return found


def _components(items: list[CallItem]) -> list[Component]:
    by_category: dict[str, list[CallItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    return [Component(category, money.total(i.quantity for i in group), money.total(i.billed_quantity for i in group),
                      money.total(i.cost for i in group), any(i.burst_multiplier is not None for i in group),
                      None if any(i.provider_cost is None for i in group)
                      else money.total(i.provider_cost for i in group if i.provider_cost is not None))
            for category, group in sorted(by_category.items())]


def _entries(connection: Connection, tenant_id: str, hold_ids: list[uuid.UUID],
             event_ids: list[uuid.UUID]) -> list[LedgerEntry]:
    """The holds' entries (hold, extensions, release or settlement), the events' debits, and what
    refunded those debits — each by its own index."""
    le = ledger_entries.c
    found: dict[uuid.UUID, LedgerEntry] = {}

    def add(condition: Any) -> None:
        for r in connection.execute(select(ledger_entries).where(le.tenant_id == tenant_id, condition)):
            found[r.id] = LedgerEntry(**r._mapping)

    if hold_ids:
        add(le.reservation_id.in_(hold_ids))
    if event_ids:
        add((le.usage_event_id.in_(event_ids)) & (le.entry_type == EntryType.DEBIT))
    debits = [en.id for en in found.values() if en.entry_type == EntryType.DEBIT]
    if debits:
        add(le.related_entry_id.in_(debits))
    return sorted(found.values(), key=lambda en: en.seq)
