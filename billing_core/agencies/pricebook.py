"""The agency's resale price book: multipliers over its own prices, per catalog scope, for every
sub-account or one. A change moves the catalog revision (a trigger), so the next charge sees it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, literal, select
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.agencies.commands import ResaleMultiplierRequest
from billing_core.agencies.resale import ResaleMultiplier, best_multiplier
from billing_core.agencies.tables import agency_charges, resale_multipliers
from billing_core.agencies.tree import sub_account_of
from billing_core.catalog.revision import bump_catalog_revision
from billing_core.db import UnitOfWork
from billing_core.usage.tables import usage_event_items


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


def preview(uow: UnitOfWork, agency_id: str, command: ResaleMultiplierRequest, days: int = 30) -> BookPreview:
    """What the sub-accounts' charged items of the last `days` would have cost had the book had the
    proposed row (replacing the row of the same scope): each item's agency price times the multiplier
    the new book gives it. Nothing is written. Explicit resale rows are left out: the preview is of
    the multipliers."""
    end = uow.now()
    start = end - timedelta(days=days)
    proposed_row = ResaleMultiplier(command.subAccountId, (command.category, command.provider, command.model,
                                                           command.unit), command.multiplier)
    book = [m for m in list_multipliers(uow, agency_id)
            if (m.sub_account_id, m.scope) != (proposed_row.sub_account_id, proposed_row.scope)] + [proposed_row]
    c, i = agency_charges.c, usage_event_items.c
    # the agency's charges, then each sub-account's items of them: a sub-account is another tenant (another
    # shard under Citus), so the two are read one tenant at a time and joined here
    charged: dict[str, list[uuid.UUID]] = {}
    for sub_account_id, event_id in uow.connection.execute(
            select(c.sub_account_id, c.usage_event_id)
            .where(c.tenant_id == agency_id, c.created_at >= start, c.created_at < end)):
        charged.setdefault(sub_account_id, []).append(event_id)
    rows = [row for sub_account_id, event_ids in sorted(charged.items()) for row in uow.connection.execute(
        select(literal(sub_account_id).label("sub_account_id"), i.category, i.provider, i.model, i.unit, i.cost,
               i.agency_cost)
        .where(i.tenant_id == sub_account_id, i.usage_event_id.in_(event_ids)))]
    current = proposed = cost = Decimal(0)
    for r in rows:
        agency_price = r.agency_cost if r.agency_cost is not None else r.cost
        applying = [m for m in book if m.sub_account_id in (None, r.sub_account_id)]
        multiplier = best_multiplier(applying, (r.category, r.provider, r.model, r.unit))
        current = money.add(current, r.cost)
        cost = money.add(cost, agency_price)
        proposed = money.add(proposed, agency_price if multiplier is None else money.multiply(agency_price, multiplier))
    return BookPreview(start, end, current, proposed, cost, len(rows))
