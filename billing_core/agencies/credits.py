"""A sub-account's event given back or corrected: the agency's debit for it follows, in the same
transaction, the sub-account's wallet locked first (the caller holds it), then the agency's.

A refund of part of a sub-account's debit gives the agency back the same share of its price for that
event (rounded half to even to 12 places); the refund that gives back the rest of the resale amount
gives back the rest of the agency's price, so full refunds are exact at both levels. What was given
back (or taken more by a correction) is kept on the event's `agency_charges` row (`resale_credited`,
`agency_credited`), so the agency's margins stay Σ resale − Σ agency price, net.
"""
from __future__ import annotations

import uuid
from decimal import Context, Decimal
from typing import Any

from sqlalchemy import select, update

from billing_core import money
from billing_core.agencies.tables import agency_charges
from billing_core.agencies.tree import find_sub_account
from billing_core.db import UnitOfWork
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import EntryType, LedgerEntry
from billing_core.ledger.tables import ledger_entries

_SHARE = Context(prec=80)  # a share is rounded once, to 12 places
PLACES = 12


def _charge_row(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> Any | None:
    sub = find_sub_account(uow, tenant_id) if ":" in tenant_id else None
    if sub is None:
        return None
    return uow.connection.execute(select(agency_charges).where(
        agency_charges.c.tenant_id == sub.agency_id, agency_charges.c.usage_event_id == usage_event_id)
    ).one_or_none()


def agency_share(row: Any, resale_back: Decimal) -> Decimal:
    """What the agency gets back when `resale_back` of the event's resale amount is given back."""
    resale_left = money.subtract(row.resale_amount, row.resale_credited)
    agency_left = money.subtract(row.agency_amount, row.agency_credited)
    if resale_back >= resale_left or row.resale_amount == 0:
        return agency_left
    share = _SHARE.divide(_SHARE.multiply(row.agency_amount, resale_back), row.resale_amount)
    return min(agency_left, money.round_half_even(share, PLACES))


def refund_agency(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID | None, resale_back: Decimal, *,
                  reason: str | None, created_by: str | None) -> None:
    """The sub-account `tenant_id` was refunded `resale_back` of its event: refund the agency its
    share of its price for that event, into the grants its debit drew from. Nothing for any other tenant."""
    if usage_event_id is None:
        return
    row = _charge_row(uow, tenant_id, usage_event_id)
    if row is None:
        return
    back = agency_share(row, resale_back)
    _record(uow, row, resale_back, back)
    if back <= 0:
        return
    from billing_core.ledger.credits import _returnable  # the ledger's own rule for what is left of a debit

    book = WalletBook.open(uow, row.tenant_id)  # after the sub-account's: the one lock order
    original = _entry(uow, row.tenant_id, row.ledger_entry_id)
    book.restore(back, _returnable(uow, row.tenant_id, original), related_entry_id=original.id,
                 reference=str(original.id), description=reason or f"refund of {tenant_id}'s usage",
                 created_by=created_by)
    book.flush()


def correct_agency(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, resale_change: Decimal,
                   agency_change: Decimal, *, reason: str | None, created_by: str | None) -> None:
    """A correction of the sub-account's event moved its resale amount by `resale_change` (positive:
    given back) and the agency's price by `agency_change`: move the agency's wallet by it too."""
    row = _charge_row(uow, tenant_id, usage_event_id)
    if row is None:
        return
    _record(uow, row, resale_change, agency_change)
    if agency_change == 0:
        return
    book = WalletBook.open(uow, row.tenant_id)  # after the sub-account's: the one lock order
    entry = {"related_entry_id": row.ledger_entry_id, "reference": str(row.ledger_entry_id),
             "description": reason or f"correction of {tenant_id}'s usage", "created_by": created_by}
    if agency_change > 0:
        from billing_core.ledger.credits import _returnable

        original = _entry(uow, row.tenant_id, row.ledger_entry_id)
        book.restore(agency_change, _returnable(uow, row.tenant_id, original), entry_type=EntryType.CORRECTION,
                     **entry)
    else:
        book.debit(-agency_change, entry_type=EntryType.CORRECTION, **entry)
    book.flush()


def _record(uow: UnitOfWork, row: Any, resale: Decimal, agency: Decimal) -> None:
    c = agency_charges.c
    uow.connection.execute(update(agency_charges).where(
        c.tenant_id == row.tenant_id, c.usage_event_id == row.usage_event_id).values(
        resale_credited=c.resale_credited + resale, agency_credited=c.agency_credited + agency))


def _entry(uow: UnitOfWork, tenant_id: str, entry_id: uuid.UUID) -> LedgerEntry:
    return LedgerEntry(**uow.connection.execute(select(ledger_entries).where(
        ledger_entries.c.tenant_id == tenant_id, ledger_entries.c.id == entry_id)).one()._mapping)
