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
    """Per sub-account, over charges with event time in [start, end): exact sums, so the agency's
    margin is Σ resale − Σ agency price to the last digit."""
    c = agency_charges.c
    return [SubAccountMargin(r.sub_account_id, r.revenue, r.cost, r.events) for r in uow.connection.execute(
        select(c.sub_account_id, func.sum(c.resale_amount).label("revenue"),
               func.sum(c.agency_amount).label("cost"), func.count().label("events"))
        .where(c.tenant_id == agency_id, c.created_at >= start, c.created_at < end)
        .group_by(c.sub_account_id).order_by(c.sub_account_id))]


def agency_cost(uow: UnitOfWork, agency_id: str, usage_event_id: uuid.UUID) -> Decimal | None:
    """What LAD charged the agency for one of its sub-accounts' events (None: not charged, or not a
    sub-account's event)."""
    c = agency_charges.c
    return uow.connection.execute(select(c.agency_amount).where(
        c.tenant_id == agency_id, c.usage_event_id == usage_event_id)).scalar_one_or_none()
