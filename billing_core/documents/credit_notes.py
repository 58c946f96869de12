"""Credit and debit notes (issue 20): a correction of usage whose month is already invoiced leaves the
invoice as it was and issues a note instead, in the same transaction as the correction's ledger entry.

The note is numbered in the issuer's series (numbering.take, like invoices and receipts: gapless), names
the invoice it corrects and each corrected line (before and after), and carries the amount the
correction moved: positive, credited back, is a credit note; negative, debited, a debit note. The
correction's ledger entry lands in the open month's chain, so it also appears on the next invoice as a
prior-period correction line; the note is the document for the closed month. One note per correction
(unique per tenant), so a replayed correction issues nothing more.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, text

from billing_core.cursors import newest_first, next_cursor
from billing_core.db import UnitOfWork
from billing_core.documents import numbering, parties
from billing_core.documents.tables import credit_notes
from billing_core.errors import NotFound
from billing_core.invoicing.invoices import Period, minor_unit

CREDIT_NOTE, DEBIT_NOTE = "credit_note", "debit_note"


@dataclass(frozen=True)
class CreditNote:
    tenant_id: str
    id: uuid.UUID
    kind: str
    number: str
    issuer_id: str
    issuer: dict[str, Any]
    customer: dict[str, Any] | None
    corrects_invoice_id: uuid.UUID
    corrects_invoice_number: str | None
    corrects_period: date
    usage_correction_id: uuid.UUID
    usage_event_id: uuid.UUID | None
    ledger_entry_id: uuid.UUID
    currency: str
    minor_unit: int
    amount: Decimal
    reason: str
    lines: list[dict[str, Any]]
    issued_at: datetime

    @property
    def period_label(self) -> str:
        return f"{self.corrects_period.year:04d}-{self.corrects_period.month:02d}"


def finalized_invoice(uow: UnitOfWork, tenant_id: str, at: datetime) -> Any:
    """The tenant's finalized invoice of the month containing `at`, or None (the month is open)."""
    return uow.connection.execute(text(
        "SELECT id, number, period FROM invoices WHERE tenant_id = :t AND period = :p AND status = 'finalized'"),
        {"t": tenant_id, "p": Period.containing(at).first_day}).first()


def issue(uow: UnitOfWork, tenant_id: str, invoice: Any, *, correction_id: uuid.UUID, usage_event_id: uuid.UUID | None,
          ledger_entry_id: uuid.UUID, amount: Decimal, reason: str, lines: list[dict[str, Any]]) -> CreditNote:
    """Number and write the note of one correction of `invoice`'s month, in the caller's transaction."""
    currency = uow.connection.execute(text("SELECT currency FROM wallets WHERE tenant_id = :t"),
                                      {"t": tenant_id}).scalar_one()
    issuer = parties.get_issuer(uow)
    series = numbering.take(uow, issuer.id, 1)
    issued_at = uow.now()
    note = CreditNote(
        tenant_id=tenant_id, id=uuid.uuid4(), kind=CREDIT_NOTE if amount > 0 else DEBIT_NOTE,
        number=series.format(series.first), issuer_id=issuer.id, issuer=issuer.block(),
        customer=parties.customer_block(uow, tenant_id), corrects_invoice_id=invoice.id,
        corrects_invoice_number=invoice.number, corrects_period=invoice.period, usage_correction_id=correction_id,
        usage_event_id=usage_event_id, ledger_entry_id=ledger_entry_id, currency=currency,
        minor_unit=minor_unit(currency), amount=amount, reason=reason, lines=lines, issued_at=issued_at)
    uow.connection.execute(insert(credit_notes).values(**note.__dict__))
    numbering.record(uow, series, [(series.first, tenant_id, note.kind, note.id)], issued_at)
    return note


def get_credit_note(uow: UnitOfWork, tenant_id: str, note_id: uuid.UUID) -> CreditNote:
    row = uow.connection.execute(select(credit_notes).where(credit_notes.c.tenant_id == tenant_id,
                                                            credit_notes.c.id == note_id)).one_or_none()
    if row is None:
        raise NotFound(f"invoice {note_id} not found")
    return CreditNote(**row._mapping)


def list_credit_notes(uow: UnitOfWork, tenant_id: str, *, limit: int, cursor: str | None = None
                      ) -> tuple[list[CreditNote], str | None]:
    """A page of the tenant's credit and debit notes, newest first."""
    query = select(credit_notes).where(credit_notes.c.tenant_id == tenant_id)
    rows = uow.connection.execute(newest_first(query, credit_notes, cursor, limit, at="issued_at")).all()
    return [CreditNote(**r._mapping) for r in rows[:limit]], next_cursor(rows, limit, at="issued_at")


def mismatches(uow: UnitOfWork, tenant_id: str | None) -> list[dict[str, Any]]:
    """Notes whose amount is not what their ledger entry moved (reconciliation checks notes too)."""
    # one tenant's notes, or every tenant's (an operator-wide scan, no locks; docs/scaling.md)
    scope = "n.tenant_id = :tenant_id" if tenant_id is not None else "true /* citus:operator-scan reconciliation */"
    rows = uow.connection.execute(text(f"""
        SELECT n.tenant_id, n.id, n.number, n.amount, l.amount AS entry_amount
        FROM credit_notes n
        LEFT JOIN ledger_entries l ON l.tenant_id = n.tenant_id AND l.id = n.ledger_entry_id
        WHERE {scope} AND (l.id IS NULL OR l.amount <> n.amount)
    """), {"tenant_id": tenant_id}).all()
    return [{"tenantId": r.tenant_id, "kind": "credit_note", "noteId": str(r.id), "number": r.number,
             "amount": str(r.amount), "entryAmount": None if r.entry_amount is None else str(r.entry_amount)}
            for r in rows]
