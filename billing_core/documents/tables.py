from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, ForeignKey, Integer, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

# operator tables (Citus reference tables): the issuers and their number series
issuers = Table(
    "issuers", metadata,
    Column("id", Text, primary_key=True),
    Column("legal_name", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("tax_id", Text),
    Column("email", Text),
    Column("number_prefix", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

document_series = Table(
    "document_series", metadata,
    Column("issuer_id", Text, ForeignKey("issuers.id"), primary_key=True),
    Column("next_number", BigInteger, nullable=False),
)

document_numbers = Table(
    "document_numbers", metadata,
    Column("issuer_id", Text, ForeignKey("issuers.id"), primary_key=True),
    Column("number_value", BigInteger, primary_key=True),
    Column("number", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("document_type", Text, nullable=False),
    Column("document_id", Uuid, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

billing_details = Table(
    "billing_details", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("legal_name", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("tax_id", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tax_treatments = Table(
    "tax_treatments", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("mode", Text, nullable=False),
    Column("rate", Money),
    Column("label", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

receipts = Table(
    "receipts", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("grant_id", Uuid, nullable=False),
    Column("issuer_id", Text, ForeignKey("issuers.id"), nullable=False),
    Column("number", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("minor_unit", Integer, nullable=False),
    Column("gross", Money, nullable=False),
    Column("net", Money, nullable=False),
    Column("tax", Money, nullable=False),
    Column("tax_mode", Text, nullable=False),
    Column("tax_rate", Money),
    Column("tax_label", Text),
    Column("tax_wording", Text),
    Column("rounding_difference", Money, nullable=False),
    Column("source", Text, nullable=False),
    Column("description", Text),
    Column("issuer", JSONB, nullable=False),
    Column("customer", JSONB),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

# credit and debit notes: a correction of a finalized month (issue 20), numbered in the issuer's series
credit_notes = Table(
    "credit_notes", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("number", Text, nullable=False),
    Column("issuer_id", Text, ForeignKey("issuers.id"), nullable=False),
    Column("issuer", JSONB, nullable=False),
    Column("customer", JSONB),
    Column("corrects_invoice_id", Uuid, nullable=False),
    Column("corrects_invoice_number", Text),
    Column("corrects_period", Date, nullable=False),
    Column("usage_correction_id", Uuid, nullable=False),
    Column("usage_event_id", Uuid),
    Column("ledger_entry_id", Uuid, nullable=False),
    Column("currency", Text, nullable=False),
    Column("minor_unit", Integer, nullable=False),
    Column("amount", Money, nullable=False),
    Column("reason", Text, nullable=False),
    Column("lines", JSONB, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)
