"""The agency's resale price book: multipliers over its own prices, per catalog scope, for every
sub-account or one. A change moves the catalog revision (a trigger), so the next charge sees it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.agencies.commands import ResaleMultiplierRequest
from billing_core.agencies.resale import ResaleMultiplier, ResalePrices, every_sub_account, load_rows
from billing_core.agencies.tables import agency_charges, resale_multipliers
from billing_core.agencies.tree import list_sub_accounts, sub_account_of
from billing_core.catalog.items import price_items
from billing_core.catalog.models import Terms
from billing_core.catalog.positions import ReplayedPositions, UsageItem, month_of
from billing_core.catalog.prices import CATALOG, CURRENCY, CatalogKey, Price
from billing_core.catalog.revision import bump_catalog_revision
from billing_core.corrections.history import event_corrections
from billing_core.db import UnitOfWork
from billing_core.usage.tables import usage_event_items, usage_events


def put_multiplier(uow: UnitOfWork, agency_id: str, command: ResaleMultiplierRequest) -> ResaleMultiplier:
    """Set the multiplier of one scope (replacing the one set before for the same scope) and commit.
    A sub-account that is not the agency's own is not found."""
    if command.subAccountId is not None:
        sub_account_of(uow, agency_id, command.subAccountId)
    c = resale_multipliers.c
    now = uow.now()  # the transaction's time as a parameter: no now() in DO UPDATE SET (Citus)
    uow.connection.execute(
        insert(resale_multipliers).values(
            tenant_id=agency_id, id=uuid.uuid4(), sub_account_id=command.subAccountId, category=command.category,
            provider=command.provider, model=command.model, unit=command.unit, multiplier=command.multiplier,
            created_at=now)
        .on_conflict_do_update(
            index_elements=[c.tenant_id, func.coalesce(c.sub_account_id, ""), func.coalesce(c.category, ""),
                            func.coalesce(c.provider, ""), func.coalesce(c.model, ""), func.coalesce(c.unit, "")],
            set_={"multiplier": command.multiplier, "created_at": now}))
    bump_catalog_revision(uow)  # a sub-account's prices are its agency's, scaled by the book
    uow.commit()
    return ResaleMultiplier(command.subAccountId, (command.category, command.provider, command.model, command.unit),
                            command.multiplier)


def list_multipliers(uow: UnitOfWork, agency_id: str) -> list[ResaleMultiplier]:
    c = resale_multipliers.c
    return [ResaleMultiplier(r.sub_account_id, (r.category, r.provider, r.model, r.unit), r.multiplier)
            for r in uow.connection.execute(
                select(resale_multipliers).where(c.tenant_id == agency_id)
                .order_by(c.sub_account_id.nulls_first(), c.category.nulls_first(), c.provider.nulls_first(),
                          c.model.nulls_first(), c.unit.nulls_first()))]


@dataclass(frozen=True)
class BookPreview:
    start: datetime
    end: datetime
    current: Decimal  # what the sub-accounts were charged (resale)
    proposed: Decimal  # what the same items would have cost at the book with the proposed row
    agency_cost: Decimal  # what LAD charged the agency for them
    items: int


@dataclass(frozen=True)
class ProposedRow:
    """An explicit resale row as the preview takes it: in force over the whole window, replacing the
    rows of the same item and owner (one sub-account, or every one when `sub_account_id` is None)."""
    sub_account_id: str | None
    key: CatalogKey
    terms: Terms


def preview(uow: UnitOfWork, agency_id: str, proposal: ResaleMultiplierRequest | ProposedRow,
            days: int = 30) -> BookPreview:
    """What the sub-accounts' charged events of the last `days` would have cost had the book had the
    proposed row all along (a multiplier, or an explicit row, replacing the one of the same scope):
    each event repriced exactly as charging prices a sub-account's event — its explicit resale rows
    first (its own, then every sub-account's), else the agency's own price (catalog, overrides,
    multipliers) times the book's most specific multiplier, graduated tiers from the sub-account's
    own month position (replayed from the start of the window's first month), a burst call's
    multiplier kept; a voided event left out, an amended one priced as its last amend left it.
    Nothing is written."""
    end = uow.now()
    start = end - timedelta(days=days)
    book = list_multipliers(uow, agency_id)
    if isinstance(proposal, ResaleMultiplierRequest):
        proposed_row = ResaleMultiplier(proposal.subAccountId, (proposal.category, proposal.provider,
                                                                proposal.model, proposal.unit), proposal.multiplier)
        book = [m for m in book if (m.sub_account_id, m.scope) != (proposed_row.sub_account_id, proposed_row.scope)]
        book.append(proposed_row)
    agency_prices = CATALOG.for_tenant(uow, agency_id)
    current = proposed = cost = Decimal(0)
    count = 0
    for sub in list_sub_accounts(uow, agency_id):
        rows = load_rows(uow.connection, agency_id, sub.tenant_id)
        if isinstance(proposal, ProposedRow) and proposal.sub_account_id in (None, sub.tenant_id):
            owner = proposal.sub_account_id or every_sub_account(agency_id)
            rows = [r for r in rows if not (r.tenant_id == owner and r.key == proposal.key)]
            category, provider, model, unit = proposal.key
            rows.append(Price(id=uuid.uuid4(), tenant_id=owner, category=category, provider=provider, model=model,
                              unit=unit, unit_price=proposal.terms.unit_price, currency=CURRENCY, description=None,
                              effective_from=month_of(start), effective_to=None, created_at=end,
                              terms=proposal.terms))
        prices = ResalePrices(agency_prices, [m for m in book if m.sub_account_id in (None, sub.tenant_id)], rows,
                              sub.tenant_id)
        walk = ReplayedPositions(uow, sub.tenant_id)
        events = _charged_events(uow, sub.tenant_id, month_of(start), end)
        corrections = event_corrections(uow.connection, sub.tenant_id, [event.id for event, _ in events])
        amended = _net_of_corrections(uow, agency_id, sub.tenant_id, list(corrections.amended))
        for event, items in events:
            if event.id in corrections.voided:  # costs nothing at any book, moves no position
                continue
            if event.id in corrections.amended:  # priced as its last amend left it
                items = [UsageItem(i["category"], i["provider"], i["model"], i["unit"], Decimal(i["quantity"]))
                         for i in corrections.amended[event.id]]
                event.total_cost, event.agency_cost = amended.get(event.id, (event.total_cost, event.agency_cost))
            priced = price_items(uow, sub.tenant_id, items, event.occurred_at, prices, walk, prices)
            walk.moved([p.advance for p in priced if p.advance is not None])
            if event.occurred_at < start:  # only moves the month's positions
                continue
            repriced = money.total(p.cost for p in priced)
            if event.burst is not None:
                repriced = money.multiply(repriced, event.burst)
            current = money.add(current, event.total_cost)
            proposed = money.add(proposed, repriced)
            cost = money.add(cost, event.agency_cost)
            count += len(items)
    return BookPreview(start, end, current, proposed, cost, count)


def _net_of_corrections(uow: UnitOfWork, agency_id: str, sub_account_id: str,
                        ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Decimal, Decimal]]:
    """The amended events' resale amount and agency price net of their corrections, from the agency's
    records of them (the agency's rows, read on their own)."""
    if not ids:
        return {}
    c = agency_charges.c
    return {r.usage_event_id: (money.subtract(r.resale_amount, r.resale_corrected),
                               money.subtract(r.agency_amount, r.agency_corrected))
            for r in uow.connection.execute(select(agency_charges).where(
                c.tenant_id == agency_id, c.sub_account_id == sub_account_id, c.usage_event_id.in_(ids)))}


@dataclass
class _Event:
    id: uuid.UUID
    occurred_at: datetime
    total_cost: Decimal
    agency_cost: Decimal
    burst: Decimal | None


def _charged_events(uow: UnitOfWork, tenant_id: str, start: datetime,
                    end: datetime) -> list[tuple[_Event, list[UsageItem]]]:
    """A sub-account's charged events that happened in [start, end), in the order they happened,
    with their items (one tenant's rows only)."""
    e, i = usage_events.c, usage_event_items.c
    found: dict[uuid.UUID, tuple[_Event, list[UsageItem]]] = {}
    for r in uow.connection.execute(
            select(e.id, e.occurred_at, e.total_cost, i.category, i.provider, i.model, i.unit, i.quantity, i.cost,
                   i.agency_cost, i.pricing)
            .select_from(usage_events.join(usage_event_items, (i.tenant_id == e.tenant_id)
                                           & (i.usage_event_id == e.id)))
            .where(e.tenant_id == tenant_id, e.status == "charged", e.occurred_at >= start, e.occurred_at < end)
            .order_by(e.occurred_at, e.seq, i.position)):
        if r.id not in found:
            found[r.id] = (_Event(r.id, r.occurred_at, r.total_cost or Decimal(0), Decimal(0), None), [])
        event, items = found[r.id]
        burst = (r.pricing or {}).get("burstMultiplier")
        if burst is not None:  # a burst call's items are priced at its multiplier
            event.burst = Decimal(burst)
        event.agency_cost = money.add(event.agency_cost, r.agency_cost if r.agency_cost is not None else r.cost or Decimal(0))
        items.append(UsageItem(r.category, r.provider, r.model, r.unit, r.quantity))
    return list(found.values())


def list_rows(uow: UnitOfWork, agency_id: str) -> list[tuple[str | None, Price]]:
    """The explicit resale rows in force now or later: (None, row) for every sub-account's, then
    (sub-account id, row) for each sub-account's own; one owner's rows per statement."""
    from billing_core.catalog.tables import prices

    now = uow.now()
    owners: list[tuple[str | None, str]] = [(None, every_sub_account(agency_id))]
    owners += [(s.tenant_id, s.tenant_id) for s in list_sub_accounts(uow, agency_id)]
    found: list[tuple[str | None, Price]] = []
    for shown, owner in owners:
        rows = uow.connection.execute(select(prices).where(
            prices.c.tenant_id == owner, (prices.c.effective_to.is_(None)) | (prices.c.effective_to > now))
            .order_by(prices.c.category, prices.c.provider, prices.c.model, prices.c.unit, prices.c.effective_from))
        found += [(shown, Price.from_row(r)) for r in rows]
    return found


def put_row(uow: UnitOfWork, agency_id: str, sub_account_id: str | None, key: CatalogKey, terms: Terms,
            effective_from: datetime | None, description: str | None) -> Price:
    """An explicit resale row for every sub-account of the agency, or for its own `sub_account_id`
    (another's is not found); the row in force until then is closed, never edited. Commits."""
    from billing_core import catalog

    if sub_account_id is not None:
        sub_account_of(uow, agency_id, sub_account_id)
    return catalog.put_price(uow, tenant_id=sub_account_id or every_sub_account(agency_id), key=key, terms=terms,
                             effective_from=effective_from, description=description)
