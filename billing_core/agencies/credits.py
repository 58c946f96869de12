"""A sub-account's event given back or corrected: the agency's debit for it follows, in the same
transaction, the sub-account's wallet locked first (the caller holds it), then the agency's.

A refund of part of a sub-account's debit gives the agency back the same share of its price for that
event (rounded half to even to 12 places); the refund that gives back the rest of the resale amount
gives back the rest of the agency's price, so full refunds are exact at both levels. What was given
back (or taken more by a correction) is kept on the event's `agency_charges` row (`*_refunded`,
`*_corrected`), so the agency's margins stay Σ resale − Σ agency price, net.

A correction (void, amend) of a sub-account's event corrects both levels: the sub-account at resale
(corrections/events.py, as for any tenant; an agency-funded sub-account's wallet paid nothing, so only
the record moves), the agency at its own price — a void gives back what is left of the agency's price,
an amend moves it to the agency's price of the amended items (at the event's time, the agency's
catalog, without moving the agency's graduated month). Re-rates do not reach the agency's level.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from sqlalchemy import select, update

from billing_core import money
from billing_core.agencies.tables import agency_charges
from billing_core.agencies.tree import find_sub_account
from billing_core.catalog import CATALOG, price_items
from billing_core.db import UnitOfWork
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import EntryType, LedgerEntry
from billing_core.ledger.tables import ledger_entries

_SHARE = Context(prec=80)  # a share is rounded once, to 12 places
PLACES = 12


def _charge_row(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> Any | None:
    sub = find_sub_account(uow, tenant_id)
    if sub is None:
        return None
    return uow.connection.execute(select(agency_charges).where(
        agency_charges.c.tenant_id == sub.agency_id, agency_charges.c.usage_event_id == usage_event_id)
    ).one_or_none()


def agency_share(row: Any, resale_back: Decimal) -> Decimal:
    """What the agency gets back when `resale_back` of the event's resale amount is given back."""
    resale_left = money.subtract(money.subtract(row.resale_amount, row.resale_refunded), row.resale_corrected)
    agency_left = agency_net(row)
    if resale_back >= resale_left or row.resale_amount == 0:
        return max(agency_left, Decimal(0))
    share = _SHARE.divide(_SHARE.multiply(row.agency_amount, resale_back), row.resale_amount)
    return max(Decimal(0), min(agency_left, money.round_half_even(share, PLACES)))


def agency_net(row: Any) -> Decimal:
    """What the agency still pays for the event: its price, less refunds and corrections."""
    return money.subtract(money.subtract(row.agency_amount, row.agency_refunded), row.agency_corrected)


def charge_row(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> Any | None:
    """The (resale, agency price) pair of a sub-account's charged event, or None for any other tenant."""
    return _charge_row(uow, tenant_id, usage_event_id)


def refund_agency(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID | None, resale_back: Decimal, *,
                  reason: str | None, created_by: str | None) -> Decimal | None:
    """The sub-account `tenant_id` was refunded `resale_back` of its event: refund the agency its
    share of its price for that event, into the grants its debit drew from, and return that share.
    Nothing (None) for any other tenant."""
    if usage_event_id is None:
        return None
    row = _charge_row(uow, tenant_id, usage_event_id)
    if row is None:
        return None
    back = agency_share(row, resale_back)
    _record(uow, row, "refunded", resale_back, back)
    if back <= 0:
        return back
    from billing_core.ledger.credits import _returnable  # the ledger's own rule for what is left of a debit

    book = WalletBook.open(uow, row.tenant_id)  # after the sub-account's: the one lock order
    original = _entry(uow, row.tenant_id, row.ledger_entry_id)
    book.restore(back, _returnable(uow, row.tenant_id, original), related_entry_id=original.id,
                 reference=str(original.id), description=reason or f"refund of {tenant_id}'s usage",
                 created_by=created_by)
    book.budgets.spend(row.feature_key, row.created_at, -back)  # its budgets count the event at its price
    book.flush()
    return back


def correct_agency(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, resale_change: Decimal,
                   agency_change: Decimal, *, reason: str | None, created_by: str | None) -> dict[str, Any] | None:
    """A correction of the sub-account's event moved its resale amount by `resale_change` (positive:
    given back) and the agency's price by `agency_change`: move the agency's wallet by it too. Returns
    the agency's correction entry (None when its price did not move)."""
    row = _charge_row(uow, tenant_id, usage_event_id)
    if row is None:
        return None
    _record(uow, row, "corrected", resale_change, agency_change)
    if agency_change == 0:
        return None
    book = WalletBook.open(uow, row.tenant_id)  # after the sub-account's: the one lock order
    entry = {"related_entry_id": row.ledger_entry_id, "reference": str(row.ledger_entry_id),
             "description": reason or f"correction of {tenant_id}'s usage", "created_by": created_by}
    if agency_change > 0:
        from billing_core.ledger.credits import _returnable

        original = _entry(uow, row.tenant_id, row.ledger_entry_id)
        record = book.restore(agency_change, _returnable(uow, row.tenant_id, original),
                              entry_type=EntryType.CORRECTION, **entry)
    else:
        record = book.debit(-agency_change, entry_type=EntryType.CORRECTION, **entry)
    book.budgets.spend(row.feature_key, row.created_at, -agency_change)
    book.flush()
    return record


def note_to_agency(uow: UnitOfWork, row: Any, entry: dict[str, Any], agency_change: Decimal,
                   correction_id: uuid.UUID, *, reason: str, action: str) -> Any | None:
    """When the agency's month of its debit for the event is already invoiced, LAD's credit note (the
    agency's price given back) or debit note (taken more) to the agency for the correction `correction_id`
    of its sub-account's event, naming the corrected line of its invoice (one event of the sub-account at
    the agency's price, before and after). None when that month is still open (the correction entry is
    then a line of its invoice)."""
    from billing_core.documents import credit_notes

    invoice = credit_notes.finalized_invoice(uow, row.tenant_id, row.created_at)
    if invoice is None:
        return None
    before = money.subtract(row.agency_amount, row.agency_corrected)  # the row as read before this correction
    after = money.subtract(before, agency_change)
    line = {"featureKey": row.feature_key, "category": "sub_account", "provider": row.sub_account_id,
            "model": "usage", "unit": "event", "quantityBefore": "1", "amountBefore": money.format_decimal(before),
            "quantityAfter": "0" if action == "void" else "1", "amountAfter": money.format_decimal(after)}
    return credit_notes.issue(uow, row.tenant_id, invoice, correction_id=correction_id,
                              usage_event_id=row.usage_event_id, ledger_entry_id=entry["id"], amount=agency_change,
                              reason=reason, lines=[line])


def agency_correction(uow: UnitOfWork, row: Any, action: str, items: Any, occurred: datetime,
                      old_items: list[Any]) -> Decimal:
    """What the agency's wallet gets back (positive) or pays more (negative) for a void or amend of
    its sub-account's event: a void gives back what it still pays; an amend moves its price (as
    corrected so far) to its price of the amended items, never giving back more than it still pays."""
    net = agency_net(row)
    if action == "void":
        return max(net, Decimal(0))
    priced = price_items(uow, row.tenant_id, items or [], occurred, CATALOG.for_tenant(uow, row.tenant_id))
    cost = money.total(p.cost for p in priced)
    burst = next((Decimal(i.pricing["burstMultiplier"]) for i in old_items
                  if i.pricing and i.pricing.get("burstMultiplier")), None)
    if burst is not None:
        cost = money.multiply(cost, burst)
    change = money.subtract(money.subtract(row.agency_amount, row.agency_corrected), cost)
    return min(change, max(net, Decimal(0))) if change > 0 else change


def _record(uow: UnitOfWork, row: Any, kind: str, resale: Decimal, agency: Decimal) -> None:
    c = agency_charges.c
    uow.connection.execute(update(agency_charges).where(
        c.tenant_id == row.tenant_id, c.usage_event_id == row.usage_event_id).values(
        {f"resale_{kind}": c[f"resale_{kind}"] + resale, f"agency_{kind}": c[f"agency_{kind}"] + agency}))


def _entry(uow: UnitOfWork, tenant_id: str, entry_id: uuid.UUID) -> LedgerEntry:
    return LedgerEntry(**uow.connection.execute(select(ledger_entries).where(
        ledger_entries.c.tenant_id == tenant_id, ledger_entries.c.id == entry_id)).one()._mapping)
