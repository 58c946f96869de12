"""Receipts for credit purchases: a paid grant (a Stripe payment, an auto top-up, an operator top-up
of kind `paid`) issues one receipt, numbered in its issuer's series, in the transaction that creates
the grant. The grant keys the receipt (unique per tenant), and a replayed webhook or top-up creates no
second grant, so a purchase has one receipt. Promotional grants, refunds and adjustments issue none.

The receipt is the tax document for prepaid credits (see the README, "Documents"): credits are bought
like a voucher whose price includes tax, so the amount paid (the grant's amount) is the gross and the
tax is due when the money is received. With a rate r, net = gross / (1 + r) rounded half to even to
the minor unit and tax = gross - net, so net + tax = gross exactly; the rounding difference stated is
tax - net x r (exact: no division). Reverse charge and exempt: no tax, net = gross, and the wording.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from billing_core import money
from billing_core.cursors import newest_first, next_cursor
from billing_core.db import UnitOfWork, insert_rows
from billing_core.documents import numbering, parties
from billing_core.documents.tables import receipts
from billing_core.errors import NotFound
from billing_core.invoicing.invoices import minor_unit
from billing_core.ledger.model import Grant

PAID = "paid"


@dataclass(frozen=True)
class Receipt:
    id: uuid.UUID
    tenant_id: str
    grant_id: uuid.UUID
    issuer_id: str
    number: str
    currency: str
    minor_unit: int
    gross: Decimal
    net: Decimal
    tax: Decimal
    tax_mode: str
    tax_rate: Decimal | None
    tax_label: str | None
    tax_wording: str | None
    rounding_difference: Decimal
    source: str
    description: str | None
    issuer: dict[str, Any]
    customer: dict[str, Any] | None
    issued_at: datetime


def tax_split(gross: Decimal, treatment: parties.TaxTreatment, places: int) -> tuple[Decimal, Decimal, Decimal]:
    """(net, tax, rounding difference) of an amount paid under a tax treatment: net + tax = gross."""
    if treatment.mode != "rate" or treatment.rate is None:
        return gross, Decimal(0), Decimal(0)
    net, tax = money.split_gross(gross, treatment.rate, places)
    return net, tax, money.subtract(tax, money.multiply(net, treatment.rate))


def issue_for_grant(uow: UnitOfWork, grant: Grant, *, description: str | None = None) -> Receipt | None:
    """The receipt of a paid grant, numbered and written in the caller's transaction (no commit), or
    None for a grant that is not a purchase. Call it once, when the grant is created."""
    if grant.kind != PAID:
        return None
    tenant_id = grant.tenant_id
    currency = uow.connection.execute(text("SELECT currency FROM wallets WHERE tenant_id = :t AND id = :w"),
                                      {"t": tenant_id, "w": grant.wallet_id}).scalar_one()
    places = minor_unit(currency)
    treatment = parties.tax_treatment(uow, tenant_id)
    net, tax, difference = tax_split(grant.amount, treatment, places)
    issuer = parties.issuer_for(uow, tenant_id)
    customer = parties.customer_block(uow, tenant_id)
    series = numbering.take(uow, issuer.id, 1)
    issued_at = uow.now()
    receipt = Receipt(
        id=uuid.uuid4(), tenant_id=tenant_id, grant_id=grant.id, issuer_id=issuer.id,
        number=series.format(series.first), currency=currency, minor_unit=places, gross=grant.amount, net=net,
        tax=tax, tax_mode=treatment.mode, tax_rate=treatment.rate, tax_label=treatment.tax_label,
        tax_wording=treatment.wording, rounding_difference=difference, source=grant.source,
        description=description, issuer=issuer.block(), customer=customer, issued_at=issued_at)
    insert_rows(uow, receipts, [dict(receipt.__dict__)])
    numbering.record(uow, series, [(series.first, tenant_id, "receipt", receipt.id)], issued_at)
    return receipt


def get_receipt(uow: UnitOfWork, tenant_id: str, receipt_id: uuid.UUID) -> Receipt:
    row = uow.connection.execute(select(receipts).where(receipts.c.tenant_id == tenant_id,
                                                        receipts.c.id == receipt_id)).one_or_none()
    if row is None:
        raise NotFound(f"invoice {receipt_id} not found")
    return Receipt(**row._mapping)


def receipt_for_grant(uow: UnitOfWork, tenant_id: str, grant_id: uuid.UUID) -> Receipt | None:
    row = uow.connection.execute(select(receipts).where(receipts.c.tenant_id == tenant_id,
                                                        receipts.c.grant_id == grant_id)).one_or_none()
    return None if row is None else Receipt(**row._mapping)


def list_receipts(uow: UnitOfWork, tenant_id: str, *, limit: int, cursor: str | None = None
                  ) -> tuple[list[Receipt], str | None]:
    """A page of the tenant's receipts, newest first."""
    query = select(receipts).where(receipts.c.tenant_id == tenant_id)
    rows = uow.connection.execute(newest_first(query, receipts, cursor, limit, at="issued_at")).all()
    return [Receipt(**r._mapping) for r in rows[:limit]], next_cursor(rows, limit, at="issued_at")
