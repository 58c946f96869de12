"""Table definitions used by queries. The schema itself is created by the Alembic migrations."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# Numeric without precision: PostgreSQL NUMERIC stores every digit it is given, so nothing rounds.
Money = Numeric(asdecimal=True)

wallets = Table(
    "wallets", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("current_balance", Money, nullable=False),
    Column("reserved_balance", Money, nullable=False),
    Column("overdraft_limit", Money, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

prices = Table(
    "prices", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text),  # NULL: the global catalog; a tenant's row overrides it
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("unit_price", Money, nullable=False),
    Column("currency", Text, nullable=False),
    Column("description", Text),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("effective_to", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

usage_events = Table(
    "usage_events", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("task_id", Uuid, nullable=False),
    Column("feature_key", Text, nullable=False),
    Column("external_reference_id", Text),
    Column("idempotency_key", Text, nullable=False),
    Column("user_id", Text),
    Column("status", Text, nullable=False),
    Column("total_cost", Money),
    Column("currency", Text, nullable=False),
    Column("rejection_code", Text),
    Column("rejection_reason", Text),
    Column("rejection_details", JSONB),
    Column("metadata", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("charged_at", DateTime(timezone=True)),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("enqueue_count", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),  # identity: arrival order
)

usage_event_items = Table(
    "usage_event_items", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("usage_event_id", Uuid, ForeignKey("usage_events.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("quantity", Money, nullable=False),
    Column("unit_price", Money),
    Column("cost", Money),
    Column("price_id", Uuid, ForeignKey("prices.id")),
)

ledger_entries = Table(
    "ledger_entries", metadata,
    Column("id", Uuid, primary_key=True),
    Column("seq", BigInteger, nullable=False),  # identity: order of entries within a wallet
    Column("tenant_id", Text, nullable=False),
    Column("wallet_id", Uuid, ForeignKey("wallets.id"), nullable=False),
    Column("entry_type", Text, nullable=False),
    Column("amount", Money, nullable=False),
    Column("balance_before", Money, nullable=False),
    Column("balance_after", Money, nullable=False),
    Column("usage_event_id", Uuid, ForeignKey("usage_events.id")),
    Column("reference", Text),
    Column("description", Text),
    Column("idempotency_key", Text),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

idempotency_records = Table(
    "idempotency_records", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("operation", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("usage_event_id", Uuid),
    Column("ledger_entry_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

catalog_revision = Table(
    "catalog_revision", metadata,
    Column("singleton", Boolean, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)
