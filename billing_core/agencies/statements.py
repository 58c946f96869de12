"""What each level sees of a sub-account's usage: the agency its resale revenue, its cost (what LAD
charged it) and its margin per sub-account; the sub-account only its resale prices."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from billing_core import money
from billing_core.agencies.tables import agency_charges
from billing_core.db import UnitOfWork


@dataclass(frozen=True)
class SubAccountMargin:
    key: str  # the sub-account's tenant id
    revenue: Decimal  # resale
    cost: Decimal  # the agency's price
    events: int

    @property
    def margin(self) -> Decimal:
        return money.subtract(self.revenue, self.cost)


def margins_by_sub_account(uow: UnitOfWork, agency_id: str, start: datetime, end: datetime) -> list[SubAccountMargin]:
    """Per sub-account, over charges with event time in [start, end), net of what refunds and
    corrections of those events gave back or took more at each level: exact sums, so the agency's
    margin is Σ resale − Σ agency price to the last digit."""
    c = agency_charges.c
    return [SubAccountMargin(r.sub_account_id, r.revenue, r.cost, r.events) for r in uow.connection.execute(
        select(c.sub_account_id, func.sum(c.resale_amount - c.resale_refunded - c.resale_corrected).label("revenue"),
               func.sum(c.agency_amount - c.agency_refunded - c.agency_corrected).label("cost"), func.count().label("events"))
        .where(c.tenant_id == agency_id, c.created_at >= start, c.created_at < end)
        .group_by(c.sub_account_id).order_by(c.sub_account_id))]


def agency_cost(uow: UnitOfWork, agency_id: str, usage_event_id: uuid.UUID) -> Decimal | None:
    """What LAD charged the agency for one of its sub-accounts' events (None: not charged, or not a
    sub-account's event)."""
    c = agency_charges.c
    return uow.connection.execute(select(c.agency_amount).where(
        c.tenant_id == agency_id, c.usage_event_id == usage_event_id)).scalar_one_or_none()


@dataclass(frozen=True)
class SubAccountLine:
    """One row of the agency's portal: a sub-account with its balance and the month's figures."""
    tenant_id: str
    funding: str
    balance: Decimal | None  # None: billed by the agency (no wallet of its own)
    revenue: Decimal
    cost: Decimal
    events: int

    @property
    def margin(self) -> Decimal:
        return money.subtract(self.revenue, self.cost)


def sub_account_lines(uow: UnitOfWork, agency_id: str, start: datetime, end: datetime) -> list[SubAccountLine]:
    from billing_core.agencies.tree import PREPAID, list_sub_accounts
    from billing_core.ledger.tables import wallets

    found = list_sub_accounts(uow, agency_id)
    month = {m.key: m for m in margins_by_sub_account(uow, agency_id, start, end)}
    # one sub-account (one tenant, one shard under Citus) at a time, the prepaid ones only
    balances = {s.tenant_id: uow.connection.execute(select(wallets.c.current_balance).where(
        wallets.c.tenant_id == s.tenant_id)).scalar_one_or_none() or Decimal(0)
        for s in found if s.funding == PREPAID}
    zero = Decimal(0)
    return [SubAccountLine(s.tenant_id, s.funding,
                           balances.get(s.tenant_id, zero) if s.funding == PREPAID else None,
                           month[s.tenant_id].revenue if s.tenant_id in month else zero,
                           month[s.tenant_id].cost if s.tenant_id in month else zero,
                           month[s.tenant_id].events if s.tenant_id in month else 0) for s in found]
