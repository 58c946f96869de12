"""Read-only views of an agency's tree for the pages: the agency's portal (each sub-account with its
status, balance and the month's resale revenue, cost and margin) and the operators' console (the
agencies and their trees). One tenant's rows per statement, except the operator's list of agencies."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from billing_core import money
from billing_core.agencies.statements import margins_by_sub_account
from billing_core.agencies.tables import agencies
from billing_core.agencies.tree import PREPAID, list_sub_accounts
from billing_core.db import UnitOfWork
from billing_core.ledger.tables import wallets

ZERO = Decimal(0)


@dataclass(frozen=True)
class TreeLine:
    """One sub-account as its agency (and the operator) sees it for a period."""
    tenant_id: str
    funding: str
    spend_cap: Decimal | None
    status: str  # its wallet's: active | blocked
    balance: Decimal | None  # None: agency-funded (no balance of its own)
    revenue: Decimal  # resale: what it was charged
    cost: Decimal  # the agency price: what LAD charged the agency for it
    events: int

    @property
    def margin(self) -> Decimal:
        return money.subtract(self.revenue, self.cost)


def tree_lines(uow: UnitOfWork, agency_id: str, start: datetime, end: datetime) -> list[TreeLine]:
    """The agency's sub-accounts with the period's figures (charges made in [start, end))."""
    period = {m.key: m for m in margins_by_sub_account(uow, agency_id, start, end)}
    lines = []
    for sub in list_sub_accounts(uow, agency_id):
        wallet = uow.connection.execute(select(wallets.c.current_balance, wallets.c.status).where(
            wallets.c.tenant_id == sub.tenant_id)).one_or_none()
        figures = period.get(sub.tenant_id)
        lines.append(TreeLine(
            sub.tenant_id, sub.funding, sub.spend_cap, wallet.status if wallet else "active",
            (wallet.current_balance if wallet else ZERO) if sub.funding == PREPAID else None,
            figures.revenue if figures else ZERO, figures.cost if figures else ZERO, figures.events if figures else 0))
    return lines


def list_agencies(uow: UnitOfWork) -> list[tuple[str, datetime]]:
    """Every agency (the operator's view: across tenants), by tenant id."""
    return [(r.tenant_id, r.created_at) for r in uow.connection.execute(
        select(agencies.c.tenant_id, agencies.c.created_at).prefix_with("/* citus:operator-scan operator-reports */")
        .order_by(agencies.c.tenant_id))]
