"""Gapless document numbers: one series per issuer, across every document type and customer.

A number is taken in the transaction that issues its document: the series row is locked FOR UPDATE,
advanced, and the number recorded in document_numbers (unique per issuer) with the document. If the
transaction rolls back (a crash, a refused document), the series row's change rolls back with it, so
a number exists only if its document does: no gap, no duplicate. The price is that issuing documents
for one issuer is serialised on that row for the rest of the issuing transaction; issuing is rare
(a purchase, a month's rollup), so a sequence's gaps would be the worse trade.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from billing_core.db import UnitOfWork, insert_rows
from billing_core.documents.tables import document_numbers

DIGITS = 6


@dataclass(frozen=True)
class Series:
    issuer_id: str
    prefix: str
    first: int  # the first number taken

    def format(self, value: int) -> str:
        return f"{self.prefix}{value:0{DIGITS}d}"


def take(uow: UnitOfWork, issuer_id: str, count: int) -> Series:
    """Take `count` consecutive numbers of the issuer's series (locked until this transaction ends).
    The caller records each one it uses with `record`; it must use them all."""
    row = uow.connection.execute(text("""
        SELECT s.next_number, i.number_prefix FROM document_series s JOIN issuers i ON i.id = s.issuer_id
        WHERE s.issuer_id = :issuer FOR UPDATE OF s
    """), {"issuer": issuer_id}).one()
    if count:
        uow.connection.execute(text(
            "UPDATE document_series SET next_number = next_number + :count WHERE issuer_id = :issuer"),
            {"count": count, "issuer": issuer_id})
    return Series(issuer_id, row.number_prefix, int(row.next_number))


def record(uow: UnitOfWork, series: Series, documents: list[tuple[int, str, str, uuid.UUID]],
           issued_at: datetime) -> None:
    """Record the numbers used: (number value, tenant, document type, document id) each."""
    insert_rows(uow, document_numbers, [
        {"issuer_id": series.issuer_id, "number_value": value, "number": series.format(value), "tenant_id": tenant,
         "document_type": kind, "document_id": document_id, "issued_at": issued_at}
        for value, tenant, kind, document_id in documents])
