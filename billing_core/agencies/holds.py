"""Holds of an agency-funded sub-account: it has no balance of its own, so its hold (at the resale
price; `agency_id` names its agency, and it sets nothing aside on the sub-account's own wallet) is
backed by a hold on its agency's wallet at the agency's price, with the same id and `sub_account_id`
naming the sub-account. The agency's hold is not one of the agency's own calls
(calls/admission.count_active leaves it out; the sub-account's hold is counted in the tree by
agencies/slots.py). Both are opened, extended, released and settled in one transaction, the
sub-account's wallet locked first, then the agency's; each expires at the same moment on its own
wallet's next lock (a late charge made in time still settles both: see WalletBook.settle_hold).

Checks at opening: the agency's wallet must cover the agency's price (`insufficient_balance`,
`details.wallet: "agency"`), and the sub-account's monthly `spendCap` must cover the month's resale
charges plus its active holds (`budget_exceeded`, `details.spendCap`). A hold given as an amount has
no items to price at the agency's level: the agency sets aside the same amount.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from billing_core import money
from billing_core.agencies.tables import agency_charges
from billing_core.agencies.tree import AGENCY, SubAccount, find_sub_account
from billing_core.catalog import CATALOG, price_items
from billing_core.catalog.positions import month_of
from billing_core.db import UnitOfWork
from billing_core.errors import BudgetExceeded, InsufficientBalance, WalletBlocked
from billing_core.ledger import expiry
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import Hold, HoldStatus
from billing_core.lifecycle.tables import reservations


def funded_by_agency(uow: UnitOfWork, tenant_id: str) -> SubAccount | None:
    """The tenant as an agency-funded sub-account, or None."""
    sub = find_sub_account(uow, tenant_id)
    return sub if sub is not None and sub.funding == AGENCY else None


def month_spent(uow: UnitOfWork, sub: SubAccount, at: datetime) -> Decimal:
    """The sub-account's charges at resale prices in the month (UTC) of `at`, net of refunds and
    corrections."""
    c = agency_charges.c
    return uow.connection.execute(
        select(func.coalesce(func.sum(c.resale_amount - c.resale_refunded - c.resale_corrected), 0)).where(
            c.tenant_id == sub.agency_id, c.sub_account_id == sub.tenant_id,
            c.created_at >= month_of(at))).scalar_one()


def check_cap(uow: UnitOfWork, sub: SubAccount, at: datetime, held: Decimal) -> None:
    """Refuse a hold that takes the month's resale charges plus the sub-account's active holds
    (`held`, this one included) past its spend cap."""
    if sub.spend_cap is None:
        return
    spent = month_spent(uow, sub, at)
    if money.add(spent, held) > sub.spend_cap:
        raise BudgetExceeded("the hold passes the sub-account's monthly spend cap",
                             {"spendCap": money.format_decimal(sub.spend_cap), "spent": money.format_decimal(spent),
                              "held": money.format_decimal(held)})


def held(uow: UnitOfWork, tenant_id: str) -> Decimal:
    """What the sub-account's active holds backed by its agency hold, at resale prices."""
    r = reservations.c
    return uow.connection.execute(select(func.coalesce(func.sum(r.amount), 0)).where(
        r.tenant_id == tenant_id, r.status == HoldStatus.ACTIVE, r.agency_id.is_not(None))).scalar_one()


def back_hold(uow: UnitOfWork, sub: SubAccount, sub_book: WalletBook, hold: Hold, items: Any | None, *,
              created_by: str | None) -> Hold:
    """Under the sub-account's lock (its book holds `hold` already): lock the agency's wallet and
    set aside the agency's price of the hold there, or refuse; the agency's book is flushed."""
    check_cap(uow, sub, sub_book.now, money.add(held(uow, sub.tenant_id), hold.amount))
    agency = WalletBook.open(uow, sub.agency_id)  # the sub-account's wallet is locked first
    if expiry.end_due(agency):
        agency.flush()
    if agency.blocked:
        raise WalletBlocked("the agency's wallet is blocked; reservations are refused", {"wallet": "agency"})
    amount = hold.amount
    if items is not None:
        priced = price_items(uow, sub.agency_id, items, agency.now, CATALOG.for_tenant(uow, sub.agency_id))
        amount = money.total(p.cost for p in priced)
    if amount > agency.spendable:
        raise InsufficientBalance("insufficient balance in the agency's wallet for this reservation",
                                  {"wallet": "agency"})
    from billing_core.agencies.charging import check_agency_budget

    check_agency_budget(agency, hold.feature_key, agency.now, amount)  # the agency's budgets: at its price
    backing = replace(hold, tenant_id=sub.agency_id, wallet_id=agency.wallet.id, amount=amount,
                      burst_multiplier=None, quote_id=None, sub_account_id=sub.tenant_id, agency_id=None)
    agency.hold(backing, reference=hold.external_reference_id,
                description=f"hold for {hold.feature_key} of {sub.tenant_id}", created_by=created_by)
    agency.flush()
    return backing


def backing_hold(uow: UnitOfWork, tenant_id: str, hold_id: uuid.UUID) -> tuple[WalletBook, Hold] | None:
    """The agency's hold backing a sub-account's hold, its agency's wallet locked (the caller holds the
    sub-account's lock); None when the hold has none."""
    sub = find_sub_account(uow, tenant_id)
    if sub is None:
        return None
    book = WalletBook.open(uow, sub.agency_id)
    book.load_holds([hold_id])
    backing = book.holds.get(hold_id)
    if backing is None or backing.sub_account_id != tenant_id:
        return None
    return book, backing


def extend_backing(uow: UnitOfWork, tenant_id: str, hold: Hold, more: Decimal, *, created_by: str | None) -> None:
    """The sub-account's hold was extended: its backing follows (the same amount more, the same expiry)."""
    found = backing_hold(uow, tenant_id, hold.id)
    if found is None:
        return
    book, backing = found
    if backing.status != HoldStatus.ACTIVE:
        return
    if more and more > book.spendable:
        raise InsufficientBalance("insufficient balance in the agency's wallet for this reservation",
                                  {"wallet": "agency"})
    book.extend_hold(backing, more, hold.expires_at, description=f"hold for {hold.feature_key} of {tenant_id} "
                     "extended", created_by=created_by)
    book.flush()


def release_backing(uow: UnitOfWork, tenant_id: str, hold: Hold, *, created_by: str | None) -> None:
    """The sub-account's hold was released: so is its backing."""
    found = backing_hold(uow, tenant_id, hold.id)
    if found is None:
        return
    book, backing = found
    if backing.status == HoldStatus.ACTIVE:
        book.close_hold(backing, HoldStatus.RELEASED, created_by=created_by)
        book.flush()
